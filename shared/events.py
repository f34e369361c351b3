"""Event envelopes: a decided event ready to store (``NewEvent``) and what the store gives back
(``RecordedEvent``). Pure data, no I/O; ``stream_codec.py`` maps them to stream entries and back.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

#: Bumped when the shape of an event's ``data`` changes, so readers can upcast old entries.
SCHEMA_VERSION = 1

EventData = dict[str, Any]


class Metadata(NamedTuple):
    correlation_id: str
    causation_id: str
    idempotency_key: str | None = None
    #: Who caused the event (the audit trail): issuer, subject, and the token's client_id and jti if any.
    actor: dict[str, str] | None = None
    #: The W3C trace context of the request that caused it, while tracing is on: the projector's span for
    #: applying the event joins that trace.
    traceparent: str | None = None

    def to_json(self) -> bytes:
        body: dict[str, object] = {"correlation_id": self.correlation_id, "causation_id": self.causation_id}
        if self.idempotency_key is not None:
            body["idempotency_key"] = self.idempotency_key
        if self.actor is not None:
            body["actor"] = self.actor
        if self.traceparent is not None:
            body["traceparent"] = self.traceparent
        return orjson.dumps(body)


class NewEvent(NamedTuple):
    """An event decided but not yet stored; the store assigns its version."""

    type: str
    account_id: str
    data: EventData
    event_id: str
    recorded_at: str
    metadata: Metadata
    schema: int = SCHEMA_VERSION


class RecordedEvent(NamedTuple):
    """An event as stored in an account stream. A named tuple: rebuilding creates one per stored event,
    and tuples are several times cheaper to create than frozen dataclasses."""

    account_id: str
    version: int
    type: str
    data: EventData
    event_id: str
    recorded_at: str
    schema: int
    #: Kept as the stored JSON text: only the events endpoint reads it, so rebuilds skip decoding it.
    metadata_json: str = "{}"

    @property
    def metadata(self) -> dict[str, Any]:
        decoded: dict[str, Any] = orjson.loads(self.metadata_json)
        return decoded
