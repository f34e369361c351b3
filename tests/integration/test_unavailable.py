"""Redis out of reach: 503 with Retry-After, never a hang and never a 500 with a trace."""

from __future__ import annotations

import pytest

from devstack.redis_server import free_port
from gateway import create_app
from shared import runtime
from tests.support.apigw import HANDLERS, body_of, make_event, sample


@pytest.fixture
def dead_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("REDIS_TIMEOUT_SECONDS", "0.2")
    monkeypatch.setenv("LOG_LEVEL", "ERROR")
    runtime.reset()


@pytest.mark.usefixtures("dead_redis")
@pytest.mark.parametrize("route", sorted(HANDLERS))
def test_every_route_answers_503(route: str) -> None:
    response = HANDLERS[route](sample(route), None)
    assert response["statusCode"] == 503
    assert response["headers"]["Retry-After"] == "1"
    assert response["headers"]["Content-Type"] == "application/problem+json"
    problem = body_of(response)
    assert problem["code"] == "store-unavailable"
    assert "Traceback" not in response["body"]
    assert "127.0.0.1" not in problem["detail"]  # infrastructure addresses stay in the logs
    assert "Redis" not in problem["detail"] and "Error" not in problem["detail"]  # nor backend or exception


@pytest.mark.usefixtures("dead_redis")
def test_validation_still_happens_first() -> None:
    response = HANDLERS["deposit"](make_event("deposit", "acc", {"amount": -1}), None)
    assert response["statusCode"] == 400


@pytest.mark.usefixtures("dead_redis")
def test_gateway_readiness_fails_but_liveness_holds() -> None:
    client = create_app().test_client()
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.headers["Retry-After"] == "1"
