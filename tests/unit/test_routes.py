"""Every route end to end through ``serve`` on the in-memory store: statuses, headers, problem bodies, the
503 and 500 paths and what the request log holds. No server needed."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from shared import logs
from shared.account import Account
from shared.api import Dependencies
from shared.auth import OpenAccess
from shared.config import ConfigError, Settings
from shared.errors import StoreUnavailable
from shared.event_store import AppendOutcome, IdempotencyWrite, Loaded
from shared.events import NewEvent
from shared.http import STATUS_BY_ERROR
from shared.service import AccountService
from tests.fakes import InMemoryEventStore
from tests.support.apigw import Api, body_of
from tests.support.events import new_event
from tests.support.memory import memory_dependencies


@pytest.fixture
def store() -> InMemoryEventStore:
    return InMemoryEventStore()


@pytest.fixture
def api(store: InMemoryEventStore) -> Api:
    dependencies = memory_dependencies(store)
    return Api(lambda: dependencies)


def test_the_api_walk_through(api: Api) -> None:
    created = api.call("create_account", "bob")
    assert created["statusCode"] == 201
    assert created["headers"]["Location"] == "/accounts/bob"
    assert created["headers"]["ETag"] == '"1"'
    assert body_of(created) == {"id": "bob", "funds": "0.00", "version": 1}

    deposited = api.call("deposit", "bob", {"amount": 100}, headers={"Idempotency-Key": "d-1"})
    assert body_of(deposited) == {"id": "bob", "amount": "100.00", "funds": "100.00", "version": 2}
    replayed = api.call("deposit", "bob", {"amount": 100}, headers={"Idempotency-Key": "d-1"})
    assert (replayed["body"], replayed["headers"]["Idempotent-Replayed"]) == (deposited["body"], "true")
    assert "Idempotent-Replayed" not in deposited["headers"]

    withdrawn = api.call("withdraw", "bob", {"amount": "100.00"}, headers={"If-Match": '"2"'})
    assert body_of(withdrawn) == {"id": "bob", "amount": "100.00", "funds": "0.00", "version": 3}

    shown = api.call("get_account", "bob")
    assert (shown["statusCode"], shown["headers"]["ETag"]) == (200, '"3"')
    assert body_of(shown)["funds"] == "0.00"

    page = body_of(api.call("list_events", "bob", query={"limit": "2"}))
    assert [e["version"] for e in page["events"]] == [1, 2]
    assert page["next_after"] == 2
    assert page["events"][1]["data"] == {"amount": "100.00"}


@pytest.mark.parametrize(("route", "account_id", "body", "headers", "status", "code"), [
    ("create_account", "bob", None, {}, 409, "account-already-exists"),
    ("withdraw", "bob", {"amount": 1}, {}, 422, "insufficient-funds"),
    ("deposit", "nobody", {"amount": 1}, {}, 404, "account-not-found"),
    ("get_account", "nobody", None, {}, 404, "account-not-found"),
    ("list_events", "nobody", None, {}, 404, "account-not-found"),
    ("deposit", "bob", {"amount": 1}, {"If-Match": '"7"'}, 412, "precondition-failed"),
])
def test_business_outcomes_map_to_statuses(api: Api, route: str, account_id: str, body: object,
                                           headers: dict[str, str], status: int, code: str) -> None:
    api.call("create_account", "bob")
    response = api.call(route, account_id, body, headers=headers)
    assert response["statusCode"] == status, response["body"]
    assert response["headers"]["Content-Type"] == "application/problem+json"
    problem = body_of(response)
    assert (problem["status"], problem["code"]) == (status, code)
    assert problem["instance"].startswith("/accounts")
    assert problem["request_id"] == response["headers"]["X-Request-Id"]


def test_every_error_class_has_a_status() -> None:
    assert all(100 <= status < 600 for status in STATUS_BY_ERROR.values())


class Failing(InMemoryEventStore):
    """A store whose loads fail with ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def load(self, account_id: str, idempotency_key: str | None = None) -> Loaded:
        raise self.error

    def append(self, account_id: str, expected_version: int, events: Sequence[NewEvent],
               idempotency: IdempotencyWrite | None = None, snapshot: Account | None = None) -> AppendOutcome:
        raise self.error


@pytest.fixture
def captured_log() -> Iterator[io.StringIO]:
    """The JSON log lines the service writes, as a log pipeline would receive them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    saved = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)


def _log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_store_outage_is_a_503_with_retry_after(captured_log: io.StringIO) -> None:
    dependencies = memory_dependencies(Failing(StoreUnavailable("Redis is unavailable: TimeoutError")))
    for route, body in (("deposit", {"amount": 1}), ("get_account", None), ("create_account", None)):
        response = Api(lambda: dependencies).call(route, "bob", body)
        assert response["statusCode"] == 503
        assert response["headers"]["Retry-After"] == "1"
        assert body_of(response)["code"] == "store-unavailable"
    assert {line["status"] for line in _log_lines(captured_log) if line["message"] == "request"} == {503}


def test_wiring_that_cannot_reach_redis_is_a_503() -> None:
    def unreachable() -> Dependencies:
        raise StoreUnavailable("Redis is unavailable: RedisClusterException")

    response = Api(unreachable).call("deposit", "bob", {"amount": 1})
    assert (response["statusCode"], body_of(response)["code"]) == (503, "store-unavailable")


def test_a_bug_is_a_generic_500_and_its_trace_goes_to_the_log(captured_log: io.StringIO) -> None:
    dependencies = memory_dependencies(Failing(KeyError("secret-internal-detail")))
    response = Api(lambda: dependencies).call("deposit", "bob", {"amount": 1})
    assert response["statusCode"] == 500
    problem = body_of(response)
    assert problem["code"] == "internal-error"
    assert "secret-internal-detail" not in response["body"] and "Traceback" not in response["body"]
    assert problem["request_id"] == response["headers"]["X-Request-Id"]
    errors = [line for line in _log_lines(captured_log) if line["level"] == "ERROR"]
    assert errors and "secret-internal-detail" in errors[0]["error"]


def test_broken_configuration_at_request_time_is_a_500_not_a_crash() -> None:
    def misconfigured() -> Dependencies:
        raise ConfigError("LEDGER_PARTITIONS must be between 1 and 16384, got 'zero'")

    response = Api(misconfigured).call("get_account", "bob")
    assert (response["statusCode"], body_of(response)["code"]) == (500, "internal-error")
    assert "LEDGER_PARTITIONS" not in response["body"]


def test_the_request_log_has_one_line_per_request_and_never_a_body(api: Api, captured_log: io.StringIO) -> None:
    api.call("create_account", "bob")
    api.call("deposit", "bob", {"amount": "4321.98"}, headers={"Idempotency-Key": "secret-key-77"})
    lines = [line for line in _log_lines(captured_log) if line["message"] == "request"]
    assert len(lines) == 2
    deposit = lines[1]
    assert {"request_id", "method", "path", "account_id", "status", "code", "duration_ms"} <= set(deposit)
    assert (deposit["method"], deposit["path"], deposit["account_id"], deposit["status"]) == (
        "POST", "/accounts/bob/deposits", "bob", 200)
    text = captured_log.getvalue()
    assert "4321.98" not in text and "secret-key-77" not in text


def test_settings_reach_the_route(store: InMemoryEventStore) -> None:
    tight = memory_dependencies(store, Settings(max_body_bytes=256))
    response = Api(lambda: tight).call("create_account", None, {"id": "bob", "pad": "x" * 300})
    assert (response["statusCode"], body_of(response)["code"]) == (413, "payload-too-large")


def test_a_corrupt_history_is_a_generic_500_and_the_detail_goes_to_the_log(captured_log: io.StringIO) -> None:
    store = InMemoryEventStore()
    store.append("bob", 0, [new_event("bob", "AccountOpened"), new_event("bob", amount=-5)])
    response = Api(lambda: memory_dependencies(store)).call("get_account", "bob")
    assert response["statusCode"] == 500
    problem = body_of(response)
    assert (problem["code"], problem["title"]) == ("internal-error", "Internal error")
    assert "amount_minor" not in response["body"] and "corrupt" not in response["body"]
    logged = [line for line in _log_lines(captured_log) if line["level"] == "ERROR"]
    assert logged and "corrupt-history" in logged[0]["message"] and "amount_minor" in logged[0]["message"]


def test_an_idempotency_key_can_be_required(store: InMemoryEventStore) -> None:
    strict = memory_dependencies(store, Settings(require_idempotency_key=True))
    api = Api(lambda: strict)
    refused = api.call("create_account", "bob")
    assert (refused["statusCode"], body_of(refused)["code"]) == (428, "idempotency-key-required")
    assert store.streams == {}
    assert api.call("create_account", "bob", headers={"Idempotency-Key": "k1"})["statusCode"] == 201
    assert api.call("deposit", "bob", {"amount": 1})["statusCode"] == 428
    assert api.call("get_account", "bob")["statusCode"] == 200  # reads need no key


def test_every_problem_carries_the_request_id(api: Api) -> None:
    for response in (api.call("get_account", "nobody"), api.call("deposit", "x y", {"amount": 1}),
                     api.call("create_account", None, raw_body="{")):
        problem = body_of(response)
        assert problem["request_id"] == response["headers"]["X-Request-Id"]
        assert problem["instance"]


def test_a_bad_request_gets_its_400_even_while_redis_is_unreachable() -> None:
    def unreachable() -> AccountService:
        raise StoreUnavailable("Redis is unavailable: ConnectionError")

    api = Api(lambda: Dependencies(Settings(), unreachable, OpenAccess()))
    for route, account_id, body, options in (
            ("deposit", "bob", {"amount": -1}, {}), ("withdraw", "bob", {"amount": "1.005"}, {}),
            ("create_account", None, {"id": "a b"}, {}), ("create_account", None, {"id": "ok"},
                                                            {"headers": {"If-Match": "yesterday"}}),
            ("list_events", "bob", None, {"query": {"limit": "0"}}), ("get_account", "{x}", None, {})):
        response = api.call(route, account_id, body, **options)
        assert response["statusCode"] == 400, (route, response["body"])
    assert api.call("get_account", "bob")["statusCode"] == 503
