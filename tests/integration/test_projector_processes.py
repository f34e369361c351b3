"""Projector processes as they are run: restarted, several replicas sharing partitions, one killed, a rolled
one with a new name, and the command line."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from devstack.mongo_standin import MongoStandIn
from devstack.redis_server import free_port
from shared import runtime
from shared.keys import KeySpace
from tests.support.apigw import call
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


def _env(keys: KeySpace, target: RedisTarget, mongo_uri: str, database: str, **extra: str) -> dict[str, str]:
    return process_env(keys, target, mongo_uri, database, **{
        "PROJECTOR_LEASE_TTL_SECONDS": "3", "PROJECTOR_CHECK_INTERVAL_SECONDS": "2", "LOG_LEVEL": "INFO", **extra})


@pytest.fixture
def processes() -> Iterator[list[ProjectorProcess]]:
    started: list[ProjectorProcess] = []
    yield started
    for process in started:
        process.kill()


def _converged(client: redis.Redis, keys: KeySpace, mongo_uri: str, database: str) -> bool:
    if not group_drained(client, keys, "projector"):
        return False
    try:
        assert_read_model_matches(client, keys, mongo_uri, database)
    except AssertionError:
        return False
    return True


def _same_partition(keys: KeySpace, account_id: str, stem: str) -> str:
    partition = keys.partition_of(account_id)
    return next(f"{stem}-{n}" for n in range(10_000) if keys.partition_of(f"{stem}-{n}") == partition)


@pytest.mark.slow
@pytest.mark.parametrize("batch", ["500", "20"])
def test_the_livelock_reproduction_converges_within_10_s_of_a_restart(
        live_env: KeySpace, redis_target: RedisTarget, mongo_standin: MongoStandIn, mongo_db: str,
        processes: list[ProjectorProcess], batch: str) -> None:
    client = runtime.redis_client()
    call("create_account", "stuck")
    log = live_env.partition_log(live_env.partition_of("stuck"))
    client.xgroup_create(log, "projector", id="0", mkstream=True)
    client.xreadgroup("projector", "pod-dead", {log: ">"}, count=1)  # reads one early entry, never acknowledges
    for _ in range(520):
        call("deposit", "stuck", {"amount": 1})
    bystander = _same_partition(live_env, "stuck", "bystander")
    call("create_account", bystander)
    for _ in range(7):
        call("deposit", bystander, {"amount": 2})
    env = _env(live_env, redis_target, mongo_standin.uri, mongo_db, PROJECTOR_NAME="pod-b",
               PROJECTOR_BATCH_SIZE=batch)
    # The first run reads entries but cannot write them (its MongoDB is away), so it is stopped holding
    # pending entries: the restart has to take them over, not find everything done.
    first = ProjectorProcess({**env, "MONGODB_URI": f"mongodb://127.0.0.1:{free_port()}",
                              "MONGODB_TIMEOUT_SECONDS": "0.3"})
    processes.append(first)
    wait_until(lambda: first.logged("mongodb unavailable"), 30, "the first projector to hold entries it read")
    assert first.terminate() == 0
    assert not _converged(client, live_env, mongo_standin.uri, mongo_db)
    restarted = time.monotonic()
    second = ProjectorProcess(env)
    processes.append(second)
    wait_until(lambda: _converged(client, live_env, mongo_standin.uri, mongo_db), 10,
               "the read model to converge after the restart", interval=0.2)
    assert time.monotonic() - restarted <= 10
    assert second.terminate() == 0
    output = "".join(first.raw + second.raw)
    assert "Traceback" not in output and "OverflowError" not in output
    consumers = {c["name"] for c in client.xinfo_consumers(log, "projector")}
    assert b"pod-dead" not in consumers


def _lease_owners(client: redis.Redis, keys: KeySpace) -> dict[int, str | None]:
    owners: dict[int, str | None] = {}
    for partition in range(keys.partitions):
        value: Any = client.get(keys.lease(partition, "projector"))
        owners[partition] = value.decode().rpartition("|")[0] if value else None
    return owners


class LeaseSampler:
    """Watches the lease keys from outside: how long each partition went without an owner."""

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self.client, self.keys = client, keys
        self.longest_unowned = dict.fromkeys(range(keys.partitions), 0.0)
        self.latest: dict[int, str | None] = {}
        self._since: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LeaseSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            now = time.monotonic()
            self.latest = _lease_owners(self.client, self.keys)
            for partition, owner in self.latest.items():
                if owner is None:
                    since = self._since.setdefault(partition, now)
                    self.longest_unowned[partition] = max(self.longest_unowned[partition], now - since)
                else:
                    self._since.pop(partition, None)


def _shares(owners: dict[int, str | None]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for owner in owners.values():
        if owner is not None:
            counts[owner] += 1
    return dict(counts)


def _ownership_intervals(replicas: dict[str, ProjectorProcess],
                         killed: dict[str, datetime]) -> list[tuple[int, datetime, datetime, str]]:
    """(partition, from, to, replica) as the replicas logged them: 'took' after taking, 'handing back'
    before releasing, so each logged interval lies inside the real one."""
    intervals = []
    for name, process in replicas.items():
        opened: dict[int, datetime] = {}
        for line in process.lines:
            if "lease" not in line:
                continue
            at = datetime.fromisoformat(line["time"])
            if line["lease"] == "acquired":
                opened[line["partition"]] = at
            elif line["partition"] in opened:
                intervals.append((line["partition"], opened.pop(line["partition"]), at, name))
        end = killed.get(name, datetime.max.replace(tzinfo=UTC))
        intervals += [(partition, start, end, name) for partition, start in opened.items()]
    return intervals


@pytest.mark.slow
def test_three_replicas_share_the_partitions_and_take_over_from_a_killed_one(
        live_env: KeySpace, redis_target: RedisTarget, mongo_standin: MongoStandIn, mongo_db: str,
        processes: list[ProjectorProcess], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_PARTITIONS", "16")
    runtime.reset()
    keys = KeySpace(live_env.prefix, 16)
    client = runtime.redis_client()
    ttl_s = 5.0
    replicas: dict[str, ProjectorProcess] = {}

    def start(name: str) -> None:
        replicas[name] = ProjectorProcess(_env(keys, redis_target, mongo_standin.uri, mongo_db, PROJECTOR_NAME=name,
                                               PROJECTOR_LEASE_TTL_SECONDS=str(ttl_s)))
        processes.append(replicas[name])

    ids = [f"acct-{n}" for n in range(30)]
    for account_id in ids:
        call("create_account", account_id)

    def load(seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            for account_id in ids:
                call("deposit", account_id, {"amount": 1})

    with LeaseSampler(client, keys) as sampler:
        for name in ("r1", "r2", "r3"):
            start(name)
        wait_until(lambda: sorted(_shares(sampler.latest).values()) == [5, 5, 6], 30,
                   "three replicas to split 16 partitions 5/5/6")
        writers = [threading.Thread(target=load, args=(3.0,)) for _ in range(4)]
        for writer in writers:
            writer.start()
        victim = next(o for o in _shares(sampler.latest) if o.startswith("r2-"))
        replicas["r2"].kill()
        killed_at, killed_wall = time.monotonic(), datetime.now(UTC)
        wait_until(lambda: all(o is not None and o != victim for o in sampler.latest.values()), ttl_s + 10,
                   "the killed replica's partitions to be taken over")
        taken_over = time.monotonic() - killed_at
        for writer in writers:
            writer.join()
        start("r4")  # a rolled pod with a new name joins
        wait_until(lambda: sorted(_shares(sampler.latest).values()) == [5, 5, 6]
                   and not any(o.startswith("r2-") for o in _shares(sampler.latest)), 30,
                   "the replicas to rebalance with the newcomer")
        wait_until(lambda: _converged(client, keys, mongo_standin.uri, mongo_db), 60,
                   "the read model to converge", interval=0.2)
    assert taken_over <= ttl_s + 2, f"takeover took {taken_over:.1f}s"
    assert max(sampler.longest_unowned.values()) <= ttl_s
    live_owners = set(_shares(_lease_owners(client, keys)))
    for partition in range(keys.partitions):
        consumers = {c["name"].decode() for c in client.xinfo_consumers(keys.partition_log(partition), "projector")}
        assert consumers <= live_owners, f"partition {partition} keeps consumers {consumers - live_owners}"
    for name in ("r1", "r3", "r4"):
        assert replicas[name].terminate() < 1
    intervals = sorted(_ownership_intervals(replicas, {"r2": killed_wall}))
    for (p1, _, end, a), (p2, start_b, _, b) in itertools.pairwise(intervals):
        if p1 == p2:
            assert start_b >= end, f"partition {p1} owned by {a} and {b} at once"


@pytest.mark.slow
def test_sigkill_mid_batch_then_restart_converges(live_env: KeySpace, redis_target: RedisTarget,
                                                  mongo_standin: MongoStandIn, mongo_db: str,
                                                  processes: list[ProjectorProcess]) -> None:
    client = runtime.redis_client()
    ids = [f"acct-{n}" for n in range(30)]
    for account_id in ids:
        call("create_account", account_id)
    for round_ in range(40):
        for account_id in ids:
            call("deposit" if round_ % 3 else "withdraw", account_id, {"amount": 1} if round_ % 3 else {"amount": 0.5})
    env = _env(live_env, redis_target, mongo_standin.uri, mongo_db, PROJECTOR_BATCH_SIZE="1")
    first = ProjectorProcess(env)
    processes.append(first)
    wait_until(lambda: len(first.logged("batch")) >= 3, 30, "a few batches to land", interval=0.005)
    first.process.send_signal(signal.SIGSTOP)  # frozen mid-work at once, then killed: a crash, not a shutdown
    first.kill()
    assert not group_drained(client, live_env, "projector"), "killed too late to prove anything"
    second = ProjectorProcess(env)  # a new identity: it takes over once the dead one's leases expire
    processes.append(second)
    wait_until(lambda: _converged(client, live_env, mongo_standin.uri, mongo_db), 60, "the read model to converge",
               interval=0.2)
    started = time.monotonic()
    assert second.terminate() == 0
    assert time.monotonic() - started < 5


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "projector", *args], env={**os.environ, **env},
                          capture_output=True, text=True, check=False, timeout=120)


def test_the_command_line(live_env: KeySpace, redis_target: RedisTarget, mongo_standin: MongoStandIn,
                          mongo_db: str) -> None:
    client = runtime.redis_client()
    call("create_account", "acct")
    env = _env(live_env, redis_target, mongo_standin.uri, mongo_db)
    before = _cli(env, "status")
    assert before.returncode == 1, before.stdout + before.stderr  # nobody projects, and there is work
    assert "no projector owns it" in before.stdout
    projector = make_projector(client, live_env, settings(mongo_standin.uri, mongo_db))
    drain(projector)
    healthy = _cli(env, "status")
    assert healthy.returncode == 0, healthy.stdout
    memory = [line for line in healthy.stdout.splitlines() if line.startswith("redis memory ")]
    lines = [line for line in healthy.stdout.splitlines() if line not in memory]
    assert len(memory) == (3 if redis_target.topology == "cluster" else 1)  # one line per master
    assert lines[0] == "group 'projector'" and len(lines) == 2 + live_env.partitions + 2 + 1
    assert "(the read model's own)" in lines[-3] and lines[-2] == "verify: never run on this read model"
    assert f"key prefix '{live_env.prefix}'" in healthy.stderr and f"{mongo_db}.accountCollection" in healthy.stderr
    row = lines[2 + live_env.partition_of("acct")].split()
    assert row[0] == str(live_env.partition_of("acct")) and row[1].startswith("test-") and row[2] == "0"
    assert lines[-1].endswith("all partitions ok")
    shown = _cli(env, "show", "acct")
    assert shown.returncode == 0 and '"balance": "0.00"' in shown.stdout
    assert _cli(env, "show", "nobody").returncode == 1
    assert _cli(env, "parked", "list").stdout.strip().endswith("0 parked")
    rebuilt = _cli(env, "rebuild", "--no-progress")
    assert rebuilt.returncode == 0 and rebuilt.stdout.startswith("rebuilt 1 accounts from 1 events")
    verified = _cli(env, "verify", "--no-progress")
    assert verified.returncode == 0 and "verified 1 accounts: 0 differ" in verified.stdout
    assert "last verify " in _cli(env, "status").stdout
    bad = _cli({**env, "PROJECTOR_BATCH_SIZE": "lots"}, "status")
    assert bad.returncode == 2 and "PROJECTOR_BATCH_SIZE" in bad.stderr and "Traceback" not in bad.stderr
    helped = _cli(env, "--help")
    assert helped.returncode == 0 and "``" not in helped.stdout and "verify" in helped.stdout
    projector.shutdown()


@pytest.mark.parametrize(("command", "needs"), [
    (["status"], {"Redis", "MongoDB"}), (["verify", "--no-progress"], {"Redis", "MongoDB"}),
    (["show", "acct"], {"MongoDB"}), (["parked", "list"], {"Redis"}),
])
def test_a_command_whose_server_is_down_says_so_in_one_line(
        command: list[str], needs: set[str], live_env: KeySpace, redis_target: RedisTarget,
        mongo_standin: MongoStandIn, mongo_db: str) -> None:
    env = _env(live_env, redis_target, mongo_standin.uri, mongo_db, REDIS_TIMEOUT_SECONDS="0.3",
               MONGODB_TIMEOUT_SECONDS="0.3")
    dead = f"127.0.0.1:{free_port()}"
    for server in sorted(needs):
        down = {"REDIS_URL": f"redis://{dead}/0", "REDIS_CLUSTER_NODES": ""} if server == "Redis" else {
            "MONGODB_URI": f"mongodb://{dead}"}
        result = _cli({**env, **down}, *command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        *where, error = result.stderr.strip().splitlines()
        assert len(where) == 1 and f"cannot reach {server}" in error and dead in error  # names the address
        assert "Traceback" not in result.stderr
