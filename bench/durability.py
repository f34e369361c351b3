"""8. What each durability choice costs: appends/s through RedisEventStore.append from 16 threads, with
Redis keeping nothing on disk, with AOF fsynced every second, with AOF fsynced before every reply, and with
each append confirmed by one replica (WAIT), all measured in the same run on the same machine."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import redis

from bench.common import Result, redis_server, report
from devstack.redis_server import RedisProcess
from shared.event_store import Appended
from shared.keys import KeySpace
from shared.redis_store import RedisEventStore
from tests.support.events import new_event
from tests.support.waiting import wait_until

MODES: dict[str, tuple[tuple[str, ...], int]] = {
    "no persistence": ((), 0),
    "AOF, fsync every second (everysec)": (("--appendonly", "yes", "--appendfsync", "everysec"), 0),
    "AOF, fsync before every reply (always)": (("--appendonly", "yes", "--appendfsync", "always"), 0),
    "one replica confirms each write (WAIT 1)": ((), 1),
}


@contextmanager
def _redis(args: tuple[str, ...], replicas: int) -> Iterator[RedisProcess]:
    with ExitStack() as stack:
        primary = stack.enter_context(redis_server(*args))
        if replicas:
            replica = RedisProcess().start(extra_args=("--replicaof", "127.0.0.1", str(primary.port)))
            stack.callback(replica.stop)
            link = redis.Redis.from_url(replica.url)
            wait_until(lambda: link.info("replication").get("master_link_status") == "up", 30, "the replica")
        yield primary


def _appends_per_second(server: RedisProcess, replicas: int, threads: int, seconds: float) -> float:
    client = redis.Redis.from_url(server.url)
    store = RedisEventStore(client, KeySpace("b8", 16), 3600, wait_replicas=replicas, wait_timeout_seconds=1.0)
    ids = [f"acct-{n}" for n in range(threads)]
    for account_id in ids:
        assert store.append(account_id, 0, [new_event(account_id, "AccountOpened")]) == Appended(1)
    counts = [0] * threads
    stop = threading.Event()

    def worker(n: int) -> None:
        version = 1
        event = new_event(ids[n])
        while not stop.is_set():
            assert store.append(ids[n], version, [event]) == Appended(version + 1)
            version += 1
            counts[n] += 1

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    time.sleep(seconds)  # the measurement window itself
    stop.set()
    for thread in pool:
        thread.join()
    for n, account_id in enumerate(ids):  # a fast wrong answer fails: every counted append is in the stream
        assert int(client.xlen(KeySpace("b8", 16).stream(account_id))) == counts[n] + 1
    return sum(counts) / seconds


def _latencies_us(servers: dict[str, tuple[RedisProcess, int]], count: int = 2000) -> dict[str, float]:
    """Median time of one append when nothing else is going on (what the choice adds to every request), the
    modes taking turns append by append, so a noisy moment on this shared machine hits them all alike."""
    stores = {name: RedisEventStore(redis.Redis.from_url(server.url), KeySpace("b8", 16), 3600,
                                    wait_replicas=replicas) for name, (server, replicas) in servers.items()}
    samples: dict[str, list[float]] = {name: [] for name in stores}
    event = new_event("solo")
    for store in stores.values():
        store.append("solo", 0, [new_event("solo", "AccountOpened")])
    for version in range(1, count + 1):
        for name, store in stores.items():
            started = time.perf_counter()
            assert store.append("solo", version, [event]) == Appended(version + 1)
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(taken) * 1e6 for name, taken in samples.items()}


def durability_costs(threads: int = 16, seconds: float = 4.0) -> list[Result]:
    with ExitStack() as stack:
        servers = {name: (stack.enter_context(_redis(args, replicas)), replicas)
                   for name, (args, replicas) in MODES.items()}
        latencies = _latencies_us(servers)
        rates = {name: _appends_per_second(server, replicas, threads, seconds)
                 for name, (server, replicas) in servers.items()}
    base_rate, base_latency = rates["no persistence"], latencies["no persistence"]
    return [report(Result(
        f"8. durability: {name}",
        f"{latencies[name]:.0f} µs per append alone; {rates[name]:,.0f} appends/s from {threads} threads",
        f"{base_latency:.0f} µs and {base_rate:,.0f} appends/s with no persistence",
        latencies[name] / base_latency, "reported (latency ratio)", True,
        ["throughput from one Python process is bound by its client side (16 threads, one GIL): slower replies "
         "let more appends share each of Redis's event-loop turns, so it can even rise; the per-append "
         "latency is what a request pays; the modes take turns append by append for the latency"]))
        for name in MODES if name != "no persistence"]
