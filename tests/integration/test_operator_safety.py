"""The operator's tools cannot hurt the data: a repair refuses a Redis that is not the read model's event store,
a running projector stops when its Redis changes under it, out-of-range partitions are refused at once, and
every refusal or failure is one line naming what to do, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pymongo import MongoClient

from devstack.mongo_standin import MongoStandIn
from devstack.redis_server import RedisProcess
from projector.store_identity import ForeignStore
from shared import runtime
from shared.keys import KeySpace
from tests.support.apigw import call
from tests.support.memory_read_model import InMemoryReadModel
from tests.support.readmodel import drain, make_projector, read_model, settings
from tests.support.targets import RedisTarget

pytestmark = pytest.mark.usefixtures("live_env")


def _env(keys: KeySpace, target: RedisTarget, mongo_uri: str, database: str, **extra: str) -> dict[str, str]:
    return {**target.env(), "LEDGER_KEY_PREFIX": keys.prefix, "LEDGER_PARTITIONS": str(keys.partitions),
            "MONGODB_URI": mongo_uri, "MONGODB_DATABASE": database, "PROJECTOR_HEALTH_PORT": "0",
            "PROJECTOR_LEASE_TTL_SECONDS": "3", **extra}


def _cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "projector", *args], env={**os.environ, **env},
                          capture_output=True, text=True, check=False, timeout=timeout)


@pytest.fixture
def other_redis() -> Iterator[RedisProcess]:
    """Another, empty Redis: what a second terminal without the right REDIS_URL reaches."""
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture
def projected(live_env: KeySpace, redis_target: RedisTarget, mongo_standin: MongoStandIn,
              mongo_db: str) -> dict[str, str]:
    """alice, projected by a projector that named the event store; the CLI's environment for it."""
    call("create_account", "alice")
    call("deposit", "alice", {"amount": "12.34"})
    projector = make_projector(runtime.redis_client(), live_env, settings(mongo_standin.uri, mongo_db))
    drain(projector)
    projector.shutdown()
    return _env(live_env, redis_target, mongo_standin.uri, mongo_db)


@pytest.mark.parametrize("command", [["parked", "list"], ["parked", "replay"]])
@pytest.mark.parametrize("partition", ["99", "16", "-1"])
def test_a_partition_that_does_not_exist_is_refused_at_once(command: list[str], partition: str,
                                                            projected: dict[str, str]) -> None:
    result = _cli(projected, *command, "--partition", partition, timeout=30)
    assert result.returncode == 2, result.stderr
    assert f"--partition {partition} does not exist: partitions are 0 to 7" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_command_says_which_stores_it_talks_to(projected: dict[str, str], mongo_db: str) -> None:
    shown = _cli(projected, "show", "alice")
    where = shown.stderr.splitlines()[0]
    assert where.startswith("projector: Redis ") and f"{mongo_db}.accountCollection" in where
    assert "@" not in where  # never a password from a URL


def test_a_repair_against_another_redis_refuses_and_deletes_nothing(
        projected: dict[str, str], other_redis: RedisProcess, mongo_standin: MongoStandIn, mongo_db: str) -> None:
    foreign = {**projected, "REDIS_URL": other_redis.url, "REDIS_CLUSTER": "false", "REDIS_CLUSTER_NODES": ""}
    status = _cli(foreign, "status")
    assert status.returncode == 1 and "this Redis has no store identity" in status.stdout
    for command in (["verify", "--repair", "--no-progress"], ["rebuild", "--no-progress"], ["parked", "replay"],
                    ["run"]):
        refused = _cli(foreign, *command)
        assert refused.returncode == 2, (command, refused.stdout, refused.stderr)
        assert "no store identity" in refused.stderr and "rebuild --adopt-store" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert read_model(mongo_standin.uri, mongo_db)["alice"]["balance"] == "12.34"
    # A Redis with an identity of its own is refused the same way, naming both.
    named = redis.Redis.from_url(other_redis.url)
    named.set(KeySpace(projected["LEDGER_KEY_PREFIX"], 8).store_identity(), "other-store")
    mismatch = _cli(foreign, "verify", "--repair", "--no-progress")
    assert mismatch.returncode == 2 and "this Redis is event store other-store" in mismatch.stderr
    assert read_model(mongo_standin.uri, mongo_db)["alice"]["balance"] == "12.34"
    # Giving the read model to the other store is a deliberate, separate command.
    adopted = _cli(foreign, "rebuild", "--adopt-store", "--no-progress")
    assert adopted.returncode == 0 and "now belongs to event store other-store" in adopted.stdout
    assert "alice" not in read_model(mongo_standin.uri, mongo_db)
    assert _cli(projected, "verify", "--repair", "--no-progress").returncode == 2  # now the first is foreign


def test_a_repair_refuses_an_empty_event_store_even_when_named(
        projected: dict[str, str], other_redis: RedisProcess, mongo_standin: MongoStandIn, mongo_db: str) -> None:
    keys = KeySpace(projected["LEDGER_KEY_PREFIX"], 8)
    ours = runtime.redis_client().get(keys.store_identity())
    redis.Redis.from_url(other_redis.url).set(keys.store_identity(), ours or b"")  # a copied key, no data
    foreign = {**projected, "REDIS_URL": other_redis.url, "REDIS_CLUSTER": "false", "REDIS_CLUSTER_NODES": ""}
    refused = _cli(foreign, "verify", "--repair", "--no-progress")
    assert refused.returncode == 2 and "holds no account stream at all" in refused.stderr
    assert "alice" in read_model(mongo_standin.uri, mongo_db)


def test_a_running_projector_stops_when_its_redis_loses_its_identity(live_env: KeySpace) -> None:
    call("create_account", "bob")
    model = InMemoryReadModel()
    projector = make_projector(runtime.redis_client(), live_env, settings("mongodb://unused", "unused"), model=model)
    drain(projector)
    runtime.redis_client().delete(live_env.store_identity())  # Redis restarted without its data
    call("create_account", "carol")
    projector._next_tick = 0.0  # the identity is checked on every lease tick
    with pytest.raises(ForeignStore, match="changed under the projector"):
        projector.step()
    assert set(model.documents()) == {"bob"}
    projector.shutdown()


def test_status_is_not_ok_while_the_last_verify_found_differences(
        projected: dict[str, str], mongo_standin: MongoStandIn, mongo_db: str) -> None:
    client: MongoClient[dict[str, Any]]
    with MongoClient(mongo_standin.uri) as client:
        client[mongo_db]["accountCollection"].update_one({"_id": "alice"}, {"$set": {"balance_minor": 1}})
    assert _cli(projected, "status").returncode == 0  # the checkpoints cannot see it
    assert _cli(projected, "verify", "--no-progress").returncode == 1
    status = _cli(projected, "status")
    assert status.returncode == 1 and "1 differed" in status.stdout and "alice: balance" in status.stdout
    assert _cli(projected, "verify", "--repair", "--no-progress").returncode == 0
    assert _cli(projected, "status").returncode == 0


def test_replay_says_when_there_is_nothing_or_no_such_id(projected: dict[str, str]) -> None:
    nothing = _cli(projected, "parked", "replay")
    assert nothing.returncode == 0 and nothing.stdout.strip() == "nothing parked"
    unknown = _cli(projected, "parked", "replay", "--id", "nope")
    assert unknown.returncode == 1 and "no parked entry 'nope'" in unknown.stderr


def test_show_refuses_an_invalid_id_and_prints_dates_alike(projected: dict[str, str]) -> None:
    invalid = _cli(projected, "show", "a:b")
    assert invalid.returncode == 2 and "is not an account id" in invalid.stderr
    shown = _cli(projected, "show", "alice").stdout
    dates = [line.split('"')[3] for line in shown.splitlines() if '"created_at"' in line or '"updated_at"' in line]
    assert len(dates) == 2 and all(d.endswith("Z") and "+" not in d for d in dates), dates


def test_a_second_projector_on_a_busy_health_port_says_so_in_one_line(projected: dict[str, str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _cli({**projected, "PROJECTOR_HEALTH_BIND": "127.0.0.1", "PROJECTOR_HEALTH_PORT": str(port)}, "run")
    assert result.returncode == 2, result.stderr
    assert f"cannot serve /healthz on 127.0.0.1:{port}" in result.stderr and "PROJECTOR_HEALTH_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_verify_repair_help_says_it_deletes() -> None:
    helped = subprocess.run([sys.executable, "-m", "projector", "verify", "--help"], capture_output=True, text=True,
                            check=False, timeout=30)
    assert "delete account documents that have no stream" in " ".join(helped.stdout.split())
    assert "no progress bar" in helped.stdout


def test_the_tests_cleanup_pattern_finds_every_kind_of_key(redis_client: redis.Redis, live_env: KeySpace) -> None:
    """The README promises every test deletes its keys: the pattern the fixtures delete by must find the
    partition logs and the global keys too, not only ``{…}:kind:id`` keys."""
    account = live_env.account("alice")
    made = [account.stream, account.version, account.snapshot, live_env.idempotency("alice", "k1"),
            live_env.partition_log(1), live_env.sync(1), live_env.lease(1, "projector"),
            live_env.lease_token(1, "projector"), live_env.parked(1, "projector"),
            live_env.quarantine(1, "projector"), live_env.projector_members("projector"), live_env.store_identity()]
    for key in made:
        redis_client.set(key, "1")
    found = {k.decode() for k in redis_client.scan_iter(match=live_env.every_key(), count=1000)}
    assert set(made) <= found
    other = KeySpace(live_env.prefix + "x", 8)
    redis_client.set(other.partition_log(1), "1")
    try:
        assert other.partition_log(1) not in {
            k.decode() for k in redis_client.scan_iter(match=live_env.every_key(), count=1000)}
    finally:
        redis_client.delete(other.partition_log(1))
