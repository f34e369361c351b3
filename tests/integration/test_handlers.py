"""Each handler, driven by the API Gateway sample events in events/, against a real Redis server."""

from __future__ import annotations

import json

import pytest

from shared.keys import KeySpace
from tests.support.apigw import HANDLERS, body_of, call, sample

pytestmark = pytest.mark.usefixtures("live_env")


def test_sample_events_walk_through_the_whole_api() -> None:
    created = HANDLERS["create_account"](sample("create_account"), None)
    assert created["statusCode"] == 201
    assert created["headers"]["Location"] == "/accounts/carol"
    assert created["headers"]["ETag"] == '"1"'
    assert body_of(created) == {"id": "carol", "funds": "0.00", "version": 1}

    deposited = HANDLERS["deposit"](sample("deposit"), None)
    assert deposited["statusCode"] == 200
    assert body_of(deposited) == {"id": "carol", "amount": "100.00", "funds": "100.00", "version": 2}

    withdrawn = HANDLERS["withdraw"](sample("withdraw"), None)
    assert body_of(withdrawn) == {"id": "carol", "amount": "100.00", "funds": "0.00", "version": 3}
    assert withdrawn["headers"]["ETag"] == '"3"'

    account = HANDLERS["get_account"](sample("get_account"), None)
    assert account["statusCode"] == 200
    assert account["headers"]["ETag"] == '"3"'
    shown = body_of(account)
    assert (shown["id"], shown["funds"], shown["version"]) == ("carol", "0.00", 3)
    assert shown["opened_at"] <= shown["updated_at"]

    events = body_of(HANDLERS["list_events"](sample("list_events"), None))
    assert [(e["version"], e["type"], e["data"]) for e in events["events"]] == [
        (1, "AccountOpened", {}),
        (2, "FundsDeposited", {"amount": "100.00"}),
        (3, "FundsWithdrawn", {"amount": "100.00"}),
    ]
    assert events["next_after"] is None
    deposit_event = events["events"][1]
    assert deposit_event["metadata"] == {"correlation_id": "req-deposit-0001", "causation_id": "req-deposit-0001",
                                         "idempotency_key": "3f1c9a52-deposit-0001"}


def test_responses_are_json_with_a_request_id() -> None:
    response = call("create_account", "bob")
    assert response["headers"]["Content-Type"] == "application/json"
    assert response["headers"]["X-Request-Id"]
    json.loads(response["body"])


def test_decimal_amounts_are_exact() -> None:
    call("create_account", "bob")
    for amount in ("0.10", "0.20", 0.3):
        call("deposit", "bob", {"amount": amount})
    assert body_of(call("get_account", "bob"))["funds"] == "0.60"
    assert body_of(call("withdraw", "bob", {"amount": "0.60"}))["funds"] == "0.00"


def test_events_are_paginated() -> None:
    call("create_account", "bob")
    for _ in range(4):
        call("deposit", "bob", {"amount": 1})
    first = body_of(call("list_events", "bob", query={"limit": "2"}))
    assert [e["version"] for e in first["events"]] == [1, 2]
    assert first["next_after"] == 2
    second = body_of(call("list_events", "bob", query={"after": "2", "limit": "2"}))
    assert [e["version"] for e in second["events"]] == [3, 4]
    last = body_of(call("list_events", "bob", query={"after": "4", "limit": "2"}))
    assert [e["version"] for e in last["events"]] == [5]
    assert last["next_after"] is None


def test_if_match_makes_a_write_conditional() -> None:
    call("create_account", "bob")
    ok = call("deposit", "bob", {"amount": 5}, headers={"If-Match": '"1"'})
    assert ok["statusCode"] == 200
    stale = call("deposit", "bob", {"amount": 5}, headers={"If-Match": '"1"'})
    assert stale["statusCode"] == 412
    assert body_of(stale)["code"] == "precondition-failed"
    assert body_of(call("get_account", "bob"))["funds"] == "5.00"


def test_business_errors() -> None:
    assert call("create_account", "bob")["statusCode"] == 201
    duplicate = call("create_account", "bob")
    assert (duplicate["statusCode"], body_of(duplicate)["code"]) == (409, "account-already-exists")
    broke = call("withdraw", "bob", {"amount": 1})
    assert (broke["statusCode"], body_of(broke)["code"]) == (422, "insufficient-funds")
    for name in ("get_account", "list_events"):
        missing = call(name, "nobody")
        assert (missing["statusCode"], body_of(missing)["code"]) == (404, "account-not-found")
    missing = call("deposit", "nobody", {"amount": 1})
    assert (missing["statusCode"], body_of(missing)["code"]) == (404, "account-not-found")


def test_keys_follow_the_documented_layout(live_env: KeySpace) -> None:
    import redis

    from shared import runtime

    call("create_account", "bob")
    client: redis.Redis = runtime.redis_client()
    tag = live_env.tag(live_env.partition_of("bob"))
    assert tag.startswith("{" + live_env.prefix + ":p")
    assert client.type(f"{tag}:stream:bob") == b"stream"
    assert client.get(f"{tag}:version:bob") == b"1"
    assert client.xlen(f"{tag}:log") == 1
