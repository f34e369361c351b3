"""Redis out of memory (``maxmemory`` with ``noeviction``, as shipped): a write is refused with 503
``store-full``, nothing of it is written, reads and replays still work, the outcome is counted, readiness and
``projector status`` say how full Redis is, and writes come back once memory is freed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from devstack.mongo_standin import MongoStandIn
from devstack.redis_server import RedisProcess, free_port
from gateway import create_app
from shared import runtime
from shared.errors import StoreFull
from shared.keys import KeySpace
from shared.redis_store import RedisEventStore
from tests.support.apigw import body_of, call
from tests.support.events import new_event
from tests.support.readmodel import ProjectorProcess
from tests.support.scrape import answers, scrape, total, value
from tests.support.waiting import wait_until

pytestmark = pytest.mark.redis


@pytest.fixture
def small_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    server = RedisProcess().start(extra_args=("--maxmemory-policy", "noeviction"))
    monkeypatch.setenv("REDIS_URL", server.url)
    monkeypatch.delenv("REDIS_CLUSTER", raising=False)
    monkeypatch.setenv("LEDGER_KEY_PREFIX", "full")
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    runtime.reset()
    client = redis.Redis.from_url(server.url)
    try:
        yield client
    finally:
        client.close()
        runtime.reset()
        server.stop()


def _fill(client: redis.Redis) -> None:
    """Set maxmemory well under what Redis uses now (connections' buffers come and go by more than a little):
    every write that would add memory is refused."""
    used: Any = client.info("memory")["used_memory"]
    client.config_set("maxmemory", int(used) // 2)


def _appended() -> float:
    return REGISTRY.get_sample_value("ledger_appends_total", {"outcome": "store_full"}) or 0.0


def test_a_full_store_refuses_writes_with_nothing_written_and_keeps_reading(small_redis: redis.Redis) -> None:
    keys = KeySpace("full", 16)
    assert call("create_account", "alice")["statusCode"] == 201
    first = call("deposit", "alice", {"amount": 5}, headers={"Idempotency-Key": "k1"})
    assert first["statusCode"] == 200
    before = {key: small_redis.type(key) for key in small_redis.keys("*")}
    lengths = (small_redis.xlen(keys.stream("alice")), small_redis.xlen(keys.partition_log(keys.partition_of("alice"))))
    full_before = _appended()
    _fill(small_redis)

    refused = call("deposit", "alice", {"amount": 7}, headers={"Idempotency-Key": "k2"})
    assert refused["statusCode"] == 503
    assert body_of(refused)["code"] == "store-full" and "nothing was written" in body_of(refused)["detail"]
    assert refused["headers"]["Retry-After"] == "30"
    assert call("create_account", "bob")["statusCode"] == 503
    # Nothing of either: no new key, no entry, no idempotency record, the same version.
    assert {key: small_redis.type(key) for key in small_redis.keys("*")} == before
    assert (small_redis.xlen(keys.stream("alice")),
            small_redis.xlen(keys.partition_log(keys.partition_of("alice")))) == lengths
    assert _appended() == full_before + 2

    # Reads and replays need no memory.
    assert body_of(call("get_account", "alice"))["funds"] == "5.00"
    replay = call("deposit", "alice", {"amount": 5}, headers={"Idempotency-Key": "k1"})
    assert replay["statusCode"] == 200 and replay["headers"].get("Idempotent-Replayed") == "true"

    # Readiness says how full it is (and stays ready: reads work).
    ready = create_app().test_client().get("/readyz").get_json()
    [node] = ready["redis_memory"]
    assert ready["status"] == "ready" and node["used_share"] > 1

    small_redis.config_set("maxmemory", 0)
    retried = call("deposit", "alice", {"amount": 7}, headers={"Idempotency-Key": "k2"})
    assert retried["statusCode"] == 200 and body_of(retried)["funds"] == "12.00"


def test_the_append_with_replica_wait_is_refused_the_same_way(small_redis: redis.Redis) -> None:
    keys = KeySpace("full", 16)
    store = RedisEventStore(small_redis, keys, 3600, wait_replicas=1, wait_timeout_seconds=0.1)
    _fill(small_redis)
    with pytest.raises(StoreFull):
        store.append("carol", 0, [new_event("carol", "AccountOpened")])
    assert small_redis.exists(keys.stream("carol")) == 0


@pytest.mark.mongo
def test_projector_status_reports_memory_near_the_limit_as_a_problem(
        small_redis: redis.Redis, mongo_standin: MongoStandIn, mongo_db: str) -> None:
    url = f"redis://127.0.0.1:{small_redis.connection_pool.connection_kwargs['port']}/0"
    env = {**os.environ, "REDIS_URL": url, "LEDGER_KEY_PREFIX": "full", "MONGODB_URI": mongo_standin.uri,
           "MONGODB_DATABASE": mongo_db}

    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "projector", "status"], env=env, capture_output=True,
                              text=True, timeout=60, check=False)

    roomy = status()
    assert roomy.returncode == 0 and "redis memory redis: " in roomy.stdout and "no maxmemory" in roomy.stdout
    _fill(small_redis)
    full = status()
    assert full.returncode == 1, full.stdout + full.stderr
    assert "PROBLEM: redis memory redis: " in full.stdout and "503 store-full" in full.stdout


@pytest.fixture
def projectors() -> Iterator[list[ProjectorProcess]]:
    started: list[ProjectorProcess] = []
    yield started
    for process in started:
        if process.process.poll() is None:
            os.kill(process.process.pid, signal.SIGCONT)
        process.kill()


@pytest.mark.mongo
def test_a_projector_keeps_projecting_what_it_owns_when_redis_is_full(
        small_redis: redis.Redis, mongo_standin: MongoStandIn, mongo_db: str,
        projectors: list[ProjectorProcess]) -> None:
    """At maxmemory Redis refuses the heartbeat and new leases, but renews leases and takes acks: a running
    projector applies what was written before, says once that Redis is full, and never crashes."""
    port = free_port()
    url = f"redis://127.0.0.1:{small_redis.connection_pool.connection_kwargs['port']}/0"
    projector = ProjectorProcess({"REDIS_URL": url, "LEDGER_KEY_PREFIX": "full", "MONGODB_URI": mongo_standin.uri,
                                  "MONGODB_DATABASE": mongo_db, "PROJECTOR_HEALTH_PORT": str(port),
                                  "PROJECTOR_HEALTH_BIND": "127.0.0.1", "PROJECTOR_LEASE_TTL_SECONDS": "4",
                                  "LOG_LEVEL": "INFO"})
    projectors.append(projector)
    metrics = f"http://127.0.0.1:{port}/metrics"
    for n in range(8):
        assert call("create_account", f"p-{n}")["statusCode"] == 201
    wait_until(lambda: answers(metrics) and value(scrape(metrics), "ledger_projector_partitions_owned") == 16
               and total(scrape(metrics), "ledger_projector_lag_entries") == 0, 30, "the projector to catch up")

    os.kill(projector.process.pid, signal.SIGSTOP)  # briefly: well inside its leases' 4 s
    for n in range(8):
        assert call("deposit", f"p-{n}", {"amount": 1})["statusCode"] == 200
    _fill(small_redis)
    os.kill(projector.process.pid, signal.SIGCONT)

    wait_until(lambda: total(scrape(metrics), "ledger_projector_lag_entries") == 0, 30,
               "the entries written before Redis filled up to be projected")
    wait_until(lambda: projector.logged("Redis is out of memory"), 20, "the projector to say Redis is full")
    assert projector.process.poll() is None and not any("Traceback" in line for line in projector.raw)
    assert len(projector.logged("Redis is out of memory")) == 1  # once per episode, not every tick
    assert value(scrape(metrics), "ledger_projector_stalled") == 0


@pytest.mark.mongo
def test_a_projector_started_on_a_full_redis_waits_instead_of_crashing(
        small_redis: redis.Redis, mongo_standin: MongoStandIn, mongo_db: str,
        projectors: list[ProjectorProcess]) -> None:
    _fill(small_redis)  # not even the event store's name can be written
    url = f"redis://127.0.0.1:{small_redis.connection_pool.connection_kwargs['port']}/0"
    projector = ProjectorProcess({"REDIS_URL": url, "LEDGER_KEY_PREFIX": "full", "MONGODB_URI": mongo_standin.uri,
                                  "MONGODB_DATABASE": mongo_db, "PROJECTOR_HEALTH_PORT": "0", "LOG_LEVEL": "INFO"})
    projectors.append(projector)
    wait_until(lambda: projector.logged("redis unavailable"), 30, "the projector to report the refusal")
    assert projector.process.poll() is None, "".join(projector.raw)
    assert not any("Traceback" in line for line in projector.raw)
    assert any("maxmemory" in str(line.get("message")) for line in projector.logged("redis unavailable"))
    small_redis.config_set("maxmemory", 0)
    wait_until(lambda: projector.logged("redis is back"), 30, "the projector to resume once memory is freed")
