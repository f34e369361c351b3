"""9. Scale-out: appends through ``RedisEventStore.append`` on one Redis node vs a 3-master cluster, same run.

Client processes (each with threads, each thread appending to its own accounts, spread over every partition)
drive one topology at a time; the rounds alternate single node, cluster, single node, cluster. Two figures:

- appends/s, cluster vs single node. On this 2-core machine the clients and every Redis process share the same
  two cores and the Python clients use most of them, so this shows what the cluster *costs* on equal hardware,
  not what it gains: it has no target;
- the Redis-bound capacity. Redis runs commands on one core, so one node saturates at one core's worth of
  appends; a cluster whose masters each have a core saturates when its busiest master does. Every append is
  one script on one node (counted: Redis commands per append, on every master), so the gain is 1 / (the
  busiest master's share of the appends), counted per master from Redis's own command statistics.
  Redis CPU per append is printed as well but is not comparable across the two at this load: Redis's CPU
  per command falls as more commands arrive per event-loop wakeup, and each master gets a third of them.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from bench.common import Result, redis_server, report
from devstack.redis_cluster import LocalCluster
from shared.config import load_settings
from shared.keys import KeySpace
from shared.redis_client import build_client
from shared.redis_store import RedisEventStore
from shared.stream_codec import decode_entries
from tests.support.events import new_event
from tests.support.targets import RedisTarget

PREFIX = "b9"
PARTITIONS = 16
PROCESSES = 4
THREADS = 4
ACCOUNTS_PER_THREAD = 64


@dataclass(frozen=True)
class Round:
    topology: str
    appends: int
    seconds: float
    redis_cpu: list[float]  # CPU seconds used by each master during the round
    calls: list[int]  # commands each master ran during the round

    @property
    def rate(self) -> float:
        return self.appends / self.seconds

    @property
    def cpu_us_per_append(self) -> float:
        return sum(self.redis_cpu) / self.appends * 1e6

    @property
    def busiest_share(self) -> float:
        return max(self.calls) / sum(self.calls)

    @property
    def commands_per_append(self) -> float:
        return sum(self.calls) / self.appends


def _accounts(round_no: int, process: int, thread: int) -> list[str]:
    """Random-looking ids (reproducible per round), so the spread over partitions is hashing's, not a pattern's:
    numbered ids like ``acct-1 .. acct-128`` happen to fill the 16 partitions exactly evenly under CRC32."""
    rng = random.Random(f"{round_no}-{process}-{thread}")
    return [f"{rng.getrandbits(64):016x}" for _ in range(ACCOUNTS_PER_THREAD)]


def _appender(env: dict[str, str], round_no: int, process: int, threads: int, ready: Any, go: Any, stop: Any,
              counts: Any) -> None:
    """One client process: ``threads`` threads, each appending to its own accounts in turn until ``stop``."""
    os.environ.update(env)
    settings = load_settings()
    store = RedisEventStore(build_client(settings), KeySpace(PREFIX, PARTITIONS), 3600)
    totals = [0] * threads

    def thread_main(thread: int) -> None:
        ids = _accounts(round_no, process, thread)
        versions = dict.fromkeys(ids, 0)
        prebuilt = {account_id: (new_event(account_id, "AccountOpened"), new_event(account_id)) for account_id in ids}
        for account_id in ids:
            store.append(account_id, 0, [prebuilt[account_id][0]])
            versions[account_id] = 1
        ready.release()
        go.wait()
        n = 0
        while not stop.is_set():
            account_id = ids[n % len(ids)]
            outcome = store.append(account_id, versions[account_id], [prebuilt[account_id][1]])
            versions[account_id] = outcome.version  # type: ignore[union-attr]
            n += 1
        totals[thread] = n

    pool = [threading.Thread(target=thread_main, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    counts[process] = sum(totals)


def _cpu(nodes: list[redis.Redis]) -> list[float]:
    return [float(info["used_cpu_sys"]) + float(info["used_cpu_user"]) for info in (n.info("cpu") for n in nodes)]


def _evalsha_calls(nodes: list[redis.Redis]) -> list[int]:
    return [int(n.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)) for n in nodes]


def _round(target: RedisTarget, nodes: list[redis.Redis], round_no: int, seconds: float,
           processes: int = PROCESSES, threads: int = THREADS) -> Round:
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters: no client or socket inherited
    env = {**target.env(), "LEDGER_KEY_PREFIX": PREFIX, "LEDGER_PARTITIONS": str(PARTITIONS),
           "REDIS_SINGLE_CONNECTION": "false", "LOG_LEVEL": "WARNING"}
    ready, go, stop = spawn.Semaphore(0), spawn.Event(), spawn.Event()
    counts = spawn.Array("q", processes)
    children = [spawn.Process(target=_appender, args=(env, round_no, p, threads, ready, go, stop, counts))
                for p in range(processes)]
    for child in children:
        child.start()
    for _ in range(processes * threads):
        if not ready.acquire(timeout=60):
            raise RuntimeError("the client processes did not start")
    before, calls_before, started = _cpu(nodes), _evalsha_calls(nodes), time.perf_counter()
    go.set()
    time.sleep(seconds)
    stop.set()
    for child in children:
        child.join(60)
    elapsed, after, calls_after = time.perf_counter() - started, _cpu(nodes), _evalsha_calls(nodes)
    if any(child.exitcode != 0 for child in children):
        raise RuntimeError(f"a client process failed on {target.topology}")
    counted = [int(counts[p]) for p in range(processes)]
    _check(target, round_no, counted, threads)
    return Round(target.topology, sum(counted), elapsed, [b - a for a, b in zip(before, after, strict=True)],
                 [b - a for a, b in zip(calls_before, calls_after, strict=True)])


def _check(target: RedisTarget, round_no: int, counts: list[int], threads: int) -> None:
    """Every account's versions are 1..n without gaps, and the appends add up to what the clients counted."""
    client = target.client()
    keys = KeySpace(PREFIX, PARTITIONS)
    for process, counted in enumerate(counts):
        stored = 0
        for thread in range(threads):
            for account_id in _accounts(round_no, process, thread):
                versions = [e.version for e in decode_entries(client.xrange(keys.stream(account_id)))]
                assert versions == list(range(1, len(versions) + 1)), f"gap in {account_id}"
                stored += len(versions) - 1
        assert stored == counted, f"process {process}: {stored} stored, {counted} counted"
    client.close()


def scale_out(seconds: float = 5.0, rounds: int = 2) -> list[Result]:
    with redis_server() as server:
        cluster = LocalCluster(masters=3).start()
        try:
            single = RedisTarget("standalone", server.url)
            clustered = RedisTarget("cluster", cluster.url, cluster.nodes_setting)
            single_nodes = [redis.Redis.from_url(server.url)]
            cluster_nodes = [node.client() for node in cluster.nodes]
            results: dict[str, list[Round]] = {"standalone": [], "cluster": []}
            for n in range(rounds):
                results["standalone"].append(_round(single, single_nodes, 2 * n, seconds))
                results["cluster"].append(_round(clustered, cluster_nodes, 2 * n + 1, seconds))
        finally:
            cluster.stop()
    one, three = results["standalone"], results["cluster"]
    rate_one, rate_three = statistics.median(r.rate for r in one), statistics.median(r.rate for r in three)
    cpu_one = statistics.median(r.cpu_us_per_append for r in one)
    cpu_three = statistics.median(r.cpu_us_per_append for r in three)
    busiest = statistics.median(r.busiest_share for r in three)
    per_append = max(r.commands_per_append for r in three)
    assert per_append == 1.0, f"{per_append:.3f} commands per append on the cluster: an append must be one script"
    clients = f"{PROCESSES} processes of {THREADS} threads, median of {rounds} alternating {seconds:.0f} s rounds"
    shares = ", ".join(f"{c / sum(three[-1].calls):.1%}" for c in three[-1].calls)
    return [
        report(Result("9a. appends/s, 3-master cluster vs 1 node (same 2 cores)",
                      f"{rate_three:,.0f} appends/s on 3 masters", f"{rate_one:,.0f} appends/s on one node ({clients})",
                      rate_three / rate_one, "reported (no gain possible: 2 cores shared by clients and servers)",
                      True,
                      ["bounded by the clients' CPU: the Python clients and every Redis process share 2 cores",
                       f"Redis CPU per append: {cpu_one:.0f} µs on one node, {cpu_three:.0f} µs summed over the "
                       "masters, each of which sees a third of the commands per event-loop wakeup"])),
        report(Result("9b. Redis-bound capacity, 3 masters vs 1 node",
                      f"busiest master runs {busiest:.1%} of the appends, one script each "
                      f"({per_append:.2f} commands per append)",
                      "one node runs all of them", 1 / busiest,
                      "≥ 2.4 (90% of the best for 16 partitions on 3 masters, 16/6 = 2.67)", 1 / busiest >= 2.4,
                      [f"share of the appends per master, last round: {shares}"])),
    ]
