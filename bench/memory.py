"""11. Redis memory with and without the archive (issue 21): ``used_memory`` after 1,000,000 and after 2,000,000
deposits over 10,000 accounts, on a redis-server of its own, written through the append script in rounds of one
deposit per account.

Both runs are treated alike but for the archive: after every 70,000 deposits the partition logs are trimmed
as a caught-up projector trims them (its checkpoint at each log's end), and in the archived run the archiver
(the projector's, with every lease held) then moves every due account. Its throughput is measured there:
events moved per second of archiving, to a folder on local disk. The archived run is charged for the
snapshots the archiver writes; the plain run writes none.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import redis

from bench.common import Result, redis_server, report
from projector.archiving import Archiver, ArchiveWorker
from projector.trimming import LogTrimmer
from shared.archive import open_archive
from shared.event_store import Appended
from shared.keys import KeySpace
from shared.redis_store import RedisEventStore
from tests.support.events import history, new_event

ACCOUNTS = int(os.environ.get("BENCH_MEMORY_ACCOUNTS", "10000"))
ROUNDS = int(os.environ.get("BENCH_MEMORY_ROUNDS", "200"))  # deposits per account: 200 x 10,000 = 2,000,000
EVERY = int(os.environ.get("BENCH_MEMORY_ARCHIVE_AFTER", "10"))
CHUNK = 500
#: Rounds between settles: not a multiple of EVERY, so the peak below sees accounts at every phase.
SETTLE_EVERY = 7
LEASE = "bench|1"


def _used(client: redis.Redis) -> int:
    info: Any = client.info("memory")
    return int(info["used_memory"])


def _trim_logs(client: redis.Redis, keys: KeySpace) -> None:
    trimmer = LogTrimmer(client, keys, "projector")
    for partition in range(keys.partitions):
        last: Any = client.xrevrange(keys.partition_log(partition), count=1)
        if last:  # the group has read everything and its read model has it all: the caught-up projector
            client.xgroup_setid(keys.partition_log(partition), "projector", last[0][0])
            done = trimmer.trim(LEASE, partition, last[0][0].decode())
            assert done.floor is not None, done.held_by


class Run:
    def __init__(self, client: redis.Redis, keys: KeySpace, folder: str | None) -> None:
        self.client, self.keys = client, keys
        archive = open_archive(f"file://{folder}", keys.prefix) if folder else None
        self.store = RedisEventStore(client, keys, 3600, archive=archive, archive_every=EVERY)
        self.worker = None
        if archive is not None:
            archiver = Archiver(client, keys, "projector", self.store, archive)
            owned = [(p, LEASE) for p in range(keys.partitions)]
            self.worker = ArchiveWorker(archiver, lambda: owned, per_pass=1_000)
        self.ids = [f"acct-{n:06d}" for n in range(ACCOUNTS)]
        self.archived_events = 0
        self.archiving_seconds = 0.0
        self.peak = self.first_peak = 0

    def open(self) -> int:
        """Open every account (one event each); used_memory of the empty server, before that."""
        client, keys = self.client, self.keys
        client.flushall()
        empty = _used(client)
        for partition in range(keys.partitions):
            client.set(keys.lease(partition, "projector"), LEASE)
            client.xgroup_create(keys.partition_log(partition), "projector", id="0-0", mkstream=True)
        for start in range(0, ACCOUNTS, CHUNK):
            outcomes = self.store.append_many([(a, 0, history(a, 1)) for a in self.ids[start:start + CHUNK]])
            assert all(o == Appended(1) for o in outcomes)
        return empty

    def deposits(self, first_round: int, rounds: int) -> None:
        """``rounds`` more deposits on every account, then the logs trimmed and the due accounts archived."""
        for round_ in range(first_round, first_round + rounds):
            for start in range(0, ACCOUNTS, CHUNK):
                outcomes = self.store.append_many([(a, round_ + 1, [new_event(a)])
                                                   for a in self.ids[start:start + CHUNK]])
                assert all(o == Appended(round_ + 2) for o in outcomes), outcomes[:3]
            if (round_ + 1) % SETTLE_EVERY == 0:
                self.settle()

    def settle(self) -> None:
        _trim_logs(self.client, self.keys)
        if self.worker is None:
            return
        started = time.perf_counter()
        while any(self.client.scard(self.keys.archive_due(p)) for p in range(self.keys.partitions)):
            moved = self.worker.run_pass()
            assert moved, "accounts stay due and nothing moves: see the archiver's log"
            self.archived_events += moved
        self.archiving_seconds += time.perf_counter() - started
        self.peak = max(self.peak, _used(self.client))


def _measure(client: redis.Redis, keys: KeySpace, folder: str | None) -> tuple[int, int, Run]:
    run = Run(client, keys, folder)
    base = run.open()
    half = ROUNDS // 2
    run.deposits(0, half)
    run.settle()
    at_half = _used(client) - base
    run.first_peak, run.peak = run.peak - base, 0
    run.deposits(half, ROUNDS - half)
    run.settle()
    run.peak -= base
    return at_half, _used(client) - base, run


def memory() -> list[Result]:
    keys = KeySpace("b11", 16)
    with redis_server("--maxmemory-policy", "noeviction") as server, tempfile.TemporaryDirectory() as folder:
        client = redis.Redis.from_url(server.url)
        plain_half, plain_full, _ = _measure(client, keys, None)
        half, full, run = _measure(client, keys, folder)
        sample = run.ids[:50]
        for account_id in sample:  # the archive gives back every event, in order, to the last
            assert [e.version for e in run.store.read(account_id)] == list(range(1, ROUNDS + 2))
    deposits = ACCOUNTS * ROUNDS // 2
    mb = 1024 * 1024
    growth = (full - half) / half
    rate = run.archived_events / run.archiving_seconds
    return [
        report(Result(f"11a. Redis used_memory after {deposits:,} deposits with the archive",
                      f"{half / mb:,.1f} MB", f"{plain_half / mb:,.1f} MB without it", half / plain_half, "<= 0.15",
                      half / plain_half <= 0.15,
                      [f"{ACCOUNTS:,} accounts, ARCHIVE_AFTER_EVENTS={EVERY}, partition logs trimmed as a caught-up "
                       "projector trims them in both runs; used_memory less that of the empty server"])),
        report(Result(f"11b. Redis growth from {deposits:,} to {2 * deposits:,} deposits with the archive",
                      f"{(full - half) / mb:+,.2f} MB ({growth:+.1%})",
                      f"{(plain_full - plain_half) / mb:+,.1f} MB without it", growth, "<= 0.05", growth <= 0.05,
                      [f"with the archive: {half / mb:,.1f} MB then {full / mb:,.1f} MB (every account at the same "
                       f"phase of ARCHIVE_AFTER_EVENTS at both points); without: {plain_half / mb:,.1f} then "
                       f"{plain_full / mb:,.1f} MB",
                       f"between the points, sampled every {SETTLE_EVERY} rounds after archiving (accounts at every "
                       f"phase, up to {EVERY - 1} events each still in Redis): peak {run.first_peak / mb:,.1f} MB in "
                       f"the first half, {run.peak / mb:,.1f} MB in the second ({run.peak / run.first_peak - 1:+.1%}); "
                       f"the first half's peak is {run.first_peak / plain_half:.2f} of the plain run at its end"])),
        report(Result("11c. Archiving throughput", f"{rate:,.0f} events/s",
                      "reported", 1.0, "reported", True,
                      [f"{run.archived_events:,} events moved in {run.archiving_seconds:.1f} s by one archiver "
                       "thread, to a folder on local disk (one segment per account and pass); the first 50 "
                       "accounts read back complete through the archive"])),
    ]
