"""9. Scale-out: appends through ``RedisEventStore.append`` on one Redis node vs a 3-master cluster, same run.

Client processes (each with threads, each thread appending to its own accounts, spread over every partition)
drive one topology at a time; the rounds alternate single node, cluster, single node, cluster. Two figures:

- appends/s, cluster vs single node. On this 2-core machine the clients and every Redis process share the same
  two cores and the Python clients use most of them, so this shows what the cluster *costs* on equal hardware,
  not what it gains;
- Redis CPU per append, and how it splits over the masters. A single node serves at most 1 / (its CPU per
  append) appends/s on its one core; a cluster whose masters each have a core serves until its busiest master
  is saturated. The ratio of the two is the scale-out the partition spread buys, from measured CPU seconds.
"""

from __future__ import annotations

import multiprocessing
import os
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
ACCOUNTS_PER_THREAD = 8


@dataclass(frozen=True)
class Round:
    topology: str
    appends: int
    seconds: float
    redis_cpu: list[float]  # CPU seconds used by each master during the round

    @property
    def rate(self) -> float:
        return self.appends / self.seconds

    @property
    def cpu_us_per_append(self) -> float:
        return sum(self.redis_cpu) / self.appends * 1e6

    @property
    def busiest_share(self) -> float:
        return max(self.redis_cpu) / sum(self.redis_cpu)


def _accounts(round_no: int, process: int, thread: int) -> list[str]:
    return [f"r{round_no}-p{process}-t{thread}-{n}" for n in range(ACCOUNTS_PER_THREAD)]


def _appender(env: dict[str, str], round_no: int, process: int, ready: Any, go: Any, stop: Any,
              counts: Any) -> None:
    """One client process: THREADS threads, each appending to its own accounts in turn until ``stop``."""
    os.environ.update(env)
    settings = load_settings()
    store = RedisEventStore(build_client(settings), KeySpace(PREFIX, PARTITIONS), 3600)
    totals = [0] * THREADS

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

    threads = [threading.Thread(target=thread_main, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts[process] = sum(totals)


def _cpu(nodes: list[redis.Redis]) -> list[float]:
    return [float(info["used_cpu_sys"]) + float(info["used_cpu_user"]) for info in (n.info("cpu") for n in nodes)]


def _round(target: RedisTarget, nodes: list[redis.Redis], round_no: int, seconds: float) -> Round:
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters: no client or socket inherited
    env = {**target.env(), "LEDGER_KEY_PREFIX": PREFIX, "LEDGER_PARTITIONS": str(PARTITIONS),
           "REDIS_SINGLE_CONNECTION": "false", "LOG_LEVEL": "WARNING"}
    ready, go, stop = spawn.Semaphore(0), spawn.Event(), spawn.Event()
    counts = spawn.Array("q", PROCESSES)
    processes = [spawn.Process(target=_appender, args=(env, round_no, p, ready, go, stop, counts))
                 for p in range(PROCESSES)]
    for process in processes:
        process.start()
    for _ in range(PROCESSES * THREADS):
        if not ready.acquire(timeout=60):
            raise RuntimeError("the client processes did not start")
    before, started = _cpu(nodes), time.perf_counter()
    go.set()
    time.sleep(seconds)
    stop.set()
    for process in processes:
        process.join(60)
    elapsed, after = time.perf_counter() - started, _cpu(nodes)
    if any(process.exitcode != 0 for process in processes):
        raise RuntimeError(f"a client process failed on {target.topology}")
    counted = [int(counts[p]) for p in range(PROCESSES)]
    _check(target, round_no, counted)
    return Round(target.topology, sum(counted), elapsed, [b - a for a, b in zip(before, after, strict=True)])


def _check(target: RedisTarget, round_no: int, counts: list[int]) -> None:
    """Every account's versions are 1..n without gaps, and the appends add up to what the clients counted."""
    client = target.client()
    keys = KeySpace(PREFIX, PARTITIONS)
    for process, counted in enumerate(counts):
        stored = 0
        for thread in range(THREADS):
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
    # Redis-bound capacity: a core per node; the cluster saturates when its busiest master does.
    capacity_one, capacity_three = 1e6 / cpu_one, 1e6 / (cpu_three * busiest)
    clients = f"{PROCESSES} processes of {THREADS} threads, median of {rounds} alternating {seconds:.0f} s rounds"
    return [
        report(Result("9a. appends/s, 3-master cluster vs 1 node (same 2 cores)",
                      f"{rate_three:,.0f} appends/s on 3 masters", f"{rate_one:,.0f} appends/s on one node ({clients})",
                      rate_three / rate_one, "≥ 0.7 (what the cluster costs on the same cores)",
                      rate_three / rate_one >= 0.7,
                      ["bounded by the clients' CPU: the Python clients and every Redis process share 2 cores"])),
        report(Result("9b. Redis-bound capacity, 3 masters vs 1 node",
                      f"{capacity_three:,.0f} appends/s: {cpu_three:.0f} µs Redis CPU per append, busiest master "
                      f"{busiest:.0%} of it",
                      f"{capacity_one:,.0f} appends/s: {cpu_one:.0f} µs Redis CPU per append on one node",
                      capacity_three / capacity_one, "≥ 2.0 (a core per master)", capacity_three / capacity_one >= 2.0,
                      [f"per-master CPU shares, last round: "
                       f"{', '.join(f'{c / sum(three[-1].redis_cpu):.0%}' for c in three[-1].redis_cpu)}"])),
    ]
