"""Bounded partition logs (issue 21, part 1) on a real Redis and the MongoDB stand-in: the trim script's floor
over every group, the projector trimming behind its checkpoint, the append script's cap, and a projector
that comes back to a log capped past its checkpoint re-synchronising the partition from the account
streams; rebuild and verify after trimming agree with the streams."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import redis
from pymongo import MongoClient

from devstack.mongo_standin import MongoStandIn
from projector import maintenance, status, verification
from projector.partition_log import stream_accounts
from projector.runner import Runner
from projector.trimming import LogTrimmer
from shared import runtime
from shared.keys import KeySpace
from shared.redis_store import RedisEventStore
from tests.support.apigw import call
from tests.support.events import history, new_event
from tests.support.readmodel import (
    ProjectorProcess,
    assert_read_model_matches,
    drain,
    group_drained,
    make_projector,
    process_env,
    settings,
)
from tests.support.targets import RedisTarget
from tests.support.waiting import wait_until

pytestmark = pytest.mark.mongo


def _ids(client: redis.Redis, log: str) -> list[str]:
    found: Any = client.xrange(log)
    return [raw.decode() for raw, _ in found]


def _same_partition(keys: KeySpace, partition: int, count: int, stem: str) -> list[str]:
    found = (f"{stem}-{n}" for n in range(100_000) if keys.partition_of(f"{stem}-{n}") == partition)
    return [next(found) for _ in range(count)]


class TestTheTrimScript:
    """``LogTrimmer.trim`` against hand-made groups on one partition log."""

    @pytest.fixture
    def log(self, live_env: KeySpace) -> tuple[redis.Redis, KeySpace, str, list[str]]:
        client = runtime.redis_client()
        store = RedisEventStore(client, live_env, 60)
        accounts = _same_partition(live_env, 0, 10, "trim")
        store.append_many([(a, 0, history(a, 2)) for a in accounts])
        log = live_env.partition_log(0)
        client.set(live_env.lease(0, "projector"), "me|1")
        for group in ("projector", "audit"):
            client.xgroup_create(log, group, id="$")
        return client, live_env, log, _ids(client, log)

    def test_the_floor_is_the_oldest_recorded_checkpoint_and_it_is_kept(self, log: Any) -> None:
        client, keys, name, ids = log
        client.hset(keys.checkpoints(0), "audit", ids[12])
        done = LogTrimmer(client, keys, "projector").trim("me|1", 0, ids[15])
        assert (done.floor, done.removed) == (ids[12], 12)
        assert _ids(client, name) == ids[12:]  # the checkpoint's own entry stays
        assert client.hget(keys.checkpoints(0), "projector") == ids[15].encode()

    def test_a_group_that_recorded_no_checkpoint_holds_everything(self, log: Any) -> None:
        client, keys, name, ids = log
        done = LogTrimmer(client, keys, "projector").trim("me|1", 0, ids[15])
        assert done.floor is None and "audit" in done.held_by and _ids(client, name) == ids

    def test_a_pending_entry_holds_the_trim(self, log: Any) -> None:
        client, keys, name, ids = log
        client.xgroup_setid(name, "audit", ids[4])
        client.xreadgroup("audit", "someone", {name: ">"}, count=1)  # ids[5], never acknowledged
        client.hset(keys.checkpoints(0), "audit", ids[18])
        done = LogTrimmer(client, keys, "projector").trim("me|1", 0, ids[19])
        assert done.floor == ids[5] and _ids(client, name) == ids[5:]

    def test_entries_a_group_has_not_read_are_kept(self, log: Any) -> None:
        client, keys, name, ids = log
        client.xgroup_setid(name, "audit", ids[7])
        client.hset(keys.checkpoints(0), "audit", ids[18])
        assert LogTrimmer(client, keys, "projector").trim("me|1", 0, ids[19]).floor == ids[7]

    def test_without_our_lease_nothing_is_trimmed(self, log: Any) -> None:
        client, keys, name, ids = log
        client.hset(keys.checkpoints(0), "audit", ids[18])
        done = LogTrimmer(client, keys, "projector").trim("someone-else|2", 0, ids[19])
        assert done.floor is None and _ids(client, name) == ids
        assert client.hget(keys.checkpoints(0), "projector") is None


def _step_until(projectors: list[Runner], condition: Callable[[], bool], what: str) -> None:
    def stepped() -> bool:
        for projector in projectors:
            projector.step()
        return condition()

    wait_until(stepped, 30, what, interval=0.05)


def _log_lengths(client: redis.Redis, keys: KeySpace) -> int:
    return sum(int(client.xlen(keys.partition_log(p))) for p in range(keys.partitions))


def test_projectors_trim_the_logs_behind_every_groups_checkpoint(
        live_env: KeySpace, mongo_standin: MongoStandIn, mongo_db: str) -> None:
    client = runtime.redis_client()
    for n in range(12):
        call("create_account", f"t-{n}")
        call("deposit", f"t-{n}", {"amount": "1.00"})
    for partition in range(live_env.partitions):
        client.xgroup_create(live_env.partition_log(partition), "audit", id="0", mkstream=True)
    main = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db))
    drain(main)
    written = _log_lengths(client, live_env)
    for _ in range(40):  # several lease ticks: the audit group, which recorded nothing, holds every entry
        main.step()
    assert _log_lengths(client, live_env) == written and main.health.trimmed == 0
    audit = make_projector(client, live_env, settings(mongo_standin.uri, f"{mongo_db}-audit", group="audit"))
    drain(audit)
    used = [p for p in range(live_env.partitions) if main.read_model.checkpoint(p) is not None
            and main.read_model.checkpoint(p).entry_id != "0-0"]  # type: ignore[union-attr]
    _step_until([main, audit], lambda: _log_lengths(client, live_env) == len(used), "both groups' trims")
    assert main.health.trimmed + audit.health.trimmed == written - len(used)
    for partition in used:  # what is left is each checkpoint's own entry, for the self-check to find
        checkpoint = main.read_model.checkpoint(partition)
        assert checkpoint is not None and _ids(client, live_env.partition_log(partition)) == [checkpoint.entry_id]
    call("deposit", "t-1", {"amount": "2.00"})
    drain(main)
    drain(audit)
    assert_read_model_matches(client, live_env, mongo_standin.uri, mongo_db)
    assert_read_model_matches(client, live_env, mongo_standin.uri, f"{mongo_db}-audit")
    MongoClient(mongo_standin.uri).drop_database(f"{mongo_db}-audit")


def test_a_projector_back_to_a_log_capped_past_its_checkpoint_resynchronises_from_the_streams(
        live_env: KeySpace, mongo_standin: MongoStandIn, mongo_db: str, caplog: pytest.LogCaptureFixture) -> None:
    client = runtime.redis_client()
    accounts = _same_partition(live_env, 3, 20, "capped")
    store = RedisEventStore(client, live_env, 60, log_max_entries=1_000)
    store.append_many([(a, 0, history(a, 3)) for a in accounts])
    projector = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db))
    drain(projector)
    checkpoint = projector.read_model.checkpoint(3)
    assert checkpoint is not None
    # The projector is away; the writes go on, and the cap drops the oldest entries the group never had.
    for round_number in range(110):
        store.append_many([(a, 3 + round_number, [new_event(a, amount=7)]) for a in accounts])
    log = live_env.partition_log(3)
    assert client.xlen(log) < 1_200 and client.xrange(log, checkpoint.entry_id, checkpoint.entry_id) == []
    rows = status.status(projector.log, projector.dead_letters, projector.leases, projector.read_model, 60)
    assert "log trimmed past the read model's checkpoint" in str(rows[3].diverged)
    projector.partitions[3].progress.check_due = 0  # its self-check, as after a restart
    with caplog.at_level(logging.ERROR, logger="ledgerstream.projector"):
        drain(projector)
    assert any("trimmed past the read model's checkpoint" in r.getMessage() for r in caplog.records)
    assert_read_model_matches(client, live_env, mongo_standin.uri, mongo_db)
    rows = status.status(projector.log, projector.dead_letters, projector.leases, projector.read_model, 60)
    assert rows[3].diverged is None


def test_a_wiped_read_model_over_trimmed_logs_is_resynchronised_and_rebuild_and_verify_agree(
        live_env: KeySpace, mongo_standin: MongoStandIn, mongo_db: str) -> None:
    client = runtime.redis_client()
    for n in range(10):
        call("create_account", f"w-{n}")
        for cents in (125, 250):
            call("deposit", f"w-{n}", {"amount": f"{cents / 100:.2f}"})
        call("withdraw", f"w-{n}", {"amount": "0.50"})
    projector = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db))
    drain(projector)
    written = _log_lengths(client, live_env)
    _step_until([projector], lambda: _log_lengths(client, live_env) < written, "the projector's trims")
    MongoClient(mongo_standin.uri).drop_database(mongo_db)
    for partition in projector.partitions.values():
        partition.progress.check_due = 0
    drain(projector)
    assert_read_model_matches(client, live_env, mongo_standin.uri, mongo_db)
    report = maintenance.rebuild(projector.log, projector.read_model, projector.history,
                                 stream_accounts(client, live_env), 20, progress=False)
    assert (report.accounts, report.refused) == (10, 0)
    assert_read_model_matches(client, live_env, mongo_standin.uri, mongo_db)
    checked = verification.verify(live_env, projector.read_model, projector.history,
                                  stream_accounts(client, live_env), progress=False)
    assert checked.ok and checked.accounts == 10, checked.differences


def _matches(client: redis.Redis, keys: KeySpace, uri: str, database: str) -> bool:
    if not group_drained(client, keys, "projector"):
        return False
    try:
        assert_read_model_matches(client, keys, uri, database)
    except AssertionError:
        return False
    return True


def test_a_killed_projector_restarted_after_the_cap_resynchronises_by_itself(
        live_env: KeySpace, redis_target: RedisTarget, mongo_standin: MongoStandIn, mongo_db: str) -> None:
    """The same as a real process: SIGKILLed, the log capped past its checkpoint while it is away, restarted."""
    client = runtime.redis_client()
    accounts = _same_partition(live_env, 5, 20, "killed")
    store = RedisEventStore(client, live_env, 60, log_max_entries=1_000)
    store.append_many([(a, 0, history(a, 2)) for a in accounts])
    env = process_env(live_env, redis_target, mongo_standin.uri, mongo_db, PROJECTOR_LEASE_TTL_SECONDS="2",
                      LOG_LEVEL="WARNING")
    first = ProjectorProcess({**env, "PROJECTOR_NAME": "first"})
    try:
        wait_until(lambda: _matches(client, live_env, mongo_standin.uri, mongo_db), 30, "the first projection")
    finally:
        first.kill()
    for round_number in range(110):
        store.append_many([(a, 2 + round_number, [new_event(a, amount=3)]) for a in accounts])
    second = ProjectorProcess({**env, "PROJECTOR_NAME": "second"})
    try:
        wait_until(lambda: _matches(client, live_env, mongo_standin.uri, mongo_db), 60,
                   "the restarted projector to re-synchronise the capped partition")
        assert second.logged("trimmed past the read model's checkpoint")
        assert "Traceback" not in "".join(second.raw)
    finally:
        second.kill()
