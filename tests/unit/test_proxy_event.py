"""The gateway's HTTP request -> API Gateway event: the header names a handler sees, and a bounded cache."""

from __future__ import annotations

from typing import Any

from flask import Request

from gateway import proxy
from gateway.routes import ROUTES
from tests.support.wsgi import post_environ


def _event(extra: dict[str, str]) -> dict[str, Any]:
    environ = post_environ("/accounts/a/deposits", b"{}", REMOTE_ADDR="10.0.0.1", **extra)
    del environ["HTTP_HOST"]  # only the headers a test names
    route = next(r for r in ROUTES if r.function == "DepositFunction")
    return proxy.to_event(Request(environ), route, {"id": "a"})


def test_header_names_are_written_as_api_gateway_does() -> None:
    event = _event({"HTTP_IDEMPOTENCY_KEY": "k1", "HTTP_X_CORRELATION_ID": "c1", "HTTP_USER_AGENT": "curl"})
    assert event["headers"] == {"Idempotency-Key": "k1", "X-Correlation-Id": "c1", "User-Agent": "curl",
                                "Content-Type": "application/json", "Content-Length": "2"}
    assert event["multiValueHeaders"]["Idempotency-Key"] == ["k1"]
    assert event["requestContext"]["identity"] == {"sourceIp": "10.0.0.1", "userAgent": "curl"}
    assert event["body"] == "{}"


def test_clients_cannot_grow_the_header_name_cache_without_bound() -> None:
    for n in range(3 * proxy._HEADER_NAMES_MAX):
        event = _event({f"HTTP_X_NAME_{n}": "v"})
        assert event["headers"][f"X-Name-{n}"] == "v"  # converted either way, cached or not
    assert len(proxy._HEADER_NAMES) <= proxy._HEADER_NAMES_MAX
