"""The application service: load the account's events, rebuild, decide, append. Nothing is cached.

On a version conflict the command is re-decided against fresh state (so the business rule is checked
again), a bounded number of times with jittered back-off. An idempotency key is checked before deciding,
so a retried withdrawal of the whole balance replays its first answer instead of failing.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from shared import account
from shared.account import Account, Command, DomainEvent
from shared.errors import AccountNotFound, IdempotencyKeyReused, VersionConflict
from shared.event_store import (
    Appended,
    Conflict,
    Duplicate,
    EventStore,
    IdempotencyRecord,
    IdempotencyWrite,
    Loaded,
)
from shared.events import Metadata, NewEvent, RecordedEvent
from shared.preconditions import IfMatch


@dataclass(frozen=True, slots=True)
class CommandContext:
    """Where a command came from, and the client's conditions on it."""

    request_id: str
    correlation_id: str | None = None
    idempotency_key: str | None = None
    if_match: IfMatch | None = None


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The outcome of a command: the account after it, and the money it moved (None when it moved none)."""

    account_id: str
    balance: int
    version: int
    amount: int | None = None
    replayed: bool = False

    def to_json(self) -> str:
        return orjson.dumps({"account_id": self.account_id, "amount": self.amount,
                             "balance": self.balance, "version": self.version}).decode()

    @classmethod
    def from_json(cls, text: str) -> CommandResult:
        raw = orjson.loads(text)
        return cls(raw["account_id"], raw["balance"], raw["version"], raw["amount"] or None, replayed=True)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class AccountService:
    def __init__(self, store: EventStore, *, max_attempts: int = 10, snapshot_interval: int = 0,
                 clock: Callable[[], str] = utc_now,
                 sleep: Callable[[float], None] = time.sleep,
                 new_id: Callable[[], str] = lambda: str(uuid.uuid4())) -> None:
        self._store = store
        self._max_attempts = max_attempts
        self._snapshot_interval = snapshot_interval
        self._clock = clock
        self._sleep = sleep
        self._new_id = new_id

    def get(self, account_id: str) -> Account:
        loaded = self._store.load(account_id)
        state = account.rebuild(account_id, loaded.events, loaded.snapshot)
        if not state.exists:
            raise AccountNotFound(f"account {account_id} does not exist")
        return state

    def events(self, account_id: str, after_version: int, limit: int) -> list[RecordedEvent]:
        events = self._store.read(account_id, after_version, limit)
        if not events and not self._store.read(account_id, 0, 1):
            raise AccountNotFound(f"account {account_id} does not exist")
        return events

    def execute(self, account_id: str, command: Command, context: CommandContext) -> CommandResult:
        # Fingerprints exist only to compare a retry with its original, so only requests with a key pay.
        fingerprint = _fingerprint(account_id, command) if context.idempotency_key is not None else ""
        # One event id for every attempt: if an append's reply is lost and Redis did apply it, the next
        # load finds this id in the history and we answer with that outcome instead of appending again.
        event_id = self._new_id()
        expected: int | None = None
        for attempt in range(self._max_attempts):
            loaded = self._store.load(account_id, context.idempotency_key)
            if loaded.idempotency is not None:
                return _replay(loaded.idempotency, fingerprint, context)
            if expected is not None:
                landed = self._find_landed(account_id, loaded, expected, event_id)
                if landed is not None:
                    return landed
            state = account.rebuild(account_id, loaded.events, loaded.snapshot)
            if context.if_match is not None:
                context.if_match.check(state)
            decided: DomainEvent = command.decide(state)
            at = self._clock()
            after = account.apply(state, decided, state.version + 1, at)
            result = CommandResult(account_id, after.balance, after.version, account.amount_of(decided))
            event = NewEvent(
                type=decided.type, account_id=account_id, data=decided.data(), event_id=event_id, recorded_at=at,
                metadata=Metadata(correlation_id=context.correlation_id or context.request_id,
                                  causation_id=context.request_id, idempotency_key=context.idempotency_key),
            )
            idempotency = None
            if context.idempotency_key is not None:
                idempotency = IdempotencyWrite(context.idempotency_key,
                                               IdempotencyRecord(fingerprint, result.to_json()))
            expected = state.version
            outcome = self._store.append(account_id, state.version, [event], idempotency,
                                         self._snapshot(loaded, after))
            if isinstance(outcome, Appended):
                return result
            if isinstance(outcome, Duplicate):
                return _replay(outcome.record, fingerprint, context)
            assert isinstance(outcome, Conflict)
            self._backoff(attempt)
        raise VersionConflict(
            f"account {account_id} changed concurrently {self._max_attempts} times; retry the request"
        )

    def _find_landed(self, account_id: str, loaded: Loaded, expected: int, event_id: str) -> CommandResult | None:
        """Our own event, if an earlier attempt's append was applied although its reply never reached us."""
        candidates = loaded.events
        if loaded.snapshot is not None and loaded.snapshot.version > expected:
            # That append may have written the snapshot too, hiding our event behind it: look past it.
            candidates = self._store.read(account_id, expected)
        for event in candidates:
            if event.version > expected and event.event_id == event_id:
                state = account.rebuild(account_id, self._store.read(account_id, 0, event.version))
                moved = event.data.get("amount_minor")
                return CommandResult(account_id, state.balance, state.version, moved)
        return None

    def _snapshot(self, loaded: Loaded, after: Account) -> Account | None:
        """Keep a snapshot at every multiple of the interval, and whenever this load had to read more events
        than the interval (history from before snapshots, or a raised interval), so the next one will not."""
        interval = self._snapshot_interval
        if interval and (after.version % interval == 0 or len(loaded.events) >= interval):
            return after
        return None

    def _backoff(self, attempt: int) -> None:
        # Full jitter: spreads colliding writers apart instead of making them collide again in lockstep.
        self._sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))


def _fingerprint(account_id: str, command: Command) -> str:
    return hashlib.sha256(f"{account_id}\n{command.fingerprint()}".encode()).hexdigest()


def _replay(record: IdempotencyRecord, fingerprint: str, context: CommandContext) -> CommandResult:
    if record.fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {context.idempotency_key!r} was already used for a different request"
        )
    return CommandResult.from_json(record.result)
