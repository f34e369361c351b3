"""Shared benchmark plumbing: throwaway servers, timing loops and the report."""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from devstack.redis_server import RedisProcess
from shared import runtime
from shared.event_store import RedisEventStore
from shared.events import Metadata, NewEvent
from shared.keys import KeySpace


@dataclass
class Result:
    name: str
    figure: str
    limit: str
    ratio: float
    target: str
    passed: bool
    notes: list[str] = field(default_factory=list)


RESULTS: list[Result] = []


def report(result: Result) -> Result:
    RESULTS.append(result)
    verdict = "PASS" if result.passed else "MISS"
    print(f"\n[{verdict}] {result.name}\n  ours:  {result.figure}\n  limit: {result.limit}\n"
          f"  ratio: {result.ratio:.2f} (target {result.target})", flush=True)
    for note in result.notes:
        print(f"  note:  {note}", flush=True)
    return result


def summary_table() -> str:
    lines = ["| benchmark | ours | compared with | ratio | target | |", "| --- | --- | --- | --- | --- | --- |"]
    for r in RESULTS:
        lines.append(f"| {r.name} | {r.figure} | {r.limit} | {r.ratio:.2f} | {r.target} | "
                     f"{'pass' if r.passed else 'MISS'} |")
    return "\n".join(lines)


@contextmanager
def redis_server(*extra: str) -> Iterator[RedisProcess]:
    """A throwaway redis-server (no persistence) so benchmarks neither see nor disturb other data."""
    server = RedisProcess().start(extra_args=extra)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def wired(url: str, prefix: str = "bench", partitions: int = 16) -> Iterator[None]:
    """Point the handlers' per-process wiring at ``url``."""
    saved = {k: os.environ.get(k) for k in ("REDIS_URL", "LEDGER_KEY_PREFIX", "LEDGER_PARTITIONS", "LOG_LEVEL")}
    os.environ.update({"REDIS_URL": url, "LEDGER_KEY_PREFIX": prefix, "LEDGER_PARTITIONS": str(partitions),
                       "LOG_LEVEL": "WARNING"})
    runtime.reset()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        runtime.reset()


def event(account_id: str, event_type: str = "FundsDeposited", amount: int = 100) -> NewEvent:
    return NewEvent(type=event_type, account_id=account_id,
                    data={} if event_type == "AccountOpened" else {"amount_minor": amount},
                    event_id=str(uuid.uuid4()), recorded_at="2026-11-28T12:00:00.000000Z",
                    metadata=Metadata(correlation_id="bench", causation_id="bench"))


def seed_accounts(client: redis.Redis, keys: KeySpace, ids: list[str], events_each: int,
                  chunk: int = 500) -> None:
    """Give every account ``events_each`` events (one open + deposits) through the real append script."""
    store = RedisEventStore(client, keys, 3600)
    for start in range(0, len(ids), chunk):
        pipe = client.pipeline(transaction=False)
        for account_id in ids[start:start + chunk]:
            batch = [event(account_id, "AccountOpened")] + [event(account_id) for _ in range(events_each - 1)]
            script_keys, args = store.script_arguments(account_id, 0, batch)
            store.append_script(keys=script_keys, args=args, client=pipe)
        pipe.execute()


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


ROOT = Path(__file__).resolve().parents[1]
