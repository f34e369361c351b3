"""Shared benchmark plumbing: throwaway servers, timing loops and the report."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from devstack.redis_server import RedisProcess
from shared.event_store import Appended
from shared.keys import KeySpace
from shared.principal import Owner
from shared.redis_store import RedisEventStore
from tests.support.events import history


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


def seed_accounts(client: redis.Redis, keys: KeySpace, ids: list[str], events_each: int,
                  chunk: int = 500, owner: Owner | None = None) -> None:
    """Give every account ``events_each`` events (one open by ``owner`` + deposits) through the real append
    script."""
    store = RedisEventStore(client, keys, 3600)
    for start in range(0, len(ids), chunk):
        outcomes = store.append_many([(account_id, 0, history(account_id, events_each, owner=owner))
                                      for account_id in ids[start:start + chunk]])
        assert all(outcome == Appended(events_each) for outcome in outcomes), outcomes


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


ROOT = Path(__file__).resolve().parents[1]
