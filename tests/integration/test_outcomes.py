"""What a client is told when Redis stops answering or its replicas lag, checked against what the streams hold:
503 store-unavailable only when nothing was written, outcome-unknown when it cannot be known in time, and an
idempotent retry that always ends with exactly one event."""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from devstack.redis_server import RedisProcess, answers
from shared import runtime
from shared.keys import KeySpace
from shared.stream_codec import decode_entries
from tests.support.apigw import body_of, call
from tests.support.environment import wired
from tests.support.waiting import wait_until


@dataclass(frozen=True)
class Sent:
    account_id: str
    key: str
    correlation_id: str
    amount: str
    status: int
    code: str | None
    seconds: float = 0.0


def _deposit(account_id: str, key: str, correlation_id: str, amount: str) -> Sent:
    started = time.monotonic()
    response = call("deposit", account_id, {"amount": amount},
                    headers={"Idempotency-Key": key, "X-Correlation-Id": correlation_id})
    code = body_of(response).get("code") if response["statusCode"] >= 400 else None
    return Sent(account_id, key, correlation_id, amount, response["statusCode"], code,
                time.monotonic() - started)


def _events_by(client: redis.Redis, keys: KeySpace, accounts: list[str], field: str) -> Counter[str]:
    found: Counter[str] = Counter()
    for account_id in accounts:
        for event in decode_entries(client.xrange(keys.stream(account_id))):
            value = event.metadata.get(field)
            if value:
                found[value] += 1
    return found


def _assert_answers(sent: list[Sent], deadline: float) -> None:
    """Only the three answers, some 503s, and every answer within the deadline: it bounds the whole command,
    store calls included (each gets only what is left of it); before, a call begun near it could run a whole
    socket timeout and its retry past it."""
    statuses = Counter((s.status, s.code) for s in sent)
    assert set(statuses) <= {(200, None), (503, "store-unavailable"), (503, "outcome-unknown")}, statuses
    assert statuses[503, "store-unavailable"] + statuses[503, "outcome-unknown"] > 0, "no outage seen"
    slowest = max(s.seconds for s in sent)
    assert slowest <= deadline + 1.0, f"a deposit took {slowest:.1f}s against COMMAND_DEADLINE_SECONDS={deadline}"


@pytest.mark.slow
def test_a_frozen_redis_never_hides_an_applied_write_behind_store_unavailable() -> None:
    server = RedisProcess().start()
    prefix = f"t{uuid.uuid4().hex[:8]}"
    keys = KeySpace(prefix, 4)
    sent: list[Sent] = []
    lock = threading.Lock()
    stop = threading.Event()
    try:
        with wired(server.url, prefix, 4, COMMAND_DEADLINE_SECONDS="4"):
            accounts = [f"acct-{n}" for n in range(8)]
            for account_id in accounts:
                assert call("create_account", account_id)["statusCode"] == 201

            def writer(seed: int) -> None:
                rng = random.Random(seed)
                while not stop.is_set():
                    outcome = _deposit(rng.choice(accounts), uuid.uuid4().hex, uuid.uuid4().hex,
                                       f"{rng.randint(1, 99)}.{rng.randint(0, 99):02d}")
                    with lock:
                        sent.append(outcome)

            threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
            for thread in threads:
                thread.start()
            try:
                wait_until(lambda: len(sent) >= 50, 30, "traffic before the freeze")
                assert server.process is not None
                server.process.send_signal(signal.SIGSTOP)  # frozen: connections open, nothing answers
                frozen_at = time.monotonic()
                wait_until(lambda: time.monotonic() - frozen_at >= 7, 10, "seven seconds of a frozen Redis")
                server.process.send_signal(signal.SIGCONT)
                thawed = len(sent)
                wait_until(lambda: sum(s.status == 200 for s in sent[thawed:]) >= 50, 30, "traffic after the thaw")
            finally:
                stop.set()
                for thread in threads:
                    thread.join(30)

            _assert_answers(sent, 4)
            client = runtime.redis_client()
            written = _events_by(client, keys, accounts, "correlation_id")
            for outcome in sent:
                if outcome.status == 200:
                    assert written[outcome.correlation_id] == 1, outcome
                elif outcome.code == "store-unavailable":
                    assert written[outcome.correlation_id] == 0, f"a 503 store-unavailable was applied: {outcome}"
                else:
                    assert written[outcome.correlation_id] <= 1, outcome
            unknown = [s for s in sent if s.code == "outcome-unknown"]
            for outcome in unknown:  # the advice of the 503: retry with the same key
                retried = _deposit(outcome.account_id, outcome.key, uuid.uuid4().hex, outcome.amount)
                assert retried.status == 200, retried
            by_key = _events_by(client, keys, accounts, "idempotency_key")
            assert all(by_key[s.key] == 1 for s in unknown), "a retried unknown outcome is not in the streams once"
    finally:
        server.stop()


@pytest.fixture
def primary_and_replica() -> Iterator[tuple[RedisProcess, RedisProcess]]:
    primary = RedisProcess().start()
    replica = RedisProcess().start(extra_args=("--replicaof", "127.0.0.1", str(primary.port)))
    try:
        link = redis.Redis.from_url(replica.url)
        wait_until(lambda: link.info("replication").get("master_link_status") == "up", 20, "the replica's link")
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


def test_with_replica_wait_a_write_is_acknowledged_only_once_a_replica_has_it(
        primary_and_replica: tuple[RedisProcess, RedisProcess]) -> None:
    primary, replica = primary_and_replica
    prefix = f"t{uuid.uuid4().hex[:8]}"
    keys = KeySpace(prefix, 4)
    with wired(primary.url, prefix, 4, REDIS_WAIT_REPLICAS="1", REDIS_WAIT_TIMEOUT_SECONDS="0.3",
               COMMAND_DEADLINE_SECONDS="2"):
        assert call("create_account", "acct", headers={"Idempotency-Key": "open"})["statusCode"] == 201
        assert replica.process is not None
        replica.process.send_signal(signal.SIGSTOP)
        try:
            held = call("deposit", "acct", {"amount": 5}, headers={"Idempotency-Key": "dep-1"})
        finally:
            replica.process.send_signal(signal.SIGCONT)
        assert held["statusCode"] == 503, held["body"]
        problem = body_of(held)
        assert problem["code"] == "outcome-unknown" and "retry with the same Idempotency-Key" in problem["detail"]
        assert "dep-1" not in problem["detail"]  # the detail is logged; keys never are
        retried = call("deposit", "acct", {"amount": 5}, headers={"Idempotency-Key": "dep-1"})
        assert retried["statusCode"] == 200 and retried["headers"]["Idempotent-Replayed"] == "true"
        events = decode_entries(runtime.redis_client().xrange(keys.stream("acct")))
        assert [e.metadata.get("idempotency_key") for e in events].count("dep-1") == 1

        acknowledged = []
        for n in range(20):
            response = call("deposit", "acct", {"amount": 1}, headers={"Idempotency-Key": f"more-{n}"})
            assert response["statusCode"] == 200
            acknowledged.append(f"more-{n}")
    primary.kill()  # a crash, and the replica promoted in its place
    promoted: Any = redis.Redis.from_url(replica.url)
    promoted.replicaof("NO", "ONE")
    wait_until(lambda: answers(replica.url), 10, "the promoted replica")
    kept = [e.metadata.get("idempotency_key") for e in decode_entries(promoted.xrange(keys.stream("acct")))]
    assert all(key in kept for key in acknowledged), "an acknowledged write is missing after the promotion"
