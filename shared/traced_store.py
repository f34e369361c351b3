"""The event store with a client span around each call, used in place of the store while tracing is on
(``runtime``), so the store itself carries no tracing code and costs nothing more when it is off. Each call is
one Redis round trip: the load and append scripts, an XRANGE, a WAIT. A request that is not sampled goes
straight to the store."""

from __future__ import annotations

from collections.abc import Sequence

from shared.account import Account
from shared.event_store import AppendOutcome, EventStore, IdempotencyWrite, Loaded, Position
from shared.events import NewEvent, RecordedEvent
from shared.otel_tracing import recording, store_span


class TracedEventStore:
    def __init__(self, store: EventStore) -> None:
        self._store = store

    def load(self, account_id: str, idempotency_key: str | None = None) -> Loaded:
        if not recording():
            return self._store.load(account_id, idempotency_key)
        with store_span("load", "EVALSHA"):
            return self._store.load(account_id, idempotency_key)

    def read(self, account_id: str, after_version: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        if not recording():
            return self._store.read(account_id, after_version, limit)
        with store_span("read", "XRANGE"):
            return self._store.read(account_id, after_version, limit)

    def append(self, account_id: str, expected_version: int, events: Sequence[NewEvent],
               idempotency: IdempotencyWrite | None = None, snapshot: Account | None = None) -> AppendOutcome:
        if not recording():
            return self._store.append(account_id, expected_version, events, idempotency, snapshot)
        with store_span("append", "EVALSHA") as span:
            outcome = self._store.append(account_id, expected_version, events, idempotency, snapshot)
            span.set_attribute("ledger.append.outcome", type(outcome).__name__)
            return outcome

    def log_tail(self, account_id: str) -> Position:
        if not recording():
            return self._store.log_tail(account_id)
        with store_span("log_tail", "XREVRANGE"):
            return self._store.log_tail(account_id)

    def confirm_durable(self, account_id: str) -> None:
        if not recording():
            return self._store.confirm_durable(account_id)
        with store_span("confirm_durable", "WAIT"):
            self._store.confirm_durable(account_id)
        return None
