"""The projector against a real Redis server and the MongoDB stand-in (nx-27017)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from pymongo import MongoClient

from devstack.mongo_standin import MongoStandIn
from devstack.redis_server import free_port
from projector import health, maintenance, projection
from projector.consumer import PartitionConsumer
from projector.read_model import ReadModel, connect_mongo
from shared import account, runtime
from shared.events import RecordedEvent
from shared.keys import KeySpace
from tests.support.apigw import call
from tests.support.readmodel import (
    COLLECTION,
    assert_read_model_matches,
    drain,
    group_drained,
    make_projector,
    projector_process,
    read_model,
    settings,
)
from tests.support.targets import RedisTarget

pytestmark = pytest.mark.mongo


def burst(accounts: int, writers: int, operations: int, seed: int = 1) -> None:
    """Concurrent traffic through the real handlers: creates, then a deposit/withdraw mix."""
    ids = [f"acct-{i}" for i in range(accounts)]
    for account_id in ids:
        assert call("create_account", account_id)["statusCode"] == 201

    def writer(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        for _ in range(operations):
            route = "deposit" if rng.random() < 0.6 else "withdraw"
            call(route, rng.choice(ids), {"amount": rng.randint(1, 5000) / 100})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.fixture
def client(live_env: KeySpace) -> redis.Redis:
    return runtime.redis_client()


def test_read_model_equals_the_streams_after_a_concurrent_burst(client: redis.Redis, live_env: KeySpace,
                                                                mongo_standin: MongoStandIn, mongo_db: str) -> None:
    burst(accounts=20, writers=16, operations=25)
    projector = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db, timestamps_kept=5))
    drain(projector)
    docs = assert_read_model_matches(client, live_env, mongo_standin.uri, mongo_db)
    sample = docs["acct-0"]
    assert set(sample) == {"_id", "balance_minor", "balance", "version", "timestamps", "created_at", "updated_at"}
    assert 1 <= len(sample["timestamps"]) <= 5
    assert sample["created_at"] <= sample["updated_at"]
    entries: Any = client.xrange(live_env.partition_log(live_env.partition_of("acct-0")))
    log_ids = [entry_id for entry_id, fields in entries if fields[b"account_id"] == b"acct-0"]
    assert sample["timestamps"] == [i.decode() for i in log_ids[-5:]]
    assert group_drained(client, live_env, "projector")


def _log_entries(client: redis.Redis, keys: KeySpace) -> list[projection.LogEntry]:
    consumer = PartitionConsumer(client, keys, "projector", "inspector")
    return [e for p in range(keys.partitions) for e in consumer.scan(p, "0-0", "+", 10_000)]


def test_redelivered_and_reordered_entries_change_nothing(client: redis.Redis, live_env: KeySpace,
                                                          mongo_standin: MongoStandIn, mongo_db: str) -> None:
    burst(accounts=5, writers=4, operations=10)
    projector = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db))
    drain(projector)
    before = read_model(mongo_standin.uri, mongo_db)
    entries = _log_entries(client, live_env)
    random.Random(3).shuffle(entries)
    for start in range(0, len(entries), 17):
        report = projector.process(entries[start:start + 17] * 2)
        assert report.applied == 0
    assert read_model(mongo_standin.uri, mongo_db) == before


def test_a_gap_waits_and_then_fills(client: redis.Redis, live_env: KeySpace, mongo_standin: MongoStandIn,
                                    mongo_db: str) -> None:
    call("create_account", "gappy")
    for _ in range(3):
        call("deposit", "gappy", {"amount": 1})
    projector = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db))
    entries = sorted(_log_entries(client, live_env), key=lambda e: e.event.version if e.event else 0)
    first, second, third, fourth = entries
    assert projector.process([first, third, fourth]).deferred == 2
    assert read_model(mongo_standin.uri, mongo_db)["gappy"]["version"] == 1
    projector.process([second])
    assert read_model(mongo_standin.uri, mongo_db)["gappy"]["version"] == 2
    time.sleep(0.05)
    drain(projector)  # the deferred entries come back from memory and apply on top of version 2
    doc = read_model(mongo_standin.uri, mongo_db)["gappy"]
    assert (doc["version"], doc["balance_minor"]) == (4, 300)


def _legacy_deposit(client: redis.Redis, keys: KeySpace, account_id: str, version: int) -> None:
    """An event the projector cannot apply: a deposit in an older payload shape."""
    client.xadd(keys.partition_log(keys.partition_of(account_id)), {
        "version": version, "type": account.DEPOSITED, "account_id": account_id, "event_id": f"legacy-{version}",
        "time": "2026-11-28T12:00:00Z", "schema": 0, "data": json.dumps({"amount": "5.00"}), "meta": "{}"})


def test_poison_is_parked_without_blocking_others_and_replays_after_a_fix(
        client: redis.Redis, live_env: KeySpace, mongo_standin: MongoStandIn, mongo_db: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    call("create_account", "victim")
    _legacy_deposit(client, live_env, "victim", 2)
    call("create_account", "bystander")
    call("deposit", "bystander", {"amount": 7})
    projector = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db, max_deliveries=3))
    deadline = time.monotonic() + 20
    while not projector.consumer.parked():
        assert time.monotonic() < deadline, "poison was never parked"
        projector.step()
        time.sleep(0.02)
    docs = read_model(mongo_standin.uri, mongo_db)
    assert docs["bystander"]["balance_minor"] == 700  # not blocked by the poison behind or before it
    assert docs["victim"]["version"] == 1
    [parked] = projector.consumer.parked()
    assert parked.deliveries >= 3
    assert "amount_minor" in parked.error
    assert group_drained(client, live_env, "projector")  # parked means acknowledged on the log

    # Still broken: replay keeps it parked and says why.
    report = maintenance.replay_parked(projector.consumer, projector.read_model)
    assert report.replayed == [] and len(report.remaining) == 1

    original_apply = account.apply_recorded

    def upcasting_apply(state: account.Account, event: RecordedEvent) -> account.Account:
        if "amount" in event.data and "amount_minor" not in event.data:  # the fix: read the old payload shape
            event = event._replace(data={"amount_minor": int(Decimal(event.data["amount"]) * 100)})
        return original_apply(state, event)

    monkeypatch.setattr(account, "apply_recorded", upcasting_apply)
    report = maintenance.replay_parked(projector.consumer, projector.read_model)
    assert len(report.replayed) == 1 and report.remaining == []
    assert read_model(mongo_standin.uri, mongo_db)["victim"]["balance_minor"] == 500
    assert projector.consumer.parked() == []


def test_mongodb_outage_loses_nothing(client: redis.Redis, live_env: KeySpace, tmp_path: Path) -> None:
    mongo = MongoStandIn(tmp_path / "nx").start()
    try:
        config = settings(mongo.uri, "outage", mongodb_timeout_ms=300)
        projector = make_projector(client, live_env, config)
        burst(accounts=4, writers=2, operations=5)
        drain(projector)
        mongo.stop()
        burst(accounts=0, writers=0, operations=0)
        for account_id in ("acct-0", "acct-1"):
            call("deposit", account_id, {"amount": 3})
        runner = threading.Thread(target=projector.run)
        runner.start()
        time.sleep(1.5)
        assert not projector.health.mongo_up
        assert not group_drained(client, live_env, "projector")  # nothing acknowledged while MongoDB is down
        mongo.start()
        deadline = time.monotonic() + 30
        while not group_drained(client, live_env, "projector"):
            assert time.monotonic() < deadline, "projector did not recover"
            time.sleep(0.1)
        projector.stop()
        runner.join(10)
        assert not runner.is_alive()
        assert_read_model_matches(client, live_env, mongo.uri, "outage")
    finally:
        mongo.stop()


def _env(keys: KeySpace, target: RedisTarget, mongo_uri: str, database: str, **extra: str) -> dict[str, str]:
    return {**target.env(), "LEDGER_KEY_PREFIX": keys.prefix, "LEDGER_PARTITIONS": str(keys.partitions),
            "MONGODB_URI": mongo_uri, "MONGODB_DATABASE": database, "PROJECTOR_BLOCK_MS": "100",
            "PROJECTOR_CLAIM_IDLE_MS": "1000", "PROJECTOR_HEALTH_PORT": "0", "LOG_LEVEL": "INFO", **extra}


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait_drained(client: redis.Redis, keys: KeySpace, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not group_drained(client, keys, "projector"):
        assert time.monotonic() < deadline, "projector processes did not drain the logs"
        time.sleep(0.1)


def _terminate(process: subprocess.Popen[bytes]) -> float:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    return time.monotonic() - started


@pytest.mark.slow
def test_sigkill_mid_batch_then_restart_converges(client: redis.Redis, live_env: KeySpace, redis_target: RedisTarget,
                                                  mongo_standin: MongoStandIn, mongo_db: str,
                                                  processes: list[subprocess.Popen[bytes]]) -> None:
    burst(accounts=30, writers=8, operations=150)
    env = _env(live_env, redis_target, mongo_standin.uri, mongo_db, PROJECTOR_CONSUMER="worker-1",
               PROJECTOR_BATCH_SIZE="25")
    first = projector_process(env)
    processes.append(first)
    assert first.stdout is not None
    batches = 0
    for line in first.stdout:  # kill it while it is busy, after a few batches have landed
        batches += b'"message": "batch"' in line
        if batches >= 5:
            break
    first.kill()
    first.wait()
    assert not group_drained(client, live_env, "projector"), "killed too late to prove anything"
    second = projector_process(env)  # same consumer name: resumes its own pending entries first
    processes.append(second)
    _wait_drained(client, live_env)
    assert _terminate(second) < 5
    assert_read_model_matches(client, live_env, mongo_standin.uri, mongo_db)


@pytest.mark.slow
def test_two_projectors_in_one_group(client: redis.Redis, live_env: KeySpace, redis_target: RedisTarget,
                                     mongo_standin: MongoStandIn, mongo_db: str,
                                     processes: list[subprocess.Popen[bytes]]) -> None:
    for name in ("worker-a", "worker-b"):
        processes.append(projector_process(_env(live_env, redis_target, mongo_standin.uri, mongo_db,
                                                PROJECTOR_CONSUMER=name, PROJECTOR_BATCH_SIZE="10")))
    burst(accounts=10, writers=8, operations=60)  # while both consume
    _wait_drained(client, live_env)
    for process in processes:
        assert _terminate(process) < 5
    assert_read_model_matches(client, live_env, mongo_standin.uri, mongo_db)
    consumers = {c["name"] for c in client.xinfo_consumers(live_env.partition_log(0), "projector")}
    assert consumers <= {b"worker-a", b"worker-b"}


def test_rebuild_matches_live_projection_and_never_empties_the_live_collection(
        client: redis.Redis, live_env: KeySpace, mongo_standin: MongoStandIn, mongo_db: str) -> None:
    burst(accounts=25, writers=8, operations=40)
    projector = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db))
    drain(projector)
    live = read_model(mongo_standin.uri, mongo_db)
    mongo: MongoClient[dict[str, Any]] = MongoClient(mongo_standin.uri)
    collection = mongo[mongo_db][COLLECTION]
    # Damage the live model the way a projection bug would; the rebuild must repair it.
    collection.update_one({"_id": "acct-3"}, {"$set": {"balance_minor": 123456789, "balance": "wrong"}})

    reads: list[int] = []
    running = threading.Event()
    running.set()

    def reader() -> None:
        while running.is_set():
            reads.append(collection.count_documents({}))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        report = maintenance.rebuild(projector.consumer, projector.read_model, 20, progress=False)
    finally:
        running.clear()
        thread.join()
    assert reads and min(reads) == len(live), "the live collection was not fully readable during the rebuild"
    assert report.accounts == len(live)
    rebuilt = read_model(mongo_standin.uri, mongo_db)
    assert {k: (v["balance_minor"], v["balance"], v["version"], v["timestamps"]) for k, v in rebuilt.items()} == \
        {k: (v["balance_minor"], v["balance"], v["version"], v["timestamps"][-20:]) for k, v in live.items()}
    assert mongo[mongo_db].list_collection_names() == [COLLECTION]
    mongo.close()


def test_catch_up_applies_what_arrived_during_a_rebuild(client: redis.Redis, live_env: KeySpace,
                                                        mongo_standin: MongoStandIn, mongo_db: str) -> None:
    burst(accounts=3, writers=2, operations=5)
    projector = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db))
    drain(projector)
    snapshot = projector.consumer.log_ends()
    for account_id in ("acct-0", "acct-1", "acct-2"):
        call("deposit", account_id, {"amount": 1})
    assert maintenance.catch_up(projector.consumer, projector.read_model, snapshot) == 3
    assert maintenance.catch_up(projector.consumer, projector.read_model, snapshot) == 0
    assert_read_model_matches(client, live_env, mongo_standin.uri, mongo_db)


def test_status_and_parked_commands(client: redis.Redis, live_env: KeySpace, redis_target: RedisTarget,
                                    mongo_standin: MongoStandIn, mongo_db: str) -> None:
    call("create_account", "acct")
    env = {**os.environ, **_env(live_env, redis_target, mongo_standin.uri, mongo_db)}
    status = subprocess.run([sys.executable, "-m", "projector", "status"], env=env, capture_output=True,
                            text=True, check=True)
    lines = status.stdout.splitlines()
    assert lines[0] == "group 'projector'"
    assert len(lines) == 2 + live_env.partitions + 1
    partition = live_env.partition_of("acct")
    row = lines[2 + partition].split()
    assert row[0] == str(partition) and row[1] == "1"  # one entry in the log, group not created yet
    projector = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db))
    drain(projector)
    shown = subprocess.run([sys.executable, "-m", "projector", "show", "acct"], env=env, capture_output=True,
                           text=True, check=True)
    assert json.loads(shown.stdout)["balance"] == "0.00"
    missing = subprocess.run([sys.executable, "-m", "projector", "show", "nobody"], env=env, capture_output=True,
                             text=True, check=False)
    assert missing.returncode == 1
    rebuilt = subprocess.run([sys.executable, "-m", "projector", "rebuild", "--no-progress"], env=env,
                             capture_output=True, text=True, check=True)
    assert rebuilt.stdout.startswith("rebuilt 1 accounts from 1 events")
    bad = subprocess.run([sys.executable, "-m", "projector", "status"], env={**env, "PROJECTOR_BATCH_SIZE": "lots"},
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert "PROJECTOR_BATCH_SIZE" in bad.stderr and "Traceback" not in bad.stderr
    listing = subprocess.run([sys.executable, "-m", "projector", "parked", "list"], env=env, capture_output=True,
                             text=True, check=True)
    assert listing.stdout.strip().endswith("0 parked")


def test_status_counts_lag_pending_and_parked(client: redis.Redis, live_env: KeySpace, mongo_standin: MongoStandIn,
                                              mongo_db: str) -> None:
    call("create_account", "acct")
    call("deposit", "acct", {"amount": 1})
    projector = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db))
    projector.consumer.ensure_groups()
    partition = live_env.partition_of("acct")
    row = projector.consumer.status()[partition]
    assert (row.length, row.lag, row.pending, row.parked) == (2, 2, 0, 0)
    projector.consumer.read(1, None)
    row = projector.consumer.status()[partition]
    assert (row.lag, row.pending) == (1, 1)
    assert row.oldest_pending_age_s is not None and row.oldest_pending_age_s >= 0


def test_healthz(client: redis.Redis, live_env: KeySpace, mongo_standin: MongoStandIn, mongo_db: str) -> None:
    projector = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db))
    port = free_port()
    server = health.serve(projector.health, port, stall_after_s=10)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as response:
            body = json.loads(response.read())
        assert body["status"] == "ok"
        projector.health.last_beat -= 60
        with pytest.raises(urllib.error.HTTPError) as stalled:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz")
        assert stalled.value.code == 503
    finally:
        server.shutdown()


def test_read_model_module_is_the_only_pymongo_user() -> None:
    root = Path(__file__).resolve().parents[2]
    users = {path.relative_to(root).as_posix() for folder in ("shared", "projector", "functions", "gateway")
             for path in (root / folder).rglob("*.py") if "pymongo" in path.read_text()}
    assert users == {"projector/read_model.py"}


def test_connect_uses_the_configured_database(mongo_standin: MongoStandIn, mongo_db: str) -> None:
    model = ReadModel(connect_mongo(settings(mongo_standin.uri, mongo_db)), mongo_db, "elsewhere", 3)
    assert model.count() == 0
    model.ping()


def test_redis_outage_backs_off_and_recovers(tmp_path: Path, mongo_standin: MongoStandIn, mongo_db: str) -> None:
    from devstack.redis_server import RedisProcess
    from shared.redis_store import RedisEventStore
    from tests.support.events import new_event

    server = RedisProcess().start()
    keys = KeySpace("outage", 4)
    client = redis.Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    store = RedisEventStore(client, keys, 3600)
    try:
        store.append("acc", 0, [new_event("acc", "AccountOpened")])
        projector = make_projector(client, keys, settings(mongo_standin.uri, mongo_db))
        drain(projector)
        server.stop()
        runner = threading.Thread(target=projector.run)
        runner.start()
        time.sleep(1.0)
        assert runner.is_alive()
        up_during_outage = projector.health.redis_up
        assert not up_during_outage
        server.start()  # same port, empty (no persistence): the projector must recreate its groups
        store.append("acc2", 0, [new_event("acc2", "AccountOpened")])
        deadline = time.monotonic() + 20
        while "acc2" not in read_model(mongo_standin.uri, mongo_db):
            assert time.monotonic() < deadline, "projector did not recover from the Redis outage"
            time.sleep(0.1)
        assert projector.health.redis_up
        projector.stop()
        runner.join(10)
        assert not runner.is_alive()
    finally:
        server.stop()
        client.close()


def test_status_reports_an_unknown_lag_when_redis_cannot_tell(client: redis.Redis, live_env: KeySpace,
                                                             mongo_standin: MongoStandIn, mongo_db: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from projector.__main__ import _status

    call("create_account", "acct")
    for _ in range(3):
        call("deposit", "acct", {"amount": 1})
    projector = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db))
    projector.consumer.ensure_groups()
    projector.consumer.read(1, None)
    partition = live_env.partition_of("acct")
    log = live_env.partition_log(partition)
    entries: Any = client.xrange(log)
    client.xdel(log, entries[2][0])  # a deletion after the group's position: XINFO GROUPS reports lag as NULL
    row = projector.consumer.status()[partition]
    assert row.lag is None
    assert _status(projector.consumer) == 0
    line = capsys.readouterr().out.splitlines()[2 + partition].split()
    assert line[:3] == [str(partition), "3", "unknown"]
