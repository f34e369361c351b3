"""An in-memory event store implementing the same port as ``RedisEventStore`` (and passing the same
contract tests), for fast unit tests of the service."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence

import orjson

from shared.account import Account
from shared.event_store import Appended, AppendOutcome, Claim, Conflict, Duplicate, IdempotencyRecord, Loaded
from shared.events import Metadata, NewEvent, RecordedEvent


def new_event(account_id: str, event_type: str = "FundsDeposited", amount: int = 100) -> NewEvent:
    """A well-formed event for store-level tests."""
    return NewEvent(
        type=event_type, account_id=account_id,
        data={} if event_type == "AccountOpened" else {"amount_minor": amount},
        event_id=str(uuid.uuid4()), recorded_at="2026-11-28T12:00:00.000000Z",
        metadata=Metadata(correlation_id="corr-1", causation_id="req-1", idempotency_key=None),
    )


class InMemoryEventStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.streams: dict[str, list[RecordedEvent]] = {}
        self.idempotency: dict[tuple[str, str], IdempotencyRecord] = {}
        self.log: list[RecordedEvent] = []

    def load(self, account_id: str, idempotency_key: str | None = None) -> Loaded:
        with self._lock:
            events = list(self.streams.get(account_id, []))
            record = None if idempotency_key is None else self.idempotency.get((account_id, idempotency_key))
        return Loaded(events, record)

    def read(self, account_id: str, after_version: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        with self._lock:
            events = self.streams.get(account_id, [])[after_version:]
        return events if limit is None else events[:limit]

    def append(self, account_id: str, expected_version: int, events: Sequence[NewEvent],
               claim: Claim | None = None, snapshot: Account | None = None) -> AppendOutcome:
        if not events:
            raise ValueError("append needs at least one event")
        with self._lock:
            if claim is not None and (account_id, claim.key) in self.idempotency:
                return Duplicate(self.idempotency[account_id, claim.key])
            stream = self.streams.setdefault(account_id, [])
            if len(stream) != expected_version:
                return Conflict(len(stream))
            for offset, event in enumerate(events, start=1):
                recorded = RecordedEvent(
                    account_id=account_id, version=expected_version + offset, type=event.type,
                    data=orjson.loads(orjson.dumps(event.data)), event_id=event.event_id,
                    recorded_at=event.recorded_at, schema=event.schema,
                    metadata_json=event.metadata.to_json().decode(),
                )
                stream.append(recorded)
                self.log.append(recorded)
            if claim is not None:
                self.idempotency[account_id, claim.key] = claim.record
            return Appended(len(stream))
