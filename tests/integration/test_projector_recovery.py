"""A read model that knows where it is: it recovers by itself when Redis goes back in time (a restored AOF),
when MongoDB loses the collection, and when a Redis node is out of reach; ``verify`` finds and repairs
what no loop saw."""

from __future__ import annotations

import logging
import shutil
import threading
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from pymongo import MongoClient

from devstack.mongo_standin import MongoStandIn
from devstack.redis_cluster import LocalCluster
from devstack.redis_server import RedisProcess
from projector import status, verification
from projector.partition_log import stream_accounts
from projector.runner import Runner
from projector.store_identity import ForeignStore
from projector.wiring import assemble
from shared import runtime
from shared.keys import KeySpace
from tests.support.apigw import body_of, call
from tests.support.environment import wired
from tests.support.readmodel import (
    COLLECTION,
    assert_read_model_matches,
    drain,
    make_projector,
    read_model,
    settings,
)
from tests.support.targets import ids_on_every_master
from tests.support.waiting import wait_until

pytestmark = pytest.mark.mongo


class Recorder(logging.Handler):
    """The projector's log records, as an operator's log pipeline would receive them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def errors(self) -> str:
        return "\n".join(r.getMessage() for r in self.records if r.levelno >= logging.ERROR)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    handler = Recorder()
    logger = logging.getLogger("ledgerstream.projector")
    logger.addHandler(handler)
    saved = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


class Running:
    """A projector running in a thread of this process."""

    def __init__(self, projector: Runner) -> None:
        self.projector = projector
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.projector.run()
        except Exception as exc:  # what made it stop, for the test to look at
            self.error = exc

    def stop(self) -> None:
        self.projector.stop()
        self.thread.join(15)
        assert not self.thread.is_alive()


def _deposits(account_id: str, amount: int) -> bool:
    return bool(call("deposit", account_id, {"amount": amount})["statusCode"] == 200)


def _converged(client: redis.Redis, keys: KeySpace, mongo_uri: str, database: str) -> bool:
    try:
        assert_read_model_matches(client, keys, mongo_uri, database)
    except AssertionError:
        return False
    return True


@pytest.mark.slow
def test_a_redis_rolled_back_to_an_older_aof_is_repaired_and_the_repair_is_logged(
        tmp_path: Path, mongo_standin: MongoStandIn, mongo_db: str, recorder: Recorder) -> None:
    server = RedisProcess().start(extra_args=("--appendonly", "yes", "--appendfsync", "always"))
    prefix = f"t{uuid.uuid4().hex[:8]}"
    keys = KeySpace(prefix, 4)
    try:
        with wired(server.url, prefix, 4, REDIS_TIMEOUT_SECONDS="0.5"):
            client = runtime.redis_client()
            running = Running(make_projector(client, keys, settings(mongo_standin.uri, mongo_db)))
            try:
                for n in range(8):
                    call("create_account", f"acct-{n}")
                    call("deposit", f"acct-{n}", {"amount": 10})
                wait_until(lambda: _converged(client, keys, mongo_standin.uri, mongo_db), 30, "the first writes")
                backup = tmp_path / "aof-copy"
                shutil.copytree(server.directory / "appendonlydir", backup)  # every acknowledged write is in it
                for n in range(4):  # acknowledged after the copy: a power cut will take these away
                    call("deposit", f"acct-{n}", {"amount": 5})
                call("create_account", "late")
                wait_until(lambda: _converged(client, keys, mongo_standin.uri, mongo_db), 30, "the later writes")

                server.kill()
                shutil.rmtree(server.directory / "appendonlydir")
                shutil.copytree(backup, server.directory / "appendonlydir")
                server.start()  # back one "second" in time: versions 3 of acct-0..3 will be handed out again
                for n in range(4):
                    wait_until(partial(_deposits, f"acct-{n}", 7), 15, "the service to write again")
                call("deposit", "acct-5", {"amount": 1})
                assert body_of(call("get_account", "acct-0"))["funds"] == "17.00"
                wait_until(lambda: _converged(client, keys, mongo_standin.uri, mongo_db), 30,
                           "the read model to equal the restored streams", interval=0.2)
                assert "late" not in read_model(mongo_standin.uri, mongo_db)
            finally:
                running.stop()
    finally:
        server.stop()
    errors = recorder.errors()
    for account_id in ("acct-0", "acct-1", "acct-2", "acct-3", "late"):
        assert account_id in errors, f"the repair of {account_id} was not logged:\n{errors}"


def test_a_wiped_read_model_is_reprojected_and_status_never_calls_it_healthy_meanwhile(
        live_env: KeySpace, mongo_standin: MongoStandIn, mongo_db: str) -> None:
    client = runtime.redis_client()
    for n in range(12):
        call("create_account", f"acct-{n}")
        for _ in range(5):
            call("deposit", f"acct-{n}", {"amount": 2})
    config = settings(mongo_standin.uri, mongo_db, check_interval_seconds=1, batch_size=5)
    running = Running(make_projector(client, live_env, config))
    observer = assemble(client, live_env, config)
    try:
        wait_until(lambda: _converged(client, live_env, mongo_standin.uri, mongo_db), 30, "the first projection")
        MongoClient(mongo_standin.uri)[mongo_db].drop_collection(COLLECTION)
        healthy_while_wrong = []

        def healthy_and_complete() -> bool:
            rows = status.status(observer.log, observer.dead_letters, observer.leases, observer.model,
                                 config.stall_seconds)
            healthy = all(not row.problems and row.lag == 0 for row in rows)
            complete = _converged(client, live_env, mongo_standin.uri, mongo_db)
            if healthy and not complete:
                healthy_while_wrong.append(status.render(rows, config.group))
            return healthy and complete

        wait_until(healthy_and_complete, 30, "the read model to be re-projected", interval=0.02)
        assert not healthy_while_wrong, healthy_while_wrong[0]
    finally:
        running.stop()


def test_verify_finds_a_corrupted_document_and_repair_fixes_it(
        live_env: KeySpace, mongo_standin: MongoStandIn, mongo_db: str) -> None:
    client = runtime.redis_client()
    for n in range(5):
        call("create_account", f"acct-{n}")
        call("deposit", f"acct-{n}", {"amount": 3})
    projector = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db))
    drain(projector)
    collection: Any = MongoClient(mongo_standin.uri)[mongo_db][COLLECTION]
    collection.update_one({"_id": "acct-2"}, {"$set": {"balance_minor": 999}})
    collection.delete_one({"_id": "acct-4"})
    collection.insert_one({"_id": "ghost", "version": 1, "balance_minor": 5})

    def check(repair: bool) -> verification.VerifyReport:
        return verification.verify(live_env, projector.read_model, projector.history,
                                  stream_accounts(client, live_env), repair=repair, progress=False)

    found = check(repair=False)
    assert not found.ok and found.accounts == 5
    assert sorted(line.split(":")[0] for line in found.differences) == ["acct-2", "acct-4", "ghost"]
    assert found.stream_total == 1500 and found.model_total == 1500 - 300 + 999 - 300 + 5
    repaired = check(repair=True)
    assert sorted(repaired.repaired) == ["acct-2", "acct-4", "ghost"]
    assert check(repair=False).ok
    assert_read_model_matches(client, live_env, mongo_standin.uri, mongo_db)


def test_a_vanished_group_is_recreated_but_a_redis_that_lost_its_data_stops_the_projector(
        mongo_standin: MongoStandIn, mongo_db: str, capfd: pytest.CaptureFixture[str]) -> None:
    server = RedisProcess().start()
    prefix = f"t{uuid.uuid4().hex[:8]}"
    keys = KeySpace(prefix, 4)
    try:
        with wired(server.url, prefix, 4, REDIS_TIMEOUT_SECONDS="0.5"):
            client = runtime.redis_client()
            call("create_account", "before")
            running = Running(make_projector(client, keys, settings(mongo_standin.uri, mongo_db)))
            try:
                wait_until(lambda: "before" in read_model(mongo_standin.uri, mongo_db), 20, "the first event")
                # Its consumer group destroyed by hand: recreated, and the partition read again.
                log_key = keys.partition_log(keys.partition_of("middle"))
                client.xgroup_destroy(log_key, "projector")
                call("create_account", "middle")
                wait_until(lambda: "middle" in read_model(mongo_standin.uri, mongo_db), 20, "the recreated group")
                # Redis back on the same port, empty (no persistence): not the event store the read model
                # came from. The projector stops rather than "repair" the read model to an empty store.
                server.stop()
                wait_until(lambda: not running.projector.health.redis_up, 20, "the projector to see the outage")
                server.start()
                wait_until(lambda: call("create_account", "after")["statusCode"] == 201, 20, "Redis to be back")
                wait_until(lambda: not running.thread.is_alive(), 20, "the projector to stop")
                assert {"before", "middle"} <= set(read_model(mongo_standin.uri, mongo_db))
                assert "after" not in read_model(mongo_standin.uri, mongo_db)
                assert isinstance(running.error, ForeignStore) and "no store identity" in running.error.detail
                assert "changed under the projector" in capfd.readouterr().err  # the ERROR line
            finally:
                running.stop()
    finally:
        server.stop()


@pytest.mark.slow
def test_a_cluster_node_out_of_reach_stalls_only_its_partitions(mongo_standin: MongoStandIn, mongo_db: str) -> None:
    cluster = LocalCluster(masters=3, node_timeout_ms=1000,
                           extra_args=("--appendonly", "yes", "--appendfsync", "always", "--save", "")).start()
    prefix = f"t{uuid.uuid4().hex[:8]}"
    keys = KeySpace(prefix, 8)
    try:
        with wired(cluster.url, prefix, 8, REDIS_CLUSTER="true", REDIS_CLUSTER_NODES=cluster.nodes_setting,
                   REDIS_TIMEOUT_SECONDS="0.5"):
            client: Any = runtime.redis_client()
            ids = ids_on_every_master(client, keys)
            for account_id in ids:
                call("create_account", account_id)
            running = Running(make_projector(client, keys, settings(mongo_standin.uri, mongo_db)))
            try:
                wait_until(lambda: set(ids) <= set(read_model(mongo_standin.uri, mongo_db)), 30, "the creates")
                down, *up = ids
                victim = cluster.node_at(client.get_node_from_key(keys.stream(down)).name)
                cluster.kill(victim)
                for account_id in up:
                    assert call("deposit", account_id, {"amount": 4})["statusCode"] == 200
                wait_until(lambda: all(read_model(mongo_standin.uri, mongo_db)[a]["version"] == 2 for a in up), 30,
                           "the other masters' partitions to keep flowing")
                cluster.restart(victim)
                cluster.wait_ok()
                wait_until(lambda: call("deposit", down, {"amount": 4})["statusCode"] == 200, 30, "the node back")
                wait_until(lambda: _converged(client, keys, mongo_standin.uri, mongo_db), 30, "convergence")
            finally:
                running.stop()
    finally:
        cluster.stop()
