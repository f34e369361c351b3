"""An in-memory event store implementing the same port as ``RedisEventStore``, and passing the same contract
tests (``tests/contract``): snapshots, idempotency records that expire after the TTL, the partition log."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import orjson

from shared.account import Account
from shared.event_store import (
    Appended,
    AppendOutcome,
    Conflict,
    Duplicate,
    IdempotencyRecord,
    IdempotencyWrite,
    Loaded,
    Position,
)
from shared.events import NewEvent, RecordedEvent
from shared.keys import KeySpace


class InMemoryEventStore:
    def __init__(self, idempotency_ttl_seconds: int = 86_400,
                 clock: Callable[[], float] = time.monotonic, partitions: int = 16) -> None:
        self._lock = threading.Lock()
        self._ttl = idempotency_ttl_seconds
        self._clock = clock
        self.streams: dict[str, list[RecordedEvent]] = {}
        self.snapshots: dict[str, Account] = {}
        self.idempotency: dict[tuple[str, str], tuple[IdempotencyRecord, float]] = {}
        self.log: list[RecordedEvent] = []
        self._keys = KeySpace("fake", partitions)
        #: Each partition's last log position: one counter for every log, so ids grow as Redis's do.
        self._tails: dict[int, str] = {}

    def load(self, account_id: str, idempotency_key: str | None = None) -> Loaded:
        with self._lock:
            snapshot = self.snapshots.get(account_id)
            after = snapshot.version if snapshot else 0
            events = list(self.streams.get(account_id, [])[after:])
            record = None if idempotency_key is None else self._record(account_id, idempotency_key)
        return Loaded(events, record, snapshot)

    def read(self, account_id: str, after_version: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        with self._lock:
            events = self.streams.get(account_id, [])[after_version:]
        return events if limit is None else events[:limit]

    def append(self, account_id: str, expected_version: int, events: Sequence[NewEvent],
               idempotency: IdempotencyWrite | None = None, snapshot: Account | None = None) -> AppendOutcome:
        if not events:
            raise ValueError("append needs at least one event")
        with self._lock:
            if idempotency is not None:
                prior = self._record(account_id, idempotency.key)
                if prior is not None:
                    return Duplicate(prior)
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
            partition = self._keys.partition_of(account_id)
            self._tails[partition] = f"{len(self.log)}-0"
            if snapshot is not None:
                self.snapshots[account_id] = snapshot
            if idempotency is not None:
                self.idempotency[account_id, idempotency.key] = (idempotency.record, self._clock() + self._ttl)
            return Appended(len(stream), Position(partition, self._tails[partition]))

    def log_tail(self, account_id: str) -> Position:
        partition = self._keys.partition_of(account_id)
        with self._lock:
            return Position(partition, self._tails.get(partition, "0-0"))

    def confirm_durable(self, account_id: str) -> None:
        """Nothing beyond memory to wait for."""

    def _record(self, account_id: str, key: str) -> IdempotencyRecord | None:
        found = self.idempotency.get((account_id, key))
        if found is None:
            return None
        record, expires = found
        if self._clock() >= expires:
            del self.idempotency[account_id, key]
            return None
        return record
