"""The projector's loop: own partitions (leases), gather their entries (held retries, our own pending ones after
a takeover or an outage, new ones from the fetcher), have the processor settle them, let recovery check and
re-project, and report health. One back-off for the read model's outages; a Redis node's outage stalls only
its own partitions (``Outages``). Adapters raise only the project's errors (``StoreUnavailable``,
``GroupMissing``, ``ReadModelUnavailable``, ``LeaseLost``): no client library's exception reaches here.

``step`` is one turn, synchronous (tests drive it); ``run`` turns it until stopped, with the fetcher's
threads blocked on the logs so a new entry wakes the loop at once, and SIGTERM finishing the current batch and
handing the partitions back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from projector.dead_letters import DeadLetters
from projector.fetcher import Fetcher
from projector.health import Health
from projector.leases import PartitionLeases
from projector.ownership import Ownership
from projector.partition_log import GroupMissing, PartitionLog
from projector.partitions import Backoff, Outages, Partition, describe
from projector.processor import BatchReport, Processor
from projector.projection import History, LogEntry
from projector.read_model import ReadModel
from projector.recovery import Recovery
from projector.settings import ProjectorSettings
from projector.store_identity import ForeignStore, StoreIdentity
from projector.subscription import ConsumerGroup
from projector.trimming import LogTrimmer
from shared.errors import ReadModelUnavailable, StoreUnavailable

log = logging.getLogger("ledgerstream.projector")
T = TypeVar("T")
#: Longest a fetcher thread blocks in one read: the loop wakes at once when entries arrive, so this only bounds
#: how long a reader takes to stop (when its partition is handed back, the loop waits that long at most).
MAX_BLOCK_MS = 250
#: Longest the idle loop sleeps: it also wakes for lease ticks, held retries and self-checks when they are due.
_MAX_IDLE_SECONDS = 0.5


class Runner:
    def __init__(self, group: ConsumerGroup, partition_log: PartitionLog, dead_letters: DeadLetters,
                 leases: PartitionLeases, model: ReadModel, history: History, settings: ProjectorSettings,
                 node_of: Callable[[int], str] = lambda partition: "redis", block_ms: int = MAX_BLOCK_MS,
                 clock: Callable[[], float] = time.monotonic, identity: StoreIdentity | None = None,
                 trimmer: LogTrimmer | None = None) -> None:
        self.group, self.log, self.dead_letters, self.leases = group, partition_log, dead_letters, leases
        self.read_model, self.history, self.settings = model, history, settings
        self.partitions: dict[int, Partition] = {}
        self.health = Health(stall_s=settings.stall_seconds)
        self.outages = Outages(node_of, clock)
        self.ownership = Ownership(group, dead_letters, leases, self.partitions, self.outages, self._on,
                                   self._quiesce, clock, self.health.taken_over)
        self.processor = Processor(group, partition_log, model, history, self.partitions, settings.max_deliveries,
                                   self.ownership.lost, clock)
        self.recovery = Recovery(partition_log, model, history, settings.check_interval_seconds,
                                 settings.batch_size, clock, group.announce, trimmer)
        self._block_ms = block_ms
        self._clock = clock
        self._stop = threading.Event()
        self._fetcher: Fetcher | None = None
        self._next_tick = 0.0
        self._identity: StoreIdentity | None = identity
        self._store: str | None = None

    def process(self, entries: list[LogEntry]) -> BatchReport:
        return self.processor.process(entries)

    # --- lifecycle ---

    def stop(self) -> None:
        self._stop.set()
        if self._fetcher is not None:
            self._fetcher.wake.set()

    def run(self) -> None:
        self._fetcher = Fetcher(self.group, self.settings.batch_size, self._block_ms)
        backoff = Backoff()
        down: str | None = None
        log.info("projector started", extra={"fields": {"owner": self.leases.owner, "group": self.group.group,
                                                        "partitions": self.group.keys.partitions}})
        try:
            while not self._stop.is_set():
                try:
                    report = self.step()
                except ReadModelUnavailable as exc:
                    down = self._outage(down, "mongodb", exc, backoff)
                    continue
                except StoreUnavailable as exc:  # what no single node's guard covers
                    down = self._outage(down, "redis", exc, backoff)
                    continue
                except ForeignStore as exc:
                    log.error("projector stopped, nothing written: %s", exc.detail,
                              extra={"fields": {"state": "foreign-store"}})
                    raise
                if down is not None:
                    log.warning("%s is back; resuming", down,
                                extra={"fields": {"state": "recovered", "dependency": down}})
                    down = None
                self.health.mongo_up, self.health.redis_up = True, not self.outages.any
                backoff.reset()
                if not report.entries:
                    self._idle()
        finally:
            self._fetcher.stop(self._block_ms / 1000 + 1)
            self.shutdown()

    def shutdown(self) -> None:
        """Hand every partition back at once (no waiting for the lease to expire) and leave the group."""
        self.ownership.hand_back_all()
        log.info("projector stopped", extra={"fields": {"owner": self.leases.owner}})

    def _outage(self, down: str | None, dependency: str, exc: Exception, backoff: Backoff) -> str:
        if dependency == "redis":
            self.health.redis_up = False
        else:
            self.health.mongo_up = False
        if down != dependency:  # log once per state change, not once per retry
            log.warning("%s unavailable; backing off, nothing acknowledged: %s", dependency, describe(exc),
                        extra={"fields": {"state": "down", "dependency": dependency}})
        for partition in self.partitions.values():
            partition.rewind()
        self.health.beat()
        self.health.progressed()  # backing off is the right thing to do: not a stall
        self._stop.wait(backoff.next_delay())
        return dependency

    def _quiesce(self, numbers: list[int]) -> None:
        if self._fetcher is not None:
            self._fetcher.quiesce(numbers, self._block_ms / 1000 + 1)

    def _idle(self) -> None:
        """Sleep until a fetcher thread has entries, or the next thing falls due (a lease tick, a held retry,
        a self-check), whichever comes first."""
        assert self._fetcher is not None
        due = [self._next_tick, *(h.due for p in self.partitions.values() for h in p.retries.held.values()),
               *(p.progress.check_due for p in self.partitions.values())]
        self._fetcher.wake.wait(max(0.0, min(_MAX_IDLE_SECONDS, min(due) - self._clock())))

    # --- one turn ---

    def step(self) -> BatchReport:
        now = self._clock()
        self.health.beat()
        if self._identity is not None and (self._store is None or now >= self._next_tick):
            self._store = self._identity.confirm(self._store)  # its own store: named first, then checked each tick
        if ticked := now >= self._next_tick:  # heartbeat, renew, rebalance, trim: every quarter of the lease TTL
            self._next_tick = now + self.settings.lease_ttl_seconds / 4
            self.ownership.tick()
            self.health.owned = tuple(sorted(self.partitions))
        reprojected = 0
        for number, partition in [(n, p) for n, p in self.partitions.items() if self.outages.reachable(n)]:
            done, trimmed = self._on(number, partial(self.recovery.tend, partition, now, ticked)) or (0, 0)
            reprojected, self.health.trimmed = reprojected + done, self.health.trimmed + trimmed
        if reprojected:
            self.health.reprojected += reprojected
            self.health.progressed()
        self.health.diverged = {n: p.progress.diverged for n, p in self.partitions.items() if p.progress.diverged}
        entries = self._gather()
        self.health.has_work = bool(entries) or any(p.retries.held or p.progress.reproject
                                                    for p in self.partitions.values())
        if not entries:
            if not self.health.has_work:
                self.health.progressed()
            return BatchReport()
        started = time.perf_counter()
        report = self.processor.process(entries)
        self.health.batches += 1
        self.health.events_applied += report.applied
        self.health.repairs += report.repaired
        if report.progressed:
            self.health.progressed()
        log.info("batch", extra={"fields": {
            "entries": report.entries, "applied": report.applied, "skipped": report.skipped,
            "repaired": report.repaired, "held": report.held, "parked": report.parked,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3)}})
        return report

    def _on(self, number: int, action: Callable[[], T]) -> T | None:
        """Run ``action`` on partition ``number``'s node: None if the node is out of reach (its partitions
        wait, the others go on) or the partition's group vanished (recreated, the partition read again)."""
        try:
            result, back = self.outages.guard(number, action)
        except GroupMissing:
            self._recreate_group(number)
            return None
        if back is not None:
            for other, partition in self.partitions.items():
                if self.outages.node_of(other) == back:
                    partition.rewind()
        return result

    def _recreate_group(self, number: int) -> None:
        log.warning("partition %d: its consumer group is gone (Redis restarted empty?); recreating it",
                    number, extra={"fields": {"partition": number, "state": "recovered"}})
        with contextlib.suppress(GroupMissing):
            self.outages.guard(number, partial(self.group.ensure, number))
        if number in self.partitions:
            self.partitions[number].rewind()

    # --- gathering entries ---

    def _gather(self) -> list[LogEntry]:
        entries: list[LogEntry] = []
        now, batch = self._clock(), self.settings.batch_size
        for number, partition in list(self.partitions.items()):
            if not self.leases.holds(number) or not self.outages.reachable(number):
                continue
            due = [held.entry for held in partition.retries.held.values() if held.due <= now][:batch]
            entries += due
            room = batch - len(due)
            if room > 0 and partition.reading.cursor is not None and (
                    self._fetcher is None or self._fetcher.idle(number)):
                entries += self._on(number, partial(self._read_pending, partition, room)) or []
        return entries + self._new_entries()

    def _read_pending(self, partition: Partition, count: int) -> list[LogEntry]:
        """Our own pending entries, from the cursor on; once they are all back in hand, on to new ones."""
        assert partition.reading.cursor is not None
        found = self.group.read(partition.number, count, partition.reading.cursor)
        if found:
            partition.reading.cursor = found[-1].entry_id
            return [e for e in found if e.entry_id not in partition.retries.held]
        partition.reading.cursor = None
        return []

    def _new_entries(self) -> list[LogEntry]:
        following = [number for number, partition in self.partitions.items()
                     if partition.reading.cursor is None and self.leases.holds(number)
                     and self.outages.reachable(number)]
        if self._fetcher is None:  # a synchronous turn: read now, without waiting
            return [e for number in following
                    for e in self._on(number, partial(self.group.read, number, self.settings.batch_size)) or []]
        self._fetcher.follow(following)
        found, errors = self._fetcher.take()
        for number, error in errors.items():
            if isinstance(error, GroupMissing):
                self._recreate_group(number)
            elif isinstance(error, StoreUnavailable):
                self.outages.mark_down(number, error)
            else:
                raise error
        return [e for e in found if e.partition in self.partitions]
