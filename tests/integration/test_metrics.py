"""``/metrics`` scraped from the running processes under real traffic and faults: the gateway's health
process sums every gunicorn worker; a projector replica reports every partition, so a paused or killed one's
lag shows on the survivor; a poison event shows as parked."""

from __future__ import annotations

import os
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from devstack.mongo_standin import MongoStandIn
from devstack.redis_server import free_port
from shared import runtime
from shared.keys import KeySpace
from shared.redis_store import RedisEventStore
from tests.support.apigw import call
from tests.support.events import new_event
from tests.support.gateway import live_gateway
from tests.support.readmodel import ProjectorProcess
from tests.support.scrape import answers, scrape, total, value
from tests.support.targets import RedisTarget
from tests.support.waiting import wait_until


def _post(base: str, path: str, body: bytes) -> int:
    request = urllib.request.Request(f"{base}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.redis
def test_the_gateway_counts_every_workers_appends_and_requests(redis_target: RedisTarget, key_prefix: str) -> None:
    health_port = free_port()
    settings = {**redis_target.env(), "LEDGER_KEY_PREFIX": key_prefix, "LEDGER_PARTITIONS": "8",
                "GATEWAY_HEALTH_BIND": f"127.0.0.1:{health_port}"}
    with live_gateway(settings, workers=3) as base:
        metrics = f"http://127.0.0.1:{health_port}/metrics"
        wait_until(lambda: answers(metrics), 20, "the health process to serve /metrics")
        before = scrape(metrics)
        accounts = [f"m-{n}" for n in range(6)]
        for account in accounts:
            assert _post(base, "/accounts", f'{{"id": "{account}"}}'.encode()) == 201
        deposits = 60
        with ThreadPoolExecutor(6) as pool:  # concurrent clients: spread over the workers
            codes = list(pool.map(lambda n: _post(base, f"/accounts/{accounts[n % 6]}/deposits", b'{"amount": 1}'),
                                  range(deposits)))
        assert codes == [200] * deposits
        assert _post(base, "/accounts/m-0/withdrawals", b'{"amount": 1000}') == 422  # refused: not enough money
        assert _post(base, "/nowhere", b"{}") == 404
        after = scrape(metrics)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    appended_during = grew("ledger_appends_total", outcome="appended")
    assert appended_during == deposits + len(accounts)  # exactly: every worker's count, each counted once
    assert grew("ledger_appends_total", outcome="rejected") == 1
    deposits_route = {"route": "/accounts/{id}/deposits", "method": "POST"}
    assert grew("ledger_http_requests_total", **deposits_route, status="200") == deposits
    assert grew("ledger_http_request_duration_seconds_count", **deposits_route) == deposits
    assert grew("ledger_http_requests_total", route="/accounts/{id}/withdrawals", status="422") == 1
    assert grew("ledger_http_requests_total", route="unmatched", status="404") == 1
    assert value(after, "ledger_redis_up") == 1 and total(after, "ledger_redis_used_memory_bytes") > 0
    assert not any("m-" in str(labels) for _, labels in after)  # never an account id in a label


@pytest.mark.redis
def test_metrics_are_not_served_on_the_public_port(redis_target: RedisTarget, key_prefix: str) -> None:
    with live_gateway({**redis_target.env(), "LEDGER_KEY_PREFIX": key_prefix}, workers=1) as base:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/metrics", timeout=5)
        assert refused.value.code == 404


@pytest.fixture
def replicas() -> Iterator[dict[str, tuple[ProjectorProcess, str]]]:
    started: dict[str, tuple[ProjectorProcess, str]] = {}
    yield started
    for process, _ in started.values():
        if process.process.poll() is None:
            os.kill(process.process.pid, signal.SIGCONT)
        process.kill()


@pytest.mark.mongo
def test_projector_metrics_follow_lag_takeovers_and_parked_events(
        live_env: KeySpace, redis_target: RedisTarget, mongo_standin: MongoStandIn, mongo_db: str,
        replicas: dict[str, tuple[ProjectorProcess, str]]) -> None:
    client = runtime.redis_client()  # on either topology
    def start(name: str) -> None:
        port = free_port()
        env = {**redis_target.env(), "LEDGER_KEY_PREFIX": live_env.prefix, "LEDGER_PARTITIONS": "8",
               "MONGODB_URI": mongo_standin.uri, "MONGODB_DATABASE": mongo_db, "PROJECTOR_NAME": name,
               "PROJECTOR_LEASE_TTL_SECONDS": "4", "PROJECTOR_HEALTH_PORT": str(port),
               "PROJECTOR_HEALTH_BIND": "127.0.0.1", "PROJECTOR_MAX_DELIVERIES": "2", "LOG_LEVEL": "INFO"}
        replicas[name] = (ProjectorProcess(env), f"http://127.0.0.1:{port}/metrics")

    start("a")
    start("b")
    a, b = replicas["a"][1], replicas["b"][1]
    wait_until(lambda: answers(a) and answers(b), 30, "both replicas to serve /metrics")
    wait_until(lambda: value(scrape(a), "ledger_projector_partitions_owned") == 4
               and value(scrape(b), "ledger_projector_partitions_owned") == 4, 30, "the partitions to be shared")
    for n in range(16):
        call("create_account", f"p-{n}")
    wait_until(lambda: total(scrape(a), "ledger_projector_lag_entries") == 0, 30, "the read model to catch up")
    assert value(scrape(b), "ledger_projector_applied_total") > 0

    # b stops answering (paused): its partitions' lag shows on a, and rises.
    def owner(partition: int) -> str:
        raw: Any = client.get(live_env.lease(partition, "projector"))
        return raw.decode() if isinstance(raw, bytes) else str(raw or "")

    b_owns = {p for p in range(8) if owner(p).startswith("b-")}
    os.kill(replicas["b"][0].process.pid, signal.SIGSTOP)
    behind = [f"p-{n}" for n in range(16) if live_env.partition_of(f"p-{n}") in b_owns]
    for account in behind:
        call("deposit", account, {"amount": 5})
    scraped = scrape(a)
    lagging = {int(dict(labels)["partition"]) for (name, labels), v in scraped.items()
               if name == "ledger_projector_lag_entries" and v > 0}
    assert lagging and lagging <= b_owns
    assert total(scraped, "ledger_projector_lag_entries") == len(behind)
    assert max(v for (name, _), v in scraped.items() if name == "ledger_projector_lag_seconds") >= 0

    # b is killed while paused: a takes its partitions over, counts the takeovers, and the lag goes back to 0.
    replicas["b"][0].process.kill()
    wait_until(lambda: value(scrape(a), "ledger_projector_partitions_owned") == 8, 30, "a to own every partition")
    wait_until(lambda: total(scrape(a), "ledger_projector_lag_entries") == 0, 30, "the lag to go back to 0")
    scraped = scrape(a)
    assert value(scraped, "ledger_projector_lease_takeovers_total") == len(b_owns)
    assert value(scraped, "ledger_projector_partitions_unowned") == 0

    # A poison event: parked after its deliveries, and counted.
    call("create_account", "poisoned")
    RedisEventStore(client, live_env, 3600).append("poisoned", 1, [new_event("poisoned", "FundsFrozen")])
    wait_until(lambda: value(scrape(a), "ledger_projector_parked") == 1, 30, "the poison event to be parked")
    assert value(scrape(a), "ledger_projector_stalled") == 0
