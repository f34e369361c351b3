"""What a client's Idempotency-Key, or a stray document, can do to the operator tools and the projector:
nothing. The reproduction of the hostile-testing report (keys shaped like stream keys made `verify` invent
accounts, `verify --repair` overwrite a checkpoint, and the projector crash-loop), and the same tools faced
with records the old layout already stored, a malformed checkpoint and a document nobody should have written."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pymongo import MongoClient

from devstack.mongo_standin import MongoStandIn
from shared import runtime
from shared.keys import KeySpace
from tests.support.apigw import body_of, call
from tests.support.readmodel import COLLECTION, ProjectorProcess, assert_read_model_matches, group_drained
from tests.support.targets import RedisTarget
from tests.support.waiting import wait_until

pytestmark = pytest.mark.mongo

HOSTILE_KEYS = ("y}:stream:_checkpoint.projector.p7", "x}:stream:ghost", 'w}:stream:{"$gt":""}', "z}:stream:victim")


def _env(keys: KeySpace, target: RedisTarget, mongo_uri: str, database: str) -> dict[str, str]:
    return {**target.env(), "LEDGER_KEY_PREFIX": keys.prefix, "LEDGER_PARTITIONS": str(keys.partitions),
            "MONGODB_URI": mongo_uri, "MONGODB_DATABASE": database,
            "PROJECTOR_LEASE_TTL_SECONDS": "3", "PROJECTOR_HEALTH_PORT": "0", "PROJECTOR_CHECK_INTERVAL_SECONDS": "1",
            "LOG_LEVEL": "INFO"}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "projector", *args], env={**os.environ, **env},
                          capture_output=True, text=True, check=False, timeout=120)


@pytest.fixture
def projectors() -> Iterator[list[ProjectorProcess]]:
    started: list[ProjectorProcess] = []
    yield started
    for process in started:
        process.kill()


def _collection(mongo_uri: str, database: str) -> Any:
    return MongoClient(mongo_uri)[database][COLLECTION]


def _converged(client: redis.Redis, keys: KeySpace, mongo_uri: str, database: str) -> bool:
    try:
        assert_read_model_matches(client, keys, mongo_uri, database)
    except AssertionError:
        return False
    return group_drained(client, keys, "projector")


def _one_line_problem(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout


def test_hostile_idempotency_keys_change_nothing_an_operator_sees_or_does(
        live_env: KeySpace, redis_target: RedisTarget, mongo_standin: MongoStandIn, mongo_db: str,
        projectors: list[ProjectorProcess]) -> None:
    client = runtime.redis_client()
    env = _env(live_env, redis_target, mongo_standin.uri, mongo_db)
    projectors.append(ProjectorProcess(env))
    assert call("create_account", "p1-0")["statusCode"] == 201
    for key in HOSTILE_KEYS:
        answer = call("deposit", "p1-0", {"amount": "0.01"}, headers={"Idempotency-Key": key})
        assert answer["statusCode"] == 200, answer
    # What the old layout stored for such keys, as records written before this change still are:
    tag = live_env.tag(live_env.partition_of("p1-0"))
    for key in HOSTILE_KEYS:
        client.hset(f"{tag}:idem:p1-0:{key}", mapping={"fingerprint": "old", "result": "{}"})
    stray = [k.decode() for k in client.scan_iter(match=f"{{{live_env.prefix}:p*}}:*stream:*")
             if live_env.stream_account(k) is None]
    assert len(stray) == len(HOSTILE_KEYS)  # the planted ones only: the service's own keys are hashed
    wait_until(lambda: _converged(client, live_env, mongo_standin.uri, mongo_db), 60, "the projection")

    collection = _collection(mongo_standin.uri, mongo_db)
    before = sorted((d for d in collection.find({}) if d.get("kind") != "note"), key=lambda d: str(d["_id"]))
    verified = _cli(env, "verify", "--no-progress")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "verified 1 accounts: 0 differ" in verified.stdout
    for phantom in ("ghost", "victim", "_checkpoint", "$gt"):
        assert phantom not in verified.stdout
    repaired = _cli(env, "verify", "--repair", "--no-progress")
    assert repaired.returncode == 0 and "repaired 0" in repaired.stdout, repaired.stdout
    after = sorted((d for d in collection.find({}) if d.get("kind") != "note"), key=lambda d: str(d["_id"]))
    assert [(d["_id"], d.get("entry_id"), d.get("version")) for d in after] == [
        (d["_id"], d.get("entry_id"), d.get("version")) for d in before]

    status = _cli(env, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert projectors[0].process.poll() is None  # still running...
    replay = call("deposit", "p1-0", {"amount": "0.01"}, headers={"Idempotency-Key": HOSTILE_KEYS[0]})
    assert replay["headers"].get("Idempotent-Replayed") == "true"  # hashed records answer their retries
    assert call("create_account", "ghost")["statusCode"] == 201  # ...and projecting, the id 'ghost' included
    wait_until(lambda: _converged(client, live_env, mongo_standin.uri, mongo_db), 60, "the new account's projection")
    assert collection.find_one({"_id": "ghost"})["version"] == 1
    assert not [line for line in projectors[0].lines if line.get("level") == "ERROR"]


def test_a_malformed_checkpoint_is_reported_then_replaced_and_the_partition_reprojected(
        live_env: KeySpace, redis_target: RedisTarget, mongo_standin: MongoStandIn, mongo_db: str,
        projectors: list[ProjectorProcess]) -> None:
    client = runtime.redis_client()
    env = _env(live_env, redis_target, mongo_standin.uri, mongo_db)
    assert call("create_account", "acct")["statusCode"] == 201
    call("deposit", "acct", {"amount": "5.00"})
    projectors.append(ProjectorProcess(env))
    wait_until(lambda: _converged(client, live_env, mongo_standin.uri, mongo_db), 60, "the projection")
    assert projectors[0].terminate() == 0
    partition = live_env.partition_of("acct")
    checkpoint_id = f"_checkpoint.projector.p{partition}"
    collection = _collection(mongo_standin.uri, mongo_db)
    # What the old `verify --repair` wrote over a checkpoint: an account-shaped document under its id.
    collection.replace_one({"_id": checkpoint_id}, {"_id": checkpoint_id, "balance_minor": 0, "version": 0,
                                                    "balance": "0.00"})
    status = _cli(env, "status")
    assert status.returncode == 1
    _one_line_problem(status)
    [row] = [line for line in status.stdout.splitlines() if line.split()[:1] == [str(partition)]]
    assert "is not a checkpoint document" in row

    projectors.append(ProjectorProcess(env))
    call("deposit", "acct", {"amount": "1.00"})
    wait_until(lambda: _converged(client, live_env, mongo_standin.uri, mongo_db)
               and _cli(env, "status").returncode == 0, 60, "the partition to be re-projected")
    assert projectors[1].process.poll() is None
    assert projectors[1].logged("is not a checkpoint document")[0]["level"] == "ERROR"
    fixed = collection.find_one({"_id": checkpoint_id})
    assert fixed["kind"] == "checkpoint" and "balance_minor" not in fixed
    assert collection.find_one({"_id": "acct"})["balance"] == "6.00"


def test_documents_that_are_not_accounts_are_reported_never_acted_on(
        live_env: KeySpace, redis_target: RedisTarget, mongo_standin: MongoStandIn, mongo_db: str,
        projectors: list[ProjectorProcess]) -> None:
    client = runtime.redis_client()
    env = _env(live_env, redis_target, mongo_standin.uri, mongo_db)
    assert call("create_account", "acct")["statusCode"] == 201
    projectors.append(ProjectorProcess(env))
    wait_until(lambda: _converged(client, live_env, mongo_standin.uri, mongo_db), 60, "the projection")
    collection = _collection(mongo_standin.uri, mongo_db)
    collection.insert_one({"_id": '{"$gt":""}', "balance_minor": "lots", "version": 1})
    for command in (["verify", "--no-progress"], ["verify", "--repair", "--no-progress"]):
        result = _cli(env, *command)
        assert result.returncode == 1, result.stdout
        _one_line_problem(result)
        assert "is not an account document the projector wrote; left as it is" in result.stdout
    assert collection.find_one({"_id": '{"$gt":""}'}) is not None  # shown, not deleted on a guess
    shown = _cli(env, "show", "a:b")
    assert shown.returncode == 2 and "is not an account id" in shown.stderr
    _one_line_problem(shown)
    # An account's own document gone bad is repaired from its stream by the running projector.
    collection.update_one({"_id": "acct"}, {"$set": {"balance_minor": "lots"}})
    assert body_of(call("deposit", "acct", {"amount": "2.00"}))["funds"] == "2.00"
    wait_until(lambda: (collection.find_one({"_id": "acct"}) or {}).get("balance_minor") == 200, 30,
               "the account's document to be repaired from its stream")
    assert projectors[0].process.poll() is None
