"""Every kind of bad request gets the right 4xx problem response, and changes nothing (on the in-memory store:
validation happens before any store call, so this needs no server)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.support.apigw import ROUTES, Api, body_of, make_event
from tests.support.memory import memory_dependencies


@pytest.fixture
def api() -> Api:
    dependencies = memory_dependencies()
    return Api(lambda: dependencies)


BIG = "9" * 20

# (route, account id in path, body, raw body, extra headers, status, code)
MATRIX: list[tuple[str, str | None, object, str | None, dict[str, str], int, str]] = [
    # amounts
    ("deposit", "acc", {"amount": "abc"}, None, {}, 400, "invalid-amount"),
    ("deposit", "acc", {"amount": True}, None, {}, 400, "invalid-amount"),
    ("deposit", "acc", {"amount": None}, None, {}, 400, "invalid-amount"),
    ("deposit", "acc", {"amount": [1]}, None, {}, 400, "invalid-amount"),
    ("deposit", "acc", {"amount": {"value": 1}}, None, {}, 400, "invalid-amount"),
    ("deposit", "acc", None, '{"amount": NaN}', {}, 400, "malformed-json"),
    ("deposit", "acc", None, '{"amount": Infinity}', {}, 400, "malformed-json"),
    ("deposit", "acc", None, '{"amount": -Infinity}', {}, 400, "malformed-json"),
    ("deposit", "acc", {"amount": "NaN"}, None, {}, 400, "invalid-amount"),
    ("deposit", "acc", {"amount": "Infinity"}, None, {}, 400, "invalid-amount"),
    ("deposit", "acc", None, '{"amount": 1.005}', {}, 400, "invalid-amount"),
    ("withdraw", "acc", {"amount": "1.005"}, None, {}, 400, "invalid-amount"),
    ("deposit", "acc", {"amount": -5}, None, {}, 400, "invalid-amount"),
    ("withdraw", "acc", {"amount": "-5.00"}, None, {}, 400, "invalid-amount"),
    ("deposit", "acc", {"amount": 0}, None, {}, 400, "invalid-amount"),
    ("deposit", "acc", {"amount": "0.00"}, None, {}, 400, "invalid-amount"),
    ("deposit", "acc", None, '{"amount": ' + BIG + "}", {}, 400, "invalid-amount"),
    ("deposit", "acc", {"amount": BIG}, None, {}, 400, "invalid-amount"),
    ("deposit", "acc", None, '{"amount": 1e400}', {}, 400, "invalid-amount"),
    ("deposit", "acc", None, '{"amount": ' + "9" * 5000 + "}", {}, 400, "malformed-json"),
    # duplicate keys at any depth, and text that is not Unicode (RFC 8259 4, 8.1, 8.2)
    ("deposit", "acc", None, '{"amount": "1.00", "amount": "1000000"}', {}, 400, "duplicate-key"),
    ("deposit", "acc", None, '{"amount": {"v": 1, "v": 2}}', {}, 400, "duplicate-key"),
    ("deposit", "acc", None, '{"amount": [{"a": 1, "a": 1}]}', {}, 400, "duplicate-key"),
    ("create_account", None, None, '{"id": "acc2", "id": "acc"}', {}, 400, "duplicate-key"),
    ("deposit", "acc", None, '{"amount": "\\ud800"}', {}, 400, "malformed-json"),
    ("deposit", "acc", None, '{"\\udfff": 1}', {}, 400, "malformed-json"),
    ("deposit", "acc", None, '\ufeff{"amount": 1}', {}, 400, "malformed-json"),
    # fields and shapes
    ("deposit", "acc", {}, None, {}, 400, "missing-field"),
    ("deposit", "acc", {"amt": 5}, None, {}, 400, "invalid-body"),
    ("deposit", "acc", {"amount": 5, "extra": 1}, None, {}, 400, "invalid-body"),
    ("deposit", "acc", [5], None, {}, 400, "invalid-body"),
    ("deposit", "acc", None, '"5"', {}, 400, "invalid-body"),
    ("deposit", "acc", None, "null", {}, 400, "invalid-body"),
    ("deposit", "acc", None, "{not json", {}, 400, "malformed-json"),
    ("deposit", "acc", None, "", {}, 400, "malformed-json"),
    ("deposit", "acc", None, "   ", {}, 400, "malformed-json"),
    ("deposit", "acc", None, '{"amount": 5', {}, 400, "malformed-json"),
    ("deposit", "acc", None, "[" * 100_000, {}, 413, "payload-too-large"),
    ("deposit", "acc", None, "[" * 5_000, {}, 400, "malformed-json"),
    ("deposit", "acc", None, '{"amount": 5, "pad": "' + "x" * 20_000 + '"}', {}, 413, "payload-too-large"),
    ("deposit", "acc", {"amount": 5}, None, {"Content-Type": "text/plain"}, 415, "unsupported-media-type"),
    ("deposit", "acc", {"amount": 5}, None, {"Content-Type": "application/x-www-form-urlencoded"}, 415,
     "unsupported-media-type"),
    # ids
    ("create_account", None, {}, None, {}, 400, "missing-field"),
    ("create_account", None, {"id": ""}, None, {}, 400, "invalid-account-id"),
    ("create_account", None, {"id": 42}, None, {}, 400, "invalid-account-id"),
    ("create_account", None, {"id": None}, None, {}, 400, "invalid-account-id"),
    ("create_account", None, {"id": "ünïcödé"}, None, {}, 400, "invalid-account-id"),
    ("create_account", None, {"id": "a{p1}b"}, None, {}, 400, "invalid-account-id"),
    ("create_account", None, {"id": "{}"}, None, {}, 400, "invalid-account-id"),
    ("create_account", None, {"id": "a:b"}, None, {}, 400, "invalid-account-id"),
    ("create_account", None, {"id": "a b"}, None, {}, 400, "invalid-account-id"),
    ("create_account", None, {"id": "x" * 65}, None, {}, 400, "invalid-account-id"),
    ("create_account", None, {"id": "\U0001f4b0"}, None, {}, 400, "invalid-account-id"),
    ("deposit", "{p0}", {"amount": 5}, None, {}, 400, "invalid-account-id"),
    ("deposit", "%7Bx%7D", {"amount": 5}, None, {}, 400, "invalid-account-id"),
    ("get_account", "ünï", None, None, {}, 400, "invalid-account-id"),
    ("list_events", "a*b", None, None, {}, 400, "invalid-account-id"),
    # headers
    ("deposit", "acc", {"amount": 5}, None, {"Idempotency-Key": ""}, 400, "invalid-header"),
    ("deposit", "acc", {"amount": 5}, None, {"Idempotency-Key": "k" * 256}, 400, "invalid-header"),
    ("deposit", "acc", {"amount": 5}, None, {"Idempotency-Key": "has space"}, 400, "invalid-header"),
    ("deposit", "acc", {"amount": 5}, None, {"If-Match": "yesterday"}, 400, "invalid-header"),
    ("deposit", "acc", {"amount": 5}, None, {"X-Correlation-Id": "a b"}, 400, "invalid-header"),
]


@pytest.mark.parametrize(("route", "account_id", "body", "raw", "headers", "status", "code"), MATRIX,
                         ids=[f"{i}-{m[0]}-{m[6]}" for i, m in enumerate(MATRIX)])
def test_bad_input_gets_a_problem_and_changes_nothing(api: Api, route: str, account_id: str | None, body: object,
                                                       raw: str | None, headers: dict[str, str], status: int,
                                                       code: str) -> None:
    assert api.call("create_account", "acc")["statusCode"] == 201
    assert api.call("deposit", "acc", {"amount": 10})["statusCode"] == 200
    response = api.call(route, account_id, body, raw_body=raw, headers=headers)
    assert_problem(response, status, code)
    after = body_of(api.call("get_account", "acc"))
    assert (after["funds"], after["version"]) == ("10.00", 2)


def assert_problem(response: dict[str, Any], status: int, code: str) -> None:
    assert response["statusCode"] == status, response["body"]
    assert response["headers"]["Content-Type"] == "application/problem+json"
    problem = body_of(response)
    assert problem["status"] == status
    assert problem["code"] == code
    assert problem["type"].endswith(code)
    assert problem["title"]
    assert problem["detail"]
    assert "Traceback" not in response["body"]


def test_base64_bodies_are_decoded_and_garbage_is_refused(api: Api) -> None:
    api.call("create_account", "acc")
    good = make_event("deposit", "acc")
    good["body"] = base64.b64encode(b'{"amount": "2.50"}').decode()
    good["isBase64Encoded"] = True
    assert body_of(api.send("deposit", good))["funds"] == "2.50"
    for payload in ("%%%not base64%%%", base64.b64encode(b"\xff\xfe{").decode()):
        bad = make_event("deposit", "acc")
        bad["body"] = payload
        bad["isBase64Encoded"] = True
        assert_problem(api.send("deposit", bad), 400, "malformed-json")


def test_events_endpoint_validates_its_query(api: Api) -> None:
    api.call("create_account", "acc")
    for query in ({"limit": "0"}, {"limit": "x"}, {"after": "-1"}, {"page": "2"}):
        assert_problem(api.call("list_events", "acc", query=query), 400, "invalid-query")
    repeated = make_event("list_events", "acc", query={"limit": "2"})
    repeated["multiValueQueryStringParameters"] = {"limit": ["1", "2"]}
    problem = api.send("list_events", repeated)
    assert_problem(problem, 400, "invalid-query")
    assert "more than once" in body_of(problem)["detail"]


def test_an_event_with_nothing_in_it_is_a_client_error(api: Api) -> None:
    for name in ROUTES:
        response = api.send(name, {})
        if name == "list_accounts":  # a GET with no parameters is a whole request: the caller's accounts
            assert response["statusCode"] == 200, response
            continue
        assert 400 <= response["statusCode"] < 500, name
