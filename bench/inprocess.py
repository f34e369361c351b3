"""In-process benchmarks: handler cost, store-size independence, long histories, append path, cold start."""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import orjson
import redis

from bench.auth import local_issuer
from bench.common import ROOT, Result, median_us, redis_server, report, seed_accounts
from functions.deposit.app import lambda_handler as deposit
from shared import account, runtime
from shared.keys import KeySpace
from shared.principal import ANONYMOUS
from shared.redis_client import ScriptRunner
from shared.redis_store import APPEND_LUA, LOAD_LUA, RedisEventStore, append_arguments
from shared.stream_codec import decode_entries
from tests.support.apigw import make_event
from tests.support.environment import wired
from tests.support.events import new_event


def _deposit_events(ids: list[str], authorization: str | None = None) -> list[dict[str, Any]]:
    headers = {} if authorization is None else {"Authorization": authorization}
    return [make_event("deposit", account_id, {"amount": "1.00"}, headers=headers) for account_id in ids]


def _bare_work(keys: KeySpace, ids: list[str]) -> list[tuple[list[str], list[str], list[Any]]]:
    """Prebuilt script arguments: the bare path pays for the load script + decode + the append script."""
    prepared = []
    for account_id in ids:
        script_keys, args = append_arguments(keys, 3600, account_id, 10, [new_event(account_id)])
        prepared.append(([keys.stream(account_id), keys.snapshot(account_id)], script_keys, args))
    return prepared


def handler_cost(rounds: int = 2000) -> Result:
    """1. A deposit through lambda_handler (with a bearer token of the account's owner) vs the Redis work it
    cannot avoid, on 10-event accounts."""
    with redis_server() as server, local_issuer() as auth, wired(server.url, "b1", 16, **auth.env):
        client = runtime.redis_client()
        keys = KeySpace("b1", 16)
        ours_ids = [f"h{i}" for i in range(rounds + 200)]
        bare_ids = [f"r{i}" for i in range(rounds + 200)]
        seed_accounts(client, keys, ours_ids + bare_ids, 10, owner=auth.owner)
        events = _deposit_events(ours_ids, auth.header)
        bare = _bare_work(keys, bare_ids)
        # The cheapest way redis-py offers to call a script on this client: the same runner the store uses.
        run = ScriptRunner(client)
        load, append = run.register(LOAD_LUA), run.register(APPEND_LUA)

        def run_ours(i: int) -> None:
            response = deposit(events[i], None)
            assert response["statusCode"] == 200, response

        def run_bare(i: int) -> None:
            load_keys, append_keys, args = bare[i]
            decode_entries(run(load, load_keys, [])[1])
            assert run(append, append_keys, args)[0] == b"ok"

        for i in range(200):  # warm-up: connections, script cache, code paths
            run_ours(rounds + i)
            run_bare(rounds + i)
        ours: list[float] = []
        raw: list[float] = []
        ours_cpu = raw_cpu = 0.0
        for block in range(0, rounds, 100):  # interleave blocks so both see the same machine noise
            for samples, fn in ((ours, run_ours), (raw, run_bare)):
                cpu = time.process_time()
                for i in range(block, block + 100):
                    started = time.perf_counter()
                    fn(i)
                    samples.append(time.perf_counter() - started)
                spent = time.process_time() - cpu
                if fn is run_ours:
                    ours_cpu += spent
                else:
                    raw_cpu += spent
        _check_balances(client, keys, ours_ids[:rounds] + bare_ids[:rounds], 9 * 100 + 100, 11)
    ratio = median_us(ours) / median_us(raw)
    return report(Result(
        "1. handler cost (deposit, 10-event account)",
        f"{median_us(ours):.0f} µs/request median (client CPU {ours_cpu / rounds * 1e6:.0f} µs)",
        f"{median_us(raw):.0f} µs for load script + decode + append script "
        f"(client CPU {raw_cpu / rounds * 1e6:.0f} µs)",
        ratio, "≤ 1.3", ratio <= 1.3))


def _check_balances(client: redis.Redis, keys: KeySpace, ids: list[str], balance: int, version: int) -> None:
    """A fast wrong answer is a failed benchmark: every account must hold exactly what was written."""
    for account_id in ids:
        state = account.rebuild(account_id, decode_entries(client.xrange(keys.stream(account_id))))
        assert (state.balance, state.version) == (balance, version), (account_id, state)
        assert int(client.get(keys.version(account_id)) or 0) == version


def store_size_independence(others: int = 1_000_000, rounds: int = 1500, block: int = 100) -> Result:
    """3. Deposit latency on 10-event accounts: an almost empty Redis vs one holding ``others`` other events.

    Two servers side by side, measured in alternating blocks (the handler re-wired to each in turn), so a
    noisy neighbour hits both alike instead of whichever phase happened to run at that moment.
    """
    keys = KeySpace("b3", 16)
    with redis_server() as small, redis_server() as large:
        servers = {"empty": small, "full": large}
        probes = {name: [f"{name[0]}{i}" for i in range(rounds)] for name in servers}
        clients = {name: redis.Redis.from_url(server.url) for name, server in servers.items()}
        for name, client in clients.items():
            seed_accounts(client, keys, [*probes[name], f"{name}-warm"], 10)
        started = time.perf_counter()
        seed_accounts(clients["full"], keys, [f"o{i}" for i in range(others // 10)], 10, chunk=1000)
        fill_s = time.perf_counter() - started
        total = sum(int(clients["full"].xlen(keys.partition_log(p))) for p in range(keys.partitions))
        memory = clients["full"].info("memory")["used_memory_human"]
        samples: dict[str, list[float]] = {name: [] for name in servers}
        for first in range(0, rounds, block):
            for name, server in servers.items():
                with wired(server.url, "b3"):
                    events = _deposit_events([f"{name}-warm", *probes[name][first:first + block]])
                    deposit(events[0], None)  # a fresh wiring connects and loads the scripts first
                    for event in events[1:]:
                        started = time.perf_counter()
                        response = deposit(event, None)
                        samples[name].append(time.perf_counter() - started)
                        assert response["statusCode"] == 200, response
        for name, client in clients.items():
            _check_balances(client, keys, probes[name], 1000, 11)
    ratio = median_us(samples["full"]) / median_us(samples["empty"])
    return report(Result(
        "3. store-size independence",
        f"{median_us(samples['full']):.0f} µs/deposit median with {total:,} events stored",
        f"{median_us(samples['empty']):.0f} µs/deposit median in an almost empty store",
        ratio, "≤ 1.1", ratio <= 1.1,
        [f"filled {others:,} other events in {fill_s:.1f} s; Redis used {memory}; the two stores measured in "
         f"alternating blocks of {block}",
         "the 2019 design scanned one global stream: ~1 ms at a few events, 280 ms at 100k"]))


def long_histories(sizes: tuple[int, ...] = (1_000, 10_000), rounds: int = 40) -> list[Result]:
    """4. Rebuilding an account with a long history vs the raw XRANGE of the same entries with parsing.

    "Ours" is the full rebuild (snapshots off): read every event, decode, fold. The note gives what a
    request pays with snapshots on (the default), which bounds the events read per request.
    """
    results = []
    with redis_server() as server, wired(server.url, "b4"):
        client = runtime.redis_client()
        keys = KeySpace("b4", 16)
        full = RedisEventStore(client, keys, 3600)
        snapshotted = runtime.service()
        interval = runtime.settings().snapshot_interval
        for size in sizes:
            account_id = f"long-{size}"
            seed_accounts(client, keys, [account_id], size, chunk=1)
            # Seeding bypasses the service, so give this account the snapshot a live one would have.
            deposit(make_event("deposit", account_id, {"amount": "1.00"}), None)
            stream = keys.stream(account_id)

            def ours(account_id: str = account_id) -> None:
                account.rebuild(account_id, full.read(account_id))

            def raw(stream: str = stream) -> None:
                entries: Any = client.xrange(stream)
                for _, fields in entries:
                    orjson.loads(fields[b"data"])

            def request_path(account_id: str = account_id) -> None:
                snapshotted.get(account_id, ANONYMOUS)

            ours_s, raw_s = _alternate(ours, raw, rounds)
            with_snapshots = [_timed_once(request_path) for _ in range(rounds)]
            state = snapshotted.get(account_id, ANONYMOUS)
            assert state == account.rebuild(account_id, full.read(account_id))
            assert (state.version, state.balance) == (size + 1, (size - 1) * 100 + 100)
            ratio = statistics.median(ours_s) / statistics.median(raw_s)
            per_event = statistics.median(ours_s) / size * 1e6
            results.append(report(Result(
                f"4. rebuild, {size:,} events",
                f"{statistics.median(ours_s) * 1000:.2f} ms full rebuild ({per_event:.1f} µs/event)",
                f"{statistics.median(raw_s) * 1000:.2f} ms raw XRANGE + JSON of each entry's data",
                ratio, "≤ 1.5", ratio <= 1.5,
                [f"a request with snapshots every {interval} versions (the default) reads the snapshot and "
                 f"at most {interval} events: {statistics.median(with_snapshots) * 1000:.2f} ms"])))
    return results


def _timed_once(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _alternate(a: Any, b: Any, rounds: int) -> tuple[list[float], list[float]]:
    a_samples: list[float] = []
    b_samples: list[float] = []
    for _ in range(3):
        a()
        b()
    for _ in range(rounds):
        for samples, fn in ((a_samples, a), (b_samples, b)):
            started = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - started)
    return a_samples, b_samples


def append_path(threads: int = 16, seconds: float = 4.0) -> Result:
    """5. Appends/s through the event-store API vs the raw append script, both from ``threads`` threads.

    Both append the same prebuilt event (building events is the caller's cost, not the store's), so the
    ratio is what ``RedisEventStore.append`` adds: argument encoding, error translation, reply decoding.
    """
    with redis_server() as server, wired(server.url, "b5"):
        client = runtime.redis_client()
        keys = KeySpace("b5", 16)

        def run(kind: str) -> tuple[int, list[str]]:
            store = RedisEventStore(client, keys, 3600)
            script = client.register_script(APPEND_LUA)
            counts = [0] * threads
            ids = [f"{kind}-{n}" for n in range(threads)]
            for account_id in ids:
                store.append(account_id, 0, [new_event(account_id, "AccountOpened")])
            stop = threading.Event()
            barrier = threading.Barrier(threads + 1)

            def worker(n: int) -> None:
                account_id, version = ids[n], 1
                prebuilt = new_event(account_id)
                barrier.wait()
                while not stop.is_set():
                    if kind == "api":
                        outcome = store.append(account_id, version, [prebuilt])
                        assert outcome.version == version + 1  # type: ignore[union-attr]
                    else:
                        script_keys, args = append_arguments(keys, 3600, account_id, version, [prebuilt])
                        assert script(keys=script_keys, args=args)[0] == b"ok"
                    version += 1
                    counts[n] += 1

            pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
            for thread in pool:
                thread.start()
            barrier.wait()
            time.sleep(seconds)
            stop.set()
            for thread in pool:
                thread.join()
            for n, account_id in enumerate(ids):  # versions 1..n, no gaps, and exactly the appends counted
                events = decode_entries(client.xrange(keys.stream(account_id)))
                assert [e.version for e in events] == list(range(1, counts[n] + 2))
            return sum(counts), ids

        api_total, _ = run("api")
        raw_total, _ = run("raw")
    ours, raw = api_total / seconds, raw_total / seconds
    return report(Result(
        f"5. append path ({threads} threads)", f"{ours:,.0f} appends/s through RedisEventStore.append",
        f"{raw:,.0f} appends/s calling the append script directly", ours / raw, "≥ 0.7", ours / raw >= 0.7))


def cold_start(repeat: int = 15) -> list[Result]:
    """6. Importing each handler in a fresh interpreter vs ``import redis`` alone.

    The runs are interleaved (one of each per round, in a shuffled order) so a noisy neighbour hits all of
    them alike instead of whichever happened to run at that moment.
    """
    routes = ("create_account", "deposit", "withdraw", "get_account", "list_events")
    modules = ["redis", *(f"functions.{route}.app" for route in routes)]
    samples: dict[str, list[float]] = {module: [] for module in modules}
    rng = random.Random(6)
    for _ in range(repeat):
        for module in rng.sample(modules, len(modules)):
            code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
            out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
            samples[module].append(float(out.stdout))
    baseline = statistics.median(samples["redis"])
    results = []
    for route in routes:
        ours = statistics.median(samples[f"functions.{route}.app"])
        results.append(report(Result(
            f"6. cold import, {route}", f"{ours * 1000:.1f} ms", f"{baseline * 1000:.1f} ms for import redis",
            ours / baseline, "≤ 1.5", ours / baseline <= 1.5)))
    return results
