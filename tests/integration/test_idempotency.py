"""A client retry with the same Idempotency-Key never moves money twice, sequentially or concurrently."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from shared import runtime
from shared.event_store import Duplicate, IdempotencyRecord, IdempotencyWrite
from shared.keys import KeySpace
from shared.redis_store import RedisEventStore
from tests.support.apigw import body_of, call
from tests.support.events import new_event
from tests.support.targets import ids_on_every_master

pytestmark = pytest.mark.usefixtures("live_env")


def _funded(account_id: str, amount: str) -> None:
    assert call("create_account", account_id)["statusCode"] == 201
    assert call("deposit", account_id, {"amount": amount})["statusCode"] == 200


def _concurrently(count: int, request: Any) -> list[dict[str, Any]]:
    barrier = threading.Barrier(count)
    responses: list[dict[str, Any]] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        response = request()
        with lock:
            responses.append(response)

    threads = [threading.Thread(target=worker) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


def test_sequential_retries_replay_the_first_answer() -> None:
    _funded("acc", "100.00")
    key = {"Idempotency-Key": "retry-1"}
    first = call("withdraw", "acc", {"amount": "100.00"}, headers=key)
    assert first["statusCode"] == 200
    for _ in range(3):
        again = call("withdraw", "acc", {"amount": "100.00"}, headers=key)
        # Re-deciding would say "insufficient funds"; the key makes it replay the original answer.
        assert again["statusCode"] == 200
        assert again["body"] == first["body"]
        assert again["headers"]["ETag"] == first["headers"]["ETag"]
        assert again["headers"]["Idempotent-Replayed"] == "true"
    assert body_of(call("get_account", "acc"))["version"] == 3


def test_equivalent_bodies_count_as_the_same_request() -> None:
    _funded("acc", "10.00")
    key = {"Idempotency-Key": "same-amount"}
    first = call("deposit", "acc", {"amount": 5}, headers=key)
    again = call("deposit", "acc", raw_body='{ "amount" : "5.00" }', headers=key)
    assert again["body"] == first["body"]
    assert body_of(call("get_account", "acc"))["funds"] == "15.00"


def test_same_key_with_another_body_is_refused() -> None:
    _funded("acc", "10.00")
    key = {"Idempotency-Key": "k-1"}
    assert call("deposit", "acc", {"amount": 5}, headers=key)["statusCode"] == 200
    for name, body in (("deposit", {"amount": 6}), ("withdraw", {"amount": 5})):
        reused = call(name, "acc", body, headers=key)
        assert reused["statusCode"] == 422
        assert body_of(reused)["code"] == "idempotency-key-reused"
    assert body_of(call("get_account", "acc"))["funds"] == "15.00"


def test_keys_are_scoped_per_account() -> None:
    _funded("a1", "1.00")
    _funded("a2", "1.00")
    key = {"Idempotency-Key": "shared-key"}
    assert body_of(call("deposit", "a1", {"amount": 1}, headers=key))["funds"] == "2.00"
    assert body_of(call("deposit", "a2", {"amount": 1}, headers=key))["funds"] == "2.00"


def test_create_is_idempotent_too() -> None:
    key = {"Idempotency-Key": "create-1"}
    first = call("create_account", "acc", headers=key)
    again = call("create_account", "acc", headers=key)
    assert (first["statusCode"], again["statusCode"]) == (201, 201)
    assert again["headers"]["Location"] == "/accounts/acc"
    assert again["body"] == first["body"]
    assert call("create_account", "acc")["statusCode"] == 409  # without the key it is a new request


@pytest.mark.parametrize(("route", "amount"), [("deposit", "7.25"), ("withdraw", "50.00")])
def test_concurrent_retries_move_money_once(live_env: KeySpace, route: str, amount: str) -> None:
    for account_id in ids_on_every_master(runtime.redis_client(), live_env):
        _funded(account_id, "50.00")
        responses = _concurrently(
            16, lambda a=account_id: call(route, a, {"amount": amount}, headers={"Idempotency-Key": "burst"}))
        assert {r["statusCode"] for r in responses} == {200}
        assert len({r["body"] for r in responses}) == 1
        account = body_of(call("get_account", account_id))
        assert account["version"] == 3
        assert account["funds"] == ("57.25" if route == "deposit" else "0.00")


def test_failed_requests_are_not_recorded() -> None:
    _funded("acc", "1.00")
    key = {"Idempotency-Key": "try-again"}
    assert call("withdraw", "acc", {"amount": "2.00"}, headers=key)["statusCode"] == 422
    call("deposit", "acc", {"amount": "1.00"})
    # Nothing was written the first time, so the retry is decided afresh and now succeeds.
    assert body_of(call("withdraw", "acc", {"amount": "2.00"}, headers=key))["funds"] == "0.00"


def test_a_record_is_one_small_string_with_a_ttl(live_env: KeySpace) -> None:
    call("create_account", "small")
    call("deposit", "small", {"amount": "2.50"}, headers={"Idempotency-Key": "k-small"})
    client: Any = runtime.redis_client()
    key = live_env.idempotency("small", "k-small")
    assert client.type(key) == b"string" and 0 < client.ttl(key) <= 86_400
    value = client.get(key)
    assert value[32:] == b"250:2:250"  # the fingerprint's 32 bytes, then balance:version:amount
    assert client.memory_usage(key) < 250


def test_records_written_before_they_were_strings_still_replay(live_env: KeySpace) -> None:
    """A record as the code before 2026-12-05 wrote it (a hash: the fingerprint in hex, the result as JSON)
    answers its retries exactly, and still refuses another request with its key."""
    call("create_account", "legacy")
    first = call("deposit", "legacy", {"amount": 3}, headers={"Idempotency-Key": "k-legacy"})
    client: Any = runtime.redis_client()
    key = live_env.idempotency("legacy", "k-legacy")
    fingerprint = client.get(key)[:32].hex()
    client.delete(key)
    client.hset(key, mapping={"fingerprint": fingerprint, "result": '{"account_id":"legacy","amount":300,'
                                                                     '"balance":300,"version":2}'})
    client.expire(key, 3600)
    again = call("deposit", "legacy", {"amount": 3}, headers={"Idempotency-Key": "k-legacy"})
    assert again["statusCode"] == 200 and body_of(again) == body_of(first)
    assert again["headers"].get("Idempotent-Replayed") == "true"
    other = call("deposit", "legacy", {"amount": 4}, headers={"Idempotency-Key": "k-legacy"})
    assert body_of(other)["code"] == "idempotency-key-reused"
    assert body_of(call("get_account", "legacy"))["version"] == 2

    # The append script's own check reads it too (a retry racing the first request's write).
    store = RedisEventStore(runtime.redis_client(), live_env, 3600)
    outcome = store.append("legacy", 2, [new_event("legacy")],
                           IdempotencyWrite("k-legacy", IdempotencyRecord(fingerprint, "0:0:")))
    assert outcome == Duplicate(IdempotencyRecord(fingerprint, '{"account_id":"legacy","amount":300,'
                                                               '"balance":300,"version":2}'))
