"""Every answer of the Flask gateway, whoever produced it (a handler, the framework, a bug), carries a request
id and, when it is an error, a full problem document. On the in-memory store: no server needed."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from gateway import create_app
from gateway.settings import load_gateway_settings
from shared.api import Dependencies
from shared.config import ConfigError, Settings
from shared.errors import StoreUnavailable
from tests.fakes import InMemoryEventStore
from tests.support.memory import memory_dependencies


def _client(dependencies: Dependencies | None = None, ready: bool = True) -> FlaskClient:
    chosen = dependencies or memory_dependencies(InMemoryEventStore(), Settings(max_body_bytes=1024))

    def readiness() -> None:
        if not ready:
            raise StoreUnavailable("Redis is unavailable: ConnectionError")

    app = create_app(lambda: chosen, readiness)
    app.config["MAX_CONTENT_LENGTH"] = chosen.settings.max_body_bytes
    return app.test_client()


def _answers(client: FlaskClient) -> list[TestResponse]:
    client.post("/accounts", json={"id": "bob"})
    return [
        client.post("/accounts", json={"id": "carol"}),                          # 201
        client.get("/accounts/bob"),                                              # 200
        client.get("/healthz"),                                                   # 200, no handler
        client.get("/nothing-here"),                                              # 404 from the framework
        client.delete("/accounts/bob"),                                           # 405 from the framework
        client.post("/accounts/bob/deposits", data=b"x" * 5000, content_type="application/json"),  # 413
        client.post("/accounts/bob/deposits", json={"amount": "1.005"}),          # 400
        client.get("/accounts/nobody"),                                           # 404 from a handler
        client.post("/accounts", json={"id": "bob"}),                             # 409
        client.post("/accounts/bob/deposits", json={"amount": 1}, headers={"If-Match": '"9"'}),  # 412
        client.post("/accounts/bob/withdrawals", json={"amount": 5}),             # 422
        client.options("/accounts"),                                              # 405: no automatic OPTIONS
        client.options("/healthz"),                                               # 405
    ]


def test_every_answer_has_a_request_id_and_every_error_a_problem_document() -> None:
    statuses = []
    for response in _answers(_client()):
        statuses.append(response.status_code)
        assert response.headers.get("X-Request-Id"), response.status_code
        if response.status_code >= 400:
            assert response.headers["Content-Type"] == "application/problem+json"
            problem = response.get_json()
            assert {"type", "title", "status", "detail", "code", "instance", "request_id"} <= set(problem)
            assert problem["request_id"] == response.headers["X-Request-Id"]
            assert problem["status"] == response.status_code
    assert statuses == [201, 200, 200, 404, 405, 413, 400, 404, 409, 412, 422, 405, 405]


def test_readiness_and_a_store_outage_are_503_with_retry_after() -> None:
    down = _client(ready=False).get("/readyz")
    assert (down.status_code, down.headers["Retry-After"]) == (503, "1")
    assert down.headers["X-Request-Id"] and down.get_json()["code"] == "store-unavailable"


def test_a_bug_anywhere_is_a_generic_500_with_a_request_id() -> None:
    def broken() -> Dependencies:
        raise RuntimeError("secret internal detail")

    app = create_app(broken, lambda: None)
    response = app.test_client().get("/accounts/bob")
    assert response.status_code == 500
    assert response.headers["X-Request-Id"]
    assert response.get_json()["code"] == "internal-error"
    assert "secret" not in response.get_data(as_text=True)


@pytest.mark.parametrize("workers", ["0", "-2", "many"])
def test_a_worker_count_that_serves_nothing_is_refused(workers: str) -> None:
    with pytest.raises(ConfigError, match="WEB_CONCURRENCY"):
        load_gateway_settings({"WEB_CONCURRENCY": workers})


def test_gunicorn_refuses_a_bad_setting_in_one_line() -> None:
    import subprocess
    import sys

    started = subprocess.run([sys.executable, "-m", "gunicorn", "--config", "gateway/gunicorn.conf.py",
                              "--check-config", "gateway:create_app()"], env={"WEB_CONCURRENCY": "0", "PATH": ""},
                             capture_output=True, text=True, check=False, timeout=60)
    assert started.returncode != 0
    assert "WEB_CONCURRENCY must be" in started.stderr + started.stdout


def test_the_worker_count_defaults_to_the_usable_cores_plus_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert load_gateway_settings({}).workers == 4
    assert load_gateway_settings({"WEB_CONCURRENCY": "7"}).workers == 7
