"""The projector loop: read a batch, plan it against the read model, write, then acknowledge.

Acknowledge only after MongoDB acknowledged the write, so a crash anywhere loses nothing (the entries stay
pending and come back) and double-applies nothing (the version guard skips what was written).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.exceptions import ResponseError

from projector import projection
from projector.consumer import PartitionConsumer
from projector.projection import LogEntry
from projector.read_model import MongoUnavailable, ReadModel
from shared.config import ProjectorSettings
from shared.redis_client import UNAVAILABLE_ERRORS

log = logging.getLogger("ledgerstream.projector")

EntryKey = tuple[int, str]
_FIRST_RETRY_S = 0.02
_MAX_RETRY_S = 1.0


@dataclass(slots=True)
class BatchReport:
    entries: int = 0
    applied: int = 0
    skipped: int = 0
    deferred: int = 0
    failed: int = 0
    parked: int = 0


@dataclass(slots=True)
class Health:
    """What /healthz and the logs report; updated by the loop, read by the health server thread."""

    started: float = field(default_factory=time.monotonic)
    last_beat: float = field(default_factory=time.monotonic)
    redis_up: bool = True
    mongo_up: bool = True
    batches: int = 0
    events_applied: int = 0

    def beat(self) -> None:
        self.last_beat = time.monotonic()


class Backoff:
    """Capped exponential back-off with jitter, for outages of Redis or MongoDB."""

    def __init__(self, initial: float = 0.2, cap: float = 30.0) -> None:
        self._initial, self._cap, self._failures = initial, cap, 0

    def next_delay(self) -> float:
        delay = min(self._cap, self._initial * 2 ** min(self._failures, 30))
        self._failures += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._failures = 0


@dataclass(slots=True)
class _Deferred:
    entry: LogEntry
    first_seen: float
    due: float
    tries: int


class Projector:
    def __init__(self, consumer: PartitionConsumer, read_model: ReadModel, settings: ProjectorSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.consumer = consumer
        self.read_model = read_model
        self.settings = settings
        self.health = Health()
        self._clock = clock
        self._stop = threading.Event()
        self._deferred: dict[EntryKey, _Deferred] = {}
        self._resume_pending = True  # after a start or an outage, first re-read our own unacknowledged entries
        self._groups_ready = False
        self._next_claim = 0.0

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        backoff = Backoff()
        down: str | None = None
        log.info("projector started", extra={"fields": {"consumer": self.consumer.consumer,
                                                        "group": self.consumer.group,
                                                        "partitions": len(self.consumer.partitions)}})
        while not self._stop.is_set():
            try:
                self.step()
            except UNAVAILABLE_ERRORS as exc:
                down = self._outage(down, "redis", exc, backoff)
                continue
            except MongoUnavailable as exc:
                down = self._outage(down, "mongodb", exc, backoff)
                continue
            if down is not None:
                log.warning("%s is back; resuming", down, extra={"fields": {"state": "recovered", "dependency": down}})
                down = None
            self.health.redis_up = self.health.mongo_up = True
            backoff.reset()
        log.info("projector stopped", extra={"fields": {"consumer": self.consumer.consumer}})

    def _outage(self, down: str | None, dependency: str, exc: Exception, backoff: Backoff) -> str:
        if dependency == "redis":
            self.health.redis_up = False
        else:
            self.health.mongo_up = False
        if down != dependency:  # log once per state change, not once per retry
            log.warning("%s unavailable; backing off, nothing acknowledged: %s", dependency, exc,
                        extra={"fields": {"state": "down", "dependency": dependency}})
        self._resume_pending = True
        self._deferred.clear()  # they are still pending in Redis and come back through the re-read
        self.health.beat()
        self._stop.wait(backoff.next_delay())
        return dependency

    def step(self) -> BatchReport:
        """One batch: at most ``batch_size`` entries read, projected and acknowledged."""
        self.health.beat()
        if not self._groups_ready:
            self.consumer.ensure_groups()
            self._groups_ready = True
        try:
            entries, claimed = self._next_entries()
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # the log or the group was deleted under us: recreate and go on
                self._groups_ready = False
                return BatchReport()
            raise
        if not entries:
            return BatchReport()
        started = time.perf_counter()
        report = self.process(entries, claimed)
        self.health.batches += 1
        self.health.events_applied += report.applied
        log.info("batch", extra={"fields": {
            "entries": report.entries, "applied": report.applied, "skipped": report.skipped,
            "deferred": report.deferred, "failed": report.failed, "parked": report.parked,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3)}})
        return report

    def _next_entries(self) -> tuple[list[LogEntry], set[EntryKey]]:
        batch = self.settings.batch_size
        now = self._clock()
        entries: list[LogEntry] = []
        claimed: set[EntryKey] = set()
        if self._resume_pending:
            entries = self.consumer.read(batch, None, pending=True)
            self._resume_pending = len(entries) >= batch
        if now >= self._next_claim and len(entries) < batch:
            stale = self.consumer.claim_stale(self.settings.claim_idle_ms, batch - len(entries))
            claimed = {(e.partition, e.entry_id) for e in stale}
            entries += stale
            self._next_claim = now + self.settings.claim_idle_ms / 2000
        due = [d for d in self._deferred.values() if d.due <= now]
        entries += [d.entry for d in due[: max(0, batch - len(entries))]]
        if not entries:
            wait_ms = self.settings.block_ms
            if self._deferred:
                soonest = min(d.due for d in self._deferred.values())
                wait_ms = max(1, min(wait_ms, int((soonest - now) * 1000)))
            entries = self.consumer.read(batch, wait_ms)
        unique = {(e.partition, e.entry_id): e for e in entries}
        return list(unique.values()), claimed

    def process(self, entries: list[LogEntry], claimed: set[EntryKey] | None = None) -> BatchReport:
        report = BatchReport(entries=len(entries))
        current = self.read_model.current(e.event.account_id for e in entries if e.event is not None)
        plan = projection.plan(entries, current)
        applied, refused = self.read_model.write(plan.writes)
        to_ack = list(plan.done)
        report.skipped = len(plan.done)
        retry = list(plan.deferred)
        failed = list(plan.failed)
        for write in plan.writes:
            if write.after.id in applied:
                to_ack += write.entries
                report.applied += len(write.entries)
            elif write.after.id in refused:
                failed += [(e, refused[write.after.id]) for e in write.entries]
            else:
                retry += write.entries  # another projector moved the document first: re-plan soon
        self.consumer.ack(to_ack)
        for entry in to_ack:
            self._deferred.pop((entry.partition, entry.entry_id), None)
        report.deferred = self._defer(retry)
        report.failed = len(failed)
        report.parked = self._handle_failures(failed, retry, claimed or set())
        return report

    def _defer(self, entries: list[LogEntry]) -> int:
        """Retry gaps soon from memory; after ``claim_idle`` leave them to XAUTOCLAIM (which counts
        deliveries, so an entry that never becomes applicable is parked in the end)."""
        now = self._clock()
        horizon = self.settings.claim_idle_ms / 1000
        for entry in entries:
            key = (entry.partition, entry.entry_id)
            known = self._deferred.get(key)
            if known is None:
                self._deferred[key] = _Deferred(entry, now, now + _FIRST_RETRY_S, 1)
            elif now - known.first_seen > horizon:
                del self._deferred[key]
            else:
                known.tries += 1
                known.due = now + min(_MAX_RETRY_S, _FIRST_RETRY_S * 2**known.tries)
        return len(entries)

    def _handle_failures(self, failed: list[tuple[LogEntry, str]], deferred: list[LogEntry],
                         claimed: set[EntryKey]) -> int:
        """Park what has been delivered ``max_deliveries`` times; the rest stays pending for a later claim."""
        candidates = list(failed)
        candidates += [(e, "gap: an earlier version of this account is missing")
                       for e in deferred if (e.partition, e.entry_id) in claimed]
        if not candidates:
            return 0
        counts = self.consumer.deliveries([e for e, _ in candidates])
        parked = 0
        for (entry, error), deliveries in zip(candidates, counts, strict=True):
            if deliveries >= self.settings.max_deliveries:
                self.consumer.park(entry, error, deliveries)
                self._deferred.pop((entry.partition, entry.entry_id), None)
                parked += 1
                log.error("parked entry %s of partition %d after %d deliveries: %s", entry.entry_id,
                          entry.partition, deliveries, error,
                          extra={"fields": {"entry_id": entry.entry_id, "partition": entry.partition}})
            elif (entry.partition, entry.entry_id) not in self._deferred:
                log.warning("entry %s of partition %d failed (delivery %d of %d): %s", entry.entry_id,
                            entry.partition, deliveries, self.settings.max_deliveries, error)
        return parked
