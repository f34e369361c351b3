"""One trace from the HTTP request to the read-model write: the client's ``traceparent`` is continued by the
request's span, the event-store calls are its children, and the projector's span for applying the event is a
child of the request's span, through the trace context stored in the event's metadata."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from devstack.mongo_standin import MongoStandIn
from shared import runtime, tracing
from shared.keys import KeySpace
from tests.support.apigw import call
from tests.support.readmodel import drain, make_projector, settings

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
