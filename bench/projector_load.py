"""7. The projector: backlog throughput into the MongoDB stand-in vs raw bulk_write, and end-to-end lag."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from pymongo import MongoClient, UpdateOne

from bench.common import Result, percentile, redis_server, report, seed_accounts
from devstack.mongo_standin import MongoStandIn
from functions.deposit.app import lambda_handler as deposit
from projector.projection import AccountWrite
from projector.read_model import ReadModel
from shared import runtime
from shared.keys import KeySpace
from tests.support.apigw import make_event
from tests.support.environment import wired
from tests.support.readmodel import assert_read_model_matches, drain, make_projector, settings


def backlog_throughput(events: int = 100_000, accounts: int = 1_000) -> Result:
    per_account = events // accounts
    with redis_server() as server, tempfile.TemporaryDirectory() as tmp:
        mongo = MongoStandIn(Path(tmp) / "nx").start()
        try:
            client = redis.Redis.from_url(server.url)
            keys = KeySpace("b7", 16)
            seed_accounts(client, keys, [f"acct-{i}" for i in range(accounts)], per_account, chunk=100)
            projector = make_projector(client, keys, settings(mongo.uri, "bench", batch_size=500, block_ms=50,
                                                              claim_idle_ms=600_000))
            started = time.perf_counter()
            drain(projector, timeout=1800)
            ours_s = time.perf_counter() - started
            assert_read_model_matches(client, keys, mongo.uri, "bench")
            raw_s = _raw_bulk_write(mongo.uri, events)
        finally:
            mongo.stop()
    ours, raw = events / ours_s, events / raw_s
    return report(Result(
        f"7a. projector backlog ({events:,} events, {accounts:,} accounts)",
        f"{ours:,.0f} events/s projected ({ours_s:.1f} s)",
        f"{raw:,.0f} documents/s by raw bulk_write upserts of {events:,} documents, 500 per batch ({raw_s:.1f} s)",
        ours / raw, "≥ 0.5", ours / raw >= 0.5,
        ["both against the nx-27017 stand-in; a batch folds each account's events into one update, so the "
         "projector writes far fewer documents than it reads events",
         "correctness: the read model equals the streams, account by account"]))


def _raw_bulk_write(uri: str, count: int, batch: int = 500) -> float:
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    collection = client["bench"]["raw"]
    started = time.perf_counter()
    for start in range(0, count, batch):
        collection.bulk_write([UpdateOne({"_id": f"doc-{n}"}, {"$set": {"balance_minor": n, "version": 1}},
                                         upsert=True) for n in range(start, min(count, start + batch))],
                              ordered=False)
    elapsed = time.perf_counter() - started
    assert collection.count_documents({}) == count
    client.close()
    return elapsed


def end_to_end_lag(rate: int = 300, seconds: int = 15, accounts: int = 200) -> Result:
    """Append -> read model updated, at a steady ``rate`` writes/s through the deposit handler."""
    lags: list[float] = []
    with redis_server() as server, wired(server.url, "b7l"), tempfile.TemporaryDirectory() as tmp:
        mongo = MongoStandIn(Path(tmp) / "nx").start()
        try:
            client = runtime.redis_client()
            keys = KeySpace("b7l", 16)
            ids = [f"acct-{i}" for i in range(accounts)]
            seed_accounts(client, keys, ids, 2)
            projector = make_projector(client, keys, settings(mongo.uri, "lag", batch_size=500, block_ms=1000))
            drain(projector)
            original = projector.read_model.write

            def timed_write(self: ReadModel, writes: Sequence[AccountWrite]) -> tuple[set[str], dict[str, str]]:
                applied, refused = original(writes)
                now = time.time()
                for write in writes:
                    if write.after.id in applied:
                        for entry in write.entries:
                            if entry.event is not None and entry.event.version > write.expected_version:
                                lags.append(now - _epoch(entry.event.recorded_at))
                return applied, refused

            projector.read_model.write = timed_write.__get__(projector.read_model)  # type: ignore[method-assign]
            runner = threading.Thread(target=projector.run)
            runner.start()
            events = [make_event("deposit", ids[n % accounts], {"amount": "1.00"}) for n in range(rate * seconds)]
            started = time.perf_counter()
            behind = 0
            for n, event in enumerate(events):
                due = started + n / rate
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                else:
                    behind += 1
                assert deposit(event, None)["statusCode"] == 200
            achieved = len(events) / (time.perf_counter() - started)
            deadline = time.monotonic() + 30
            while len(lags) < len(events) and time.monotonic() < deadline:
                time.sleep(0.05)
            projector.stop()
            runner.join(10)
            assert len(lags) == len(events), f"{len(lags)} of {len(events)} events reached the read model"
            assert_read_model_matches(client, keys, mongo.uri, "lag")
        finally:
            mongo.stop()
    p50, p99 = percentile(lags, 0.5) * 1000, percentile(lags, 0.99) * 1000
    return report(Result(
        f"7b. end-to-end lag at {rate} writes/s", f"p50 {p50:.0f} ms, p99 {p99:.0f} ms (append → document updated)",
        "the 250 ms p99 budget", p99 / 250, "p99 ≤ 250 ms (ratio ≤ 1.0)", p99 <= 250,
        [f"{len(lags):,} deposits at {achieved:.0f}/s through the handler, projector in the same process",
         "correctness: every deposit reached the read model; it equals the streams"]))


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
