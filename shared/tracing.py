"""OpenTelemetry traces: off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (the exporter reads it, with the
rest of the standard ``OTEL_EXPORTER_OTLP_*`` settings, itself).

Off, a request pays one read of ``SWITCH.on`` and nothing else: neither the adapter
(``shared/otel_tracing.py``, imported by ``configure``) nor the SDK's tracer is even imported. On:

* a server span per API request, continuing the client's W3C ``traceparent``;
* a client span per event-store call (each is one Redis script or command; a generic Redis instrumentation
  would only say ``EVALSHA``);
* the request's trace context stored in each event's metadata (``traceparent``), so the projector's span for
  applying the event is a child of the request's: one trace from the HTTP request to the MongoDB write.

``configure`` runs in the process that serves: in a gunicorn worker (after the fork: the exporter's thread
would not survive one), in a Lambda container, in the projector. No span carries an account id, a token or a
body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor

class _Switch:
    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = False


#: Whether spans are made at all (``SWITCH.on``). Call sites check it before anything else.
SWITCH = _Switch()


def configure(service_name: str, processor: SpanProcessor | None = None) -> None:
    """Start tracing: to the OTLP endpoint of the environment, or to ``processor`` (tests)."""
    from shared import otel_tracing

    otel_tracing.configure(service_name, processor)
    SWITCH.on = True


def shutdown() -> None:
    """Send what is buffered and stop."""
    if SWITCH.on:
        from shared import otel_tracing

        otel_tracing.shutdown()
    SWITCH.on = False


def current_traceparent() -> str | None:
    """The current span's ``traceparent`` to store with an event; None when tracing is off."""
    if not SWITCH.on:
        return None
    from shared import otel_tracing

    return otel_tracing.current_traceparent()
