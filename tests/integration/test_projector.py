"""The projector in process, against real Redis (single node and cluster) and the MongoDB stand-in: it projects
what the streams say, never waits for a gap, parks and quarantines only what cannot be folded, and reports
its health by progress."""

from __future__ import annotations

import json
import random
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from pymongo import MongoClient

from devstack.mongo_standin import MongoStandIn
from devstack.redis_server import free_port
from projector import health, maintenance
from projector.mongo_connection import connect
from projector.mongo_read_model import MongoReadModel
from projector.partition_log import stream_accounts, to_entry
from shared import account, runtime
from shared.events import NewEvent, RecordedEvent
from shared.keys import KeySpace
from shared.redis_store import RedisEventStore
from tests.support.apigw import call
from tests.support.events import new_event
from tests.support.readmodel import (
    COLLECTION,
    assert_read_model_matches,
    drain,
    group_drained,
    make_projector,
    read_model,
    settings,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.mongo


def burst(accounts: int, writers: int, operations: int, seed: int = 1) -> list[str]:
    """Concurrent traffic through the real handlers: creates, then a deposit/withdraw mix. Returns the ids."""
    ids = [f"acct-{i}" for i in range(accounts)]
    for account_id in ids:
        assert call("create_account", account_id)["statusCode"] == 201

    def writer(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        for _ in range(operations):
            route = "deposit" if rng.random() < 0.6 else "withdraw"
            amount = rng.randint(1, 5000)
            call(route, rng.choice(ids), {"amount": f"{amount // 100}.{amount % 100:02d}"})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ids


@pytest.fixture
def client(live_env: KeySpace) -> redis.Redis:
    return runtime.redis_client()


def _log_entries(client: redis.Redis, keys: KeySpace) -> list[Any]:
    found = []
    for partition in range(keys.partitions):
        entries: Any = client.xrange(keys.partition_log(partition)) or []
        found += [to_entry(partition, raw_id.decode(), fields) for raw_id, fields in entries]
    return found


def test_read_model_equals_the_streams_after_a_concurrent_burst(client: redis.Redis, live_env: KeySpace,
                                                                mongo_standin: MongoStandIn, mongo_db: str) -> None:
    ids = burst(accounts=20, writers=16, operations=25)
    projector = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db, timestamps_kept=5))
    drain(projector)
    docs = assert_read_model_matches(client, live_env, mongo_standin.uri, mongo_db)
    assert set(docs) == set(ids)
    sample = docs["acct-0"]
    assert set(sample) == {"_id", "balance_minor", "balance", "version", "owner", "timestamps", "event_ids",
                           "partition", "log_ms", "log_seq", "created_at", "updated_at"}
    assert sample["owner"] is None  # opened without authentication: nobody owns it
    assert 1 <= len(sample["timestamps"]) <= 5 and len(sample["event_ids"]) == min(5, sample["version"])
    assert sample["created_at"] <= sample["updated_at"]
    log_ids = [e.entry_id for e in _log_entries(client, live_env) if e.account_id == "acct-0"]
    assert sample["timestamps"] == log_ids[-5:]
    assert group_drained(client, live_env, "projector")


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
        assert (report.applied, report.held, report.parked, report.repaired) == (0, 0, 0, 0)
    assert read_model(mongo_standin.uri, mongo_db) == before


def test_entries_ahead_of_the_document_are_filled_from_the_stream_at_once(
        client: redis.Redis, live_env: KeySpace, mongo_standin: MongoStandIn, mongo_db: str) -> None:
    projector = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db))
    projector.step()  # takes the partitions, before there is anything to read
    call("create_account", "gappy")
    for _ in range(4):
        call("deposit", "gappy", {"amount": 1})
    entries = sorted(_log_entries(client, live_env), key=lambda e: e.event.version)
    first, _, _, fourth, fifth = entries
    report = projector.process([fifth, first])  # out of order, with three versions never delivered
    assert (report.applied, report.held) == (2, 0)
    doc = read_model(mongo_standin.uri, mongo_db)["gappy"]
    assert (doc["version"], doc["balance_minor"]) == (5, 400)
    assert projector.process([fourth]).skipped == 1  # the late one is recognised as already applied


def test_a_dead_consumer_s_pending_entries_never_make_an_account_wait(
        client: redis.Redis, live_env: KeySpace, mongo_standin: MongoStandIn, mongo_db: str) -> None:
    call("create_account", "held-up")
    partition = live_env.partition_of("held-up")
    log = live_env.partition_log(partition)
    client.xgroup_create(log, "projector", id="0", mkstream=True)
    client.xreadgroup("projector", "pod-dead", {log: ">"}, count=1)  # reads version 1, then dies
    for _ in range(30):
        call("deposit", "held-up", {"amount": 1})
    config = settings(mongo_standin.uri, mongo_db, lease_ttl_seconds=600)  # no timer could have freed it
    projector = make_projector(client, live_env, config)
    drain(projector)
    doc = read_model(mongo_standin.uri, mongo_db)["held-up"]
    assert (doc["version"], doc["balance_minor"]) == (31, 3000)
    assert projector.dead_letters.parked(range(live_env.partitions)) == []
    names = {c["name"] for c in client.xinfo_consumers(log, "projector")}
    assert b"pod-dead" not in names  # claimed at takeover, then removed: no consumer left behind


def _append(store: RedisEventStore, account_id: str, version: int, event: NewEvent) -> None:
    assert store.append(account_id, version, [event]).version == version + 1  # type: ignore[union-attr]


def test_poison_parks_and_quarantines_only_its_account_then_replays_after_a_fix(
        client: redis.Redis, live_env: KeySpace, mongo_standin: MongoStandIn, mongo_db: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = RedisEventStore(client, live_env, 3600)
    _append(store, "victim", 0, new_event("victim", "AccountOpened"))
    # A newer writer recorded an event type this projector does not know, then more events after it.
    _append(store, "victim", 1, new_event("victim", "FundsFrozen"))
    _append(store, "victim", 2, new_event("victim", amount=700))
    call("create_account", "bystander")
    call("deposit", "bystander", {"amount": 7})
    projector = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db, max_deliveries=3))
    partitions = range(live_env.partitions)
    def parked_both() -> bool:
        projector.step()
        return len(projector.dead_letters.parked(partitions)) == 2

    wait_until(parked_both, 20, "the poison and the event behind it to be parked", interval=0.02)
    drain(projector)
    docs = read_model(mongo_standin.uri, mongo_db)
    assert docs["bystander"]["balance_minor"] == 700  # never held up by the poison
    assert docs["victim"]["version"] == 1
    first, second = sorted(projector.dead_letters.parked(partitions), key=lambda p: p.original_id)
    assert first.deliveries >= 3 and "unknown event type" in first.error
    assert "follows version 2" in second.error or "quarantined" in second.error
    assert projector.dead_letters.quarantined(live_env.partition_of("victim")).keys() == {"victim"}
    assert group_drained(client, live_env, "projector")  # parked means acknowledged on the log

    # Still broken: the replay keeps both parked and says why.
    report = maintenance.replay_parked(projector.dead_letters, projector.read_model, projector.history)
    assert report.replayed == [] and len(report.remaining) == 2

    original = account.apply_recorded

    def knows_frozen_funds(state: account.Account, event: RecordedEvent) -> account.Account:
        if event.type == "FundsFrozen":  # the fix: a later release taught the projector this type
            return account.Account(state.id, state.balance, event.version, state.opened_at, event.recorded_at)
        return original(state, event)

    monkeypatch.setattr(account, "apply_recorded", knows_frozen_funds)
    report = maintenance.replay_parked(projector.dead_letters, projector.read_model, projector.history)
    assert len(report.replayed) == 2 and report.remaining == [] and report.released == ["victim"]
    doc = read_model(mongo_standin.uri, mongo_db)["victim"]
    assert (doc["version"], doc["balance_minor"]) == (3, 700)
    assert projector.dead_letters.parked(partitions) == []
    assert projector.dead_letters.quarantined(live_env.partition_of("victim")) == {}


def test_mongodb_outage_loses_nothing(client: redis.Redis, live_env: KeySpace, tmp_path: Path) -> None:
    mongo = MongoStandIn(tmp_path / "nx").start()
    try:
        projector = make_projector(client, live_env, settings(mongo.uri, "outage", mongodb_timeout_seconds=0.3))
        burst(accounts=4, writers=2, operations=5)
        drain(projector)
        mongo.stop()
        for account_id in ("acct-0", "acct-1"):
            call("deposit", account_id, {"amount": 3})
        runner = threading.Thread(target=projector.run)
        runner.start()
        wait_until(lambda: not projector.health.mongo_up, 20, "the projector to notice the outage")
        ready, _ = projector.health.ready()
        assert not ready
        assert projector.health.live()[0]  # backing off is not a stall
        assert not group_drained(client, live_env, "projector")  # nothing acknowledged while MongoDB is down
        mongo.start()
        wait_until(lambda: group_drained(client, live_env, "projector"), 30, "the projector to recover")
        projector.stop()
        runner.join(10)
        assert not runner.is_alive()
        assert_read_model_matches(client, live_env, mongo.uri, "outage")
    finally:
        mongo.stop()


def test_liveness_fails_when_the_loop_is_stuck_with_work_and_recovers(
        client: redis.Redis, live_env: KeySpace, mongo_standin: MongoStandIn, mongo_db: str) -> None:
    projector = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db, stall_seconds=1))
    stuck = threading.Event()
    release = threading.Event()
    original = projector.read_model.write

    def stalling_write(*args: Any, **kwargs: Any) -> Any:
        stuck.set()
        release.wait(30)  # a MongoDB call that hangs, as a network partition would make it
        return original(*args, **kwargs)

    projector.read_model.write = stalling_write  # type: ignore[method-assign]
    port = free_port()
    server = health.serve(projector.health, "127.0.0.1", port)
    runner = threading.Thread(target=projector.run)
    runner.start()
    try:
        call("create_account", "slow")
        wait_until(stuck.is_set, 20, "the injected stall")
        wait_until(lambda: _status(port, "/healthz") == 503, 5, "liveness to fail within its threshold")
        release.set()
        wait_until(lambda: _status(port, "/healthz") == 200, 10, "liveness to recover")
        assert _status(port, "/readyz") == 200
        assert _status(port, "/nothing") == 404
    finally:
        release.set()
        projector.stop()
        runner.join(10)
        server.shutdown()


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            json.loads(response.read())
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


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
            reads.append(collection.count_documents({"kind": {"$exists": False}}))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        report = maintenance.rebuild(projector.log, projector.read_model, projector.history,
                                     stream_accounts(client, live_env), 20,
                                     progress=False)
    finally:
        running.clear()
        thread.join()
    assert reads and min(reads) == len(live), "the live collection was not fully readable during the rebuild"
    assert report.accounts == len(live)
    rebuilt = read_model(mongo_standin.uri, mongo_db)
    # A document folded from its stream names no log entries (``timestamps``) until new events arrive. (The
    # times are left out: the stand-in stores a time given to $set on an existing document as text.)
    fields = ("balance_minor", "balance", "version", "event_ids", "owner", "partition")
    assert {k: tuple(v[f] for f in fields) for k, v in rebuilt.items()} == \
        {k: tuple(v[f] for f in fields) for k, v in live.items()}
    # The rebuild's own collection is gone: only the live one and its transactions are left.
    assert sorted(mongo[mongo_db].list_collection_names()) == [COLLECTION, f"{COLLECTION}_transactions"]
    assert all(projector.read_model.checkpoint(p) is not None for p in range(live_env.partitions)
               if client.xlen(live_env.partition_log(p)))
    mongo.close()


def test_catch_up_applies_what_arrived_during_a_rebuild(client: redis.Redis, live_env: KeySpace,
                                                        mongo_standin: MongoStandIn, mongo_db: str) -> None:
    burst(accounts=3, writers=2, operations=5)
    projector = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db))
    drain(projector)
    ends = {p: projector.log.end(p) for p in range(live_env.partitions)}
    for account_id in ("acct-0", "acct-1", "acct-2"):
        call("deposit", account_id, {"amount": 1})
    model, reader, history = projector.read_model, projector.log, projector.history
    assert maintenance.catch_up(reader, model, history, ends) == 3
    assert maintenance.catch_up(reader, model, history, ends) == 3  # again: recognised, nothing written twice
    assert_read_model_matches(client, live_env, mongo_standin.uri, mongo_db)


def test_the_configured_database_and_collection_receive_the_documents(
        client: redis.Redis, live_env: KeySpace, mongo_standin: MongoStandIn, mongo_db: str) -> None:
    call("create_account", "placed")
    config = settings(mongo_standin.uri, mongo_db, mongodb_collection="elsewhere")
    drain(make_projector(client, live_env, config))
    assert set(read_model(mongo_standin.uri, mongo_db, "elsewhere")) == {"placed"}
    assert read_model(mongo_standin.uri, mongo_db) == {}
    model = MongoReadModel(connect(config), mongo_db, "elsewhere", 3)
    assert len(model.documents()) == 1
    model.ping()


def test_read_model_module_is_the_only_pymongo_user() -> None:
    """The projector's MongoDB adapter (its connection, accounts and transactions) writes the read model; the
    query side's adapter reads it. Nothing else knows pymongo."""
    root = Path(__file__).resolve().parents[2]
    users = {path.relative_to(root).as_posix() for folder in ("shared", "projector", "functions", "gateway")
             for path in (root / folder).rglob("*.py") if "pymongo" in path.read_text()}
    assert users == {"projector/mongo_connection.py", "projector/mongo_read_model.py",
                     "projector/mongo_transactions.py", "shared/mongo_queries.py"}
