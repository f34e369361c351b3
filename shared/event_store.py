"""The event store port: what the service needs from persistence, and the outcomes an append can have.

``redis_store.RedisEventStore`` implements it on Redis Streams (a single node, Redis Cluster and fakeredis
alike); ``tests/fakes.py`` holds an in-memory implementation. ``tests/contract`` runs one contract test class
against every implementation, so the service can be tested on the fake and trusted on Redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from shared.account import Account
from shared.events import NewEvent, RecordedEvent


class IdempotencyRecord(NamedTuple):
    """What a first request with an idempotency key produced, as the service serialised it."""

    #: The request's SHA-256, in hex (a store may keep it as its 32 bytes).
    fingerprint: str
    result: str


class IdempotencyWrite(NamedTuple):
    """An idempotency key to record atomically with the events it produced."""

    key: str
    record: IdempotencyRecord


class Loaded(NamedTuple):
    """What a command needs: the latest snapshot (if any) and the events after it."""

    events: list[RecordedEvent]
    idempotency: IdempotencyRecord | None = None
    snapshot: Account | None = None

    @property
    def version(self) -> int:
        if self.events:
            return self.events[-1].version
        return self.snapshot.version if self.snapshot else 0


class Position(NamedTuple):
    """Where an event stands in its partition's log: what a read model's checkpoint is compared with."""

    partition: int
    entry_id: str


@dataclass(frozen=True, slots=True)
class Appended:
    version: int
    #: The partition-log position of the last event appended (not compared: an outcome is its version).
    position: Position | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Conflict:
    current_version: int


@dataclass(frozen=True, slots=True)
class Duplicate:
    record: IdempotencyRecord


AppendOutcome = Appended | Conflict | Duplicate


class AppendUnknown(Exception):
    """The append was sent, and no reply came (a timeout, a dropped connection): it may or may not have been
    applied, and a request still in flight may even apply later. Only a later read can tell."""


class NotDurable(Exception):
    """The write is on the primary, but fewer replicas than required confirmed it in time: a crash of the
    primary now could lose it. ``confirm_durable`` may be asked again."""

    def __init__(self, confirmed: int, required: int) -> None:
        super().__init__(f"{confirmed} of {required} replicas confirmed the write in time")
        self.confirmed = confirmed
        self.required = required


class EventStore(Protocol):
    """The write side's persistence port. Every implementation passes ``tests/contract``."""

    def load(self, account_id: str, idempotency_key: str | None = None) -> Loaded:
        """The account's latest snapshot and the events after it (all of them when there is no snapshot),
        and the idempotency record of ``idempotency_key``, if one is remembered."""
        ...

    def read(self, account_id: str, after_version: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        """Events with version > ``after_version``, oldest first, at most ``limit`` of them."""
        ...

    def append(self, account_id: str, expected_version: int, events: Sequence[NewEvent],
               idempotency: IdempotencyWrite | None = None, snapshot: Account | None = None) -> AppendOutcome:
        """Append ``events`` as versions ``expected_version + 1 ...`` if, and only if, the account is at
        ``expected_version`` and ``idempotency``'s key is unused. Nothing is written otherwise. ``snapshot``,
        the state the events lead to, is stored with them when given; the idempotency record is remembered
        for the store's TTL.

        Raises ``StoreUnavailable`` when the append was never sent, ``AppendUnknown`` when it was sent and no
        reply came, and ``NotDurable`` when it was applied but not confirmed by enough replicas."""
        ...

    def log_tail(self, account_id: str) -> Position:
        """The last position in the account's partition log: at or after every event of the account stored
        so far (a replayed answer's position, when the original append's is not at hand)."""
        ...

    def confirm_durable(self, account_id: str) -> None:
        """Return once everything this store wrote for the account's partition is as durable as the store
        promises (its replicas confirmed it); raise ``NotDurable`` if they do not in time. A no-op for a
        store that promises nothing beyond the primary."""
        ...
