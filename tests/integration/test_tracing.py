"""One trace from the HTTP request to the read-model write: the client's ``traceparent`` is continued by the
request's span, the event-store calls are its children, and the projector's span for applying the event is a
child of the request's span, through the trace context stored in the event's metadata."""

from __future__ import annotations

import http.server
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from devstack.mongo_standin import MongoStandIn
from shared import runtime, tracing
from shared.keys import KeySpace
from tests.support.apigw import call
from tests.support.gateway import live_gateway
from tests.support.readmodel import drain, make_projector, settings
from tests.support.targets import RedisTarget
from tests.support.waiting import wait_until

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure("ledgerstream-test", SimpleSpanProcessor(exporter))
    runtime.reset()  # the service is wired again, with its store traced
    try:
        yield exporter
    finally:
        tracing.shutdown()
        runtime.reset()


def _last_metadata(keys: KeySpace, account_id: str) -> dict[str, Any]:
    entries: Any = runtime.redis_client().xrange(keys.stream(account_id))
    metadata: dict[str, Any] = orjson.loads(entries[-1][1][b"meta"])
    return metadata


def _trace_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


@pytest.mark.mongo
def test_one_trace_from_the_request_to_the_read_model_write(
        live_env: KeySpace, mongo_standin: MongoStandIn, mongo_db: str, spans: InMemorySpanExporter) -> None:
    call("create_account", "traced")
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    assert call("deposit", "traced", {"amount": 5}, headers={"traceparent": traceparent})["statusCode"] == 200
    metadata = _last_metadata(live_env, "traced")
    assert metadata["traceparent"].split("-")[1] == CLIENT_TRACE

    projector = make_projector(runtime.redis_client(), live_env, settings(mongo_standin.uri, mongo_db))
    drain(projector)

    ours = [span for span in spans.get_finished_spans() if _trace_of(span) == CLIENT_TRACE]
    by_name = {span.name: span for span in ours}
    request = by_name["POST /accounts/{id}/deposits"]
    assert request.kind is SpanKind.SERVER and request.parent is not None
    assert f"{request.parent.span_id:016x}" == CLIENT_SPAN  # the client's span is its parent
    assert request.attributes is not None and request.attributes["http.response.status_code"] == 200
    assert request.context is not None
    for name in ("redis load", "redis append"):
        child = by_name[name]
        assert child.kind is SpanKind.CLIENT and child.parent is not None
        assert child.parent.span_id == request.context.span_id
    applied = by_name["project FundsDeposited"]
    assert applied.parent is not None and applied.parent.span_id == request.context.span_id
    batch = next(span for span in spans.get_finished_spans() if span.name == "projector batch"
                 and any(f"{link.context.trace_id:032x}" == CLIENT_TRACE for link in span.links))
    assert batch.attributes is not None and int(str(batch.attributes["ledger.batch.applied"])) >= 1
    # Nothing personal on any span: no account id, no token.
    for span in ours:
        assert "traced" not in str(dict(span.attributes or {})) and "traced" not in span.name


def test_without_an_endpoint_nothing_is_traced_and_no_event_carries_a_trace(live_env: KeySpace) -> None:
    assert not runtime.tracing_started() and not tracing.SWITCH.on
    call("create_account", "untraced", headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
    assert "traceparent" not in _last_metadata(live_env, "untraced")


class _Collector:
    """An OTLP/HTTP endpoint that keeps the spans it is sent: (trace id, span name) pairs."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str]] = []
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = ExportTraceServiceRequest.FromString(body)
                collector.spans += [(span.trace_id.hex(), span.name) for resource in request.resource_spans
                                    for scope in resource.scope_spans for span in scope.spans]
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.mark.redis
def test_gunicorn_workers_export_their_spans(redis_target: RedisTarget, key_prefix: str) -> None:
    """Tracing starts in each worker after the fork: its exporter's thread is alive and sends the spans."""
    collector = _Collector()
    settings = {**redis_target.env(), "LEDGER_KEY_PREFIX": key_prefix, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                "OTEL_BSP_SCHEDULE_DELAY": "100"}
    try:
        with live_gateway(settings, workers=2) as base:
            for n in range(4):  # over both workers
                trace_id = f"{n + 1:032x}"
                headers = {"Content-Type": "application/json", "traceparent": f"00-{trace_id}-{CLIENT_SPAN}-01"}
                request = urllib.request.Request(f"{base}/accounts", data=f'{{"id": "otel-{n}"}}'.encode(),
                                                 method="POST", headers=headers)
                with urllib.request.urlopen(request, timeout=10) as response:
                    assert response.status == 201
            wanted = {(f"{n + 1:032x}", name) for n in range(4) for name in ("POST /accounts", "redis append")}
            wait_until(lambda: wanted <= set(collector.spans), 20, "every request's spans to be exported")
    finally:
        collector.server.shutdown()
