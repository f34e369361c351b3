"""The tracing port on OpenTelemetry's SDK (``shared/tracing.py`` says what is traced and when; this module is
imported only once tracing is on, so a process without it never pays the SDK's import)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator


class _State:
    def __init__(self) -> None:
        self.tracer: trace.Tracer = trace.NoOpTracer()
        self.provider: TracerProvider | None = None


_state = _State()
_PROPAGATOR = TraceContextTextMapPropagator()


def configure(service_name: str, processor: SpanProcessor | None = None) -> None:
    """Start tracing in this process: to the OTLP endpoint of the environment, or to ``processor`` (tests)."""
    shutdown()
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    if processor is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())
    provider.add_span_processor(processor)
    _state.provider, _state.tracer = provider, provider.get_tracer("ledgerstream")


def shutdown() -> None:
    """Send what is buffered and stop (a process that exits, a test that is done)."""
    if _state.provider is not None:
        _state.provider.shutdown()
    _state.provider, _state.tracer = None, trace.NoOpTracer()


def _context_of(headers: Mapping[str, str]) -> Context:
    return _PROPAGATOR.extract({name.lower(): value for name, value in headers.items()})


@contextmanager
def request_span(method: str, route: str, headers: Mapping[str, str]) -> Iterator[Span]:
    """The server span of one API request, continuing the client's ``traceparent`` when it sent one."""
    with _state.tracer.start_as_current_span(f"{method} {route}", context=_context_of(headers),
                                             kind=SpanKind.SERVER,
                                             attributes={"http.request.method": method, "http.route": route},
                                             record_exception=False, set_status_on_exception=False) as span:
        yield span


def answered(span: Span, status: int, code: str) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR, code))


def recording() -> bool:
    """Whether the current request's span is sampled: an unsampled request makes no further spans (the SDK's
    non-recording spans still cost a context switch each) and stores no trace context with its events."""
    return trace.get_current_span().is_recording()


@contextmanager
def store_span(operation: str, command: str) -> Iterator[Span]:
    """A client span for one event-store call: ``operation`` names what it does, ``command`` the Redis command."""
    with _state.tracer.start_as_current_span(f"redis {operation}", kind=SpanKind.CLIENT,
                                             attributes={"db.system.name": "redis", "db.operation.name": command,
                                                         "ledger.store.operation": operation}) as span:
        yield span


def current_traceparent() -> str | None:
    """The current span's W3C ``traceparent``, to store with an event (None when it is not sampled)."""
    if not recording():
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def _link(traceparent: str) -> Context | None:
    context = _PROPAGATOR.extract({"traceparent": traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


class AppliedSpans:
    """The projector's spans for one batch written to the read model: the batch's own (linked to every
    request it carries), and one per event that came with a trace context, a child of that request's span,
    timed as the batch's write."""

    def __init__(self, events: list[tuple[str, str | None]]) -> None:
        """``events``: (event type, stored traceparent) for each entry of the batch."""
        self._events = [(kind, _link(parent)) for kind, parent in events if parent]
        links = [Link(trace.get_current_span(context).get_span_context()) for _, context in self._events
                 if context is not None]
        self._batch = _state.tracer.start_span("projector batch", kind=SpanKind.CONSUMER, links=links,
                                               attributes={"ledger.batch.entries": len(events)})
        self._started: Any = getattr(self._batch, "start_time", None)

    def end(self, applied: int, failed: int) -> None:
        self._batch.set_attribute("ledger.batch.applied", applied)
        if failed:
            self._batch.set_status(Status(StatusCode.ERROR, f"{failed} entries failed"))
        self._batch.end()
        ended: Any = getattr(self._batch, "end_time", None)
        for kind, context in self._events:
            if context is None:
                continue
            span = _state.tracer.start_span(f"project {kind}", context=context, kind=SpanKind.CONSUMER,
                                            start_time=self._started, links=[Link(self._batch.get_span_context())])
            span.end(end_time=ended)
