"""The Flask gateway turns HTTP into the same API Gateway events, through Flask's test client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway import create_app
from shared.keys import KeySpace


@pytest.fixture
def app(live_env: KeySpace) -> Iterator[Flask]:
    application = create_app()
    application.config["TESTING"] = True
    yield application


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def test_walk_through(client: FlaskClient) -> None:
    created = client.post("/accounts", json={"id": "alice"})
    assert created.status_code == 201
    assert created.headers["Location"] == "/accounts/alice"
    assert created.headers["ETag"] == '"1"'
    assert created.get_json() == {"id": "alice", "funds": "0.00", "version": 1}

    deposited = client.post("/accounts/alice/deposits", json={"amount": 100},
                            headers={"Idempotency-Key": "d-1"})
    assert deposited.get_json() == {"id": "alice", "amount": "100.00", "funds": "100.00", "version": 2}
    replay = client.post("/accounts/alice/deposits", json={"amount": 100}, headers={"Idempotency-Key": "d-1"})
    assert replay.get_json() == deposited.get_json()
    assert replay.headers["Idempotent-Replayed"] == "true"

    withdrawn = client.post("/accounts/alice/withdrawals", json={"amount": "100.00"}, headers={"If-Match": '"2"'})
    assert withdrawn.get_json()["funds"] == "0.00"

    account = client.get("/accounts/alice")
    assert account.status_code == 200
    assert account.headers["ETag"] == '"3"'
    assert account.get_json()["funds"] == "0.00"

    events = client.get("/accounts/alice/events?limit=2")
    assert [e["version"] for e in events.get_json()["events"]] == [1, 2]
    assert events.get_json()["next_after"] == 2
    assert client.get("/accounts/alice/events?after=2").get_json()["events"][0]["type"] == "FundsWithdrawn"
    assert account.headers["X-Request-Id"]


def _problem(response: object, status: int, code: str) -> None:
    from werkzeug.test import TestResponse

    assert isinstance(response, TestResponse)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/problem+json"
    body = response.get_json()
    assert (body["status"], body["code"]) == (status, code)


def test_unknown_routes_and_methods_are_problems(client: FlaskClient) -> None:
    _problem(client.get("/nothing-here"), 404, "route-not-found")
    _problem(client.get("/accounts/a/b/c"), 404, "route-not-found")
    wrong = client.delete("/accounts/alice")
    _problem(wrong, 405, "method-not-allowed")
    assert "GET" in wrong.headers["Allow"]
    _problem(client.patch("/accounts"), 405, "method-not-allowed")


def test_client_mistakes_are_4xx(client: FlaskClient) -> None:
    client.post("/accounts", json={"id": "alice"})
    _problem(client.post("/accounts/alice/deposits", data=b"x" * 20_000, content_type="application/json"),
             413, "payload-too-large")
    _problem(client.post("/accounts/alice/deposits", data=b"\xff\xfe\x00", content_type="application/json"),
             400, "malformed-json")
    _problem(client.post("/accounts/alice/deposits", data="amount=5",
                         content_type="application/x-www-form-urlencoded"), 415, "unsupported-media-type")
    _problem(client.post("/accounts/%C3%BC/deposits", json={"amount": 1}), 400, "invalid-account-id")
    _problem(client.post("/accounts/%7Bp1%7D/deposits", json={"amount": 1}), 400, "invalid-account-id")
    _problem(client.post("/accounts/alice/deposits", json={"amount": 1.005}), 400, "invalid-amount")
    assert client.get("/accounts/alice").get_json()["version"] == 1


def test_health_routes(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz").get_json()
    assert ready["status"] == "ready"
    [node, *_] = ready["redis_memory"]  # one per master, with how full it is
    assert node["used_bytes"] > 0 and node["max_bytes"] >= 0


def test_bad_configuration_stops_the_gateway_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import runtime
    from shared.config import ConfigError

    monkeypatch.setenv("LEDGER_PARTITIONS", "zero")
    runtime.reset()
    try:
        with pytest.raises(ConfigError, match="LEDGER_PARTITIONS"):
            create_app()
    finally:
        runtime.reset()
