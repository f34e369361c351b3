"""The projector loop: own partitions, read each owned log in order, plan against the read model, write,
then acknowledge (fenced by the partition's lease).

Acknowledge only after MongoDB acknowledged the write, so a crash anywhere loses nothing (the entries stay
pending and the next owner claims them at once) and double-applies nothing (the version guard skips what
was written). Every Redis command touches one partition's keys; a node that is out of reach stalls only
the partitions it holds.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from redis.exceptions import ResponseError

from projector import apply, projection, selfcheck
from projector.health import Health
from projector.leases import PartitionLeases
from projector.projection import LogEntry, entry_position
from projector.read_model import CheckpointWrite, MongoUnavailable, ReadModel, WriteResult
from projector.reader import LeaseLost, LogReader
from projector.selfcheck import History
from shared.config import ProjectorSettings
from shared.errors import StoreUnavailable
from shared.redis_client import UNAVAILABLE_ERRORS

log = logging.getLogger("ledgerstream.projector")
T = TypeVar("T")
#: Redis out of reach, whether seen by redis-py or through the event store (account history reads).
REDIS_DOWN: tuple[type[Exception], ...] = (*UNAVAILABLE_ERRORS, StoreUnavailable)

_FIRST_RETRY_S = 0.05
_MAX_RETRY_S = 5.0


@dataclass(slots=True)
class BatchReport:
    entries: int = 0
    applied: int = 0
    skipped: int = 0
    repaired: int = 0
    held: int = 0
    parked: int = 0


class Backoff:
    """Capped exponential back-off with jitter, for outages of Redis or MongoDB."""

    def __init__(self, initial: float = 0.2, cap: float = 30.0) -> None:
        self._initial, self._cap, self._failures = initial, cap, 0

    def next_delay(self) -> float:
        # The exponent is capped before it is used: 2 ** failures would overflow a float after ~1000 failures.
        delay = min(self._cap, self._initial * 2 ** min(self._failures, 16))
        self._failures = min(self._failures + 1, 16)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._failures = 0


@dataclass(slots=True)
class Held:
    """An entry that could not be applied yet: retried from memory, parked after ``max_deliveries``."""

    entry: LogEntry
    attempts: int
    due: float
    error: str


@dataclass(slots=True)
class PartitionState:
    lease: str
    #: Re-reading our own pending entries (after a takeover or an outage): the id to read after. None: new ones.
    cursor: str | None = "0-0"
    held: dict[str, Held] = field(default_factory=dict)
    quarantine: dict[str, str] = field(default_factory=dict)
    #: Everything up to this log entry is in the read model (None: not known yet), and that entry's event id.
    checkpoint: str | None = None
    checkpoint_event: str = ""
    check_due: float = 0.0
    #: An unfinished re-projection of already acknowledged entries: (after, until).
    reproject: tuple[str, str] | None = None
    #: The last entry settled while a re-projection held the checkpoint back.
    settled_meanwhile: LogEntry | None = None
    diverged: str | None = None


@dataclass(slots=True)
class _Down:
    until: float
    backoff: Backoff


class Projector:
    def __init__(self, reader: LogReader, leases: PartitionLeases, model: ReadModel, history: History,
                 settings: ProjectorSettings, node_of: Callable[[int], str] = lambda partition: "redis",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reader = reader
        self.leases = leases
        self.read_model = model
        self.history = history
        self.settings = settings
        self.health = Health(stall_s=settings.stall_s)
        self._node_of = node_of
        self._clock = clock
        self._stop = threading.Event()
        self.partitions: dict[int, PartitionState] = {}
        self._down: dict[str, _Down] = {}
        self._next_tick = 0.0
        self._idle = 0.001

    # --- lifecycle ---

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        backoff = Backoff()
        down: str | None = None
        log.info("projector started", extra={"fields": {"owner": self.leases.owner, "group": self.reader.group,
                                                        "partitions": self.reader.keys.partitions}})
        while not self._stop.is_set():
            try:
                self.step()
            except REDIS_DOWN as exc:
                down = self._outage(down, "redis", exc, backoff)
                continue
            except MongoUnavailable as exc:
                down = self._outage(down, "mongodb", exc, backoff)
                continue
            if down is not None:
                log.warning("%s is back; resuming", down, extra={"fields": {"state": "recovered", "dependency": down}})
                down = None
            self.health.mongo_up = True
            self.health.redis_up = not self._down
            backoff.reset()
        self.shutdown()

    def shutdown(self) -> None:
        """Hand every partition back at once (no waiting for the lease to expire) and leave the group."""
        for partition in list(self.partitions):
            log.info("handing partition %d back: stopping", partition,
                     extra={"fields": {"partition": partition, "lease": "released"}})
            self._leave(partition)
        self.leases.release_all()
        self.leases.leave()
        log.info("projector stopped", extra={"fields": {"owner": self.leases.owner}})

    def _outage(self, down: str | None, dependency: str, exc: Exception, backoff: Backoff) -> str:
        if dependency == "redis":
            self.health.redis_up = False
        else:
            self.health.mongo_up = False
        if down != dependency:  # log once per state change, not once per retry
            log.warning("%s unavailable; backing off, nothing acknowledged: %s", dependency, exc,
                        extra={"fields": {"state": "down", "dependency": dependency}})
        for state in self.partitions.values():
            self._rewind(state)
        self.health.beat()
        self.health.progressed()  # backing off is the right thing to do: not a stall
        self._stop.wait(backoff.next_delay())
        return dependency

    def _rewind(self, state: PartitionState) -> None:
        """After an outage: what we held comes back from our pending list, and the self-check runs again
        (Redis may have come back with older data)."""
        state.cursor = "0-0"
        state.held.clear()
        state.check_due = 0.0

    # --- one turn of the loop ---

    def step(self) -> BatchReport:
        now = self._clock()
        self.health.beat()
        if now >= self._next_tick:
            self._tick()
        reprojected = 0
        for partition, state in list(self.partitions.items()):
            if state.check_due <= now and self._reachable(partition):
                self._self_check(partition, state)
            if state.reproject is not None and self._reachable(partition):
                reprojected += self._guard(partition, partial(self._reproject, partition, state)) or 0
        if reprojected:
            self.health.progressed()
        entries = self._gather()
        self.health.has_work = bool(entries) or any(s.held or s.reproject for s in self.partitions.values())
        if not entries:
            if not self.health.has_work:
                self.health.progressed()
            self._wait_idle()
            return BatchReport()
        self._idle = 0.001
        started = time.perf_counter()
        report = self.process(entries)
        self.health.batches += 1
        self.health.events_applied += report.applied
        if report.applied or report.skipped or report.parked or report.repaired:
            self.health.progressed()
        log.info("batch", extra={"fields": {
            "entries": report.entries, "applied": report.applied, "skipped": report.skipped,
            "repaired": report.repaired, "held": report.held, "parked": report.parked,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3)}})
        return report

    def _wait_idle(self) -> None:
        # Reads are per partition (no blocking read can span partitions on a cluster): poll, backing off to
        # PROJECTOR_POLL_MS while idle, but wake for the next lease tick.
        delay = min(self._idle, max(0.0, self._next_tick - self._clock()))
        self._stop.wait(delay)
        self._idle = min(self.settings.poll_ms / 1000, self._idle * 2)

    def _tick(self) -> None:
        """Heartbeat, renew, rebalance: every quarter of the lease TTL."""
        self._next_tick = self._clock() + self.settings.lease_ttl_ms / 4000
        self.leases.heartbeat()
        for partition in self.leases.renew():
            log.warning("lost the lease of partition %d; another replica owns it now", partition,
                        extra={"fields": {"partition": partition, "lease": "lost"}})
            self.partitions.pop(partition, None)
        for partition in self.leases.excess():
            # Logged before the release, so no log line can show two owners of one partition at once.
            log.info("handing partition %d back for rebalancing", partition,
                     extra={"fields": {"partition": partition, "lease": "released"}})
            self._leave(partition)
        for partition in self.leases.fill():
            self._take(partition)
        for partition, state in list(self.partitions.items()):
            if self._reachable(partition):
                self._guard(partition, partial(self._claim_foreign, partition, state))
        self.health.owned = tuple(sorted(self.partitions))
        self.health.diverged = {p: s.diverged for p, s in self.partitions.items() if s.diverged}

    def _take(self, partition: int) -> None:
        lease = self.leases.owned[partition].value
        try:
            claimed = self.reader.take_over(partition)
            quarantine = self.reader.quarantined(partition)
        except REDIS_DOWN as exc:
            log.warning("cannot take partition %d over yet: %s", partition, exc)
            self.leases.release(partition)
            self._mark_down(partition)
            return
        self.partitions[partition] = PartitionState(lease, quarantine=quarantine)
        log.info("took partition %d (claimed %d pending entries)", partition, claimed,
                 extra={"fields": {"partition": partition, "lease": "acquired", "claimed": claimed}})

    def _leave(self, partition: int) -> None:
        self.partitions.pop(partition, None)
        with contextlib.suppress(*UNAVAILABLE_ERRORS):  # the next owner deletes our consumer once it claimed
            self.reader.leave(partition)
        self.leases.release(partition)

    def _claim_foreign(self, partition: int, state: PartitionState) -> None:
        ids = self.reader.foreign_pending(partition)
        now = self._clock()
        for entry in self.reader.claim(partition, ids):
            state.held[entry.entry_id] = Held(entry, 0, now, "claimed from a previous owner")
        if ids:
            self.reader.drop_idle_consumers(partition)

    def _gather(self) -> list[LogEntry]:
        entries: list[LogEntry] = []
        now = self._clock()
        for partition, state in list(self.partitions.items()):
            if not self.leases.holds(partition) or not self._reachable(partition):
                continue
            due = [held.entry for held in state.held.values() if held.due <= now]
            entries += due[: self.settings.batch_size]
            room = self.settings.batch_size - len(due)
            if room > 0:
                entries += self._guard(partition, partial(self._read, partition, state, room)) or []
        return entries

    def _read(self, partition: int, state: PartitionState, count: int) -> list[LogEntry]:
        if state.cursor is not None:
            found = self.reader.read(partition, count, state.cursor)
            if found:
                state.cursor = found[-1].entry_id
                return [e for e in found if e.entry_id not in state.held]
            state.cursor = None  # our own pending entries are all back in hand: on to new ones
        return self.reader.read(partition, count, None)

    # --- reachability of Redis nodes (on a cluster, one node's outage stalls only its partitions) ---

    def _reachable(self, partition: int) -> bool:
        down = self._down.get(self._node_of(partition))
        return down is None or down.until <= self._clock()

    def _guard(self, partition: int, action: Callable[[], T]) -> T | None:
        """Run ``action`` against the node of ``partition``; if the node is out of reach, mark it down (its
        partitions wait, the others go on) and return None."""
        node = self._node_of(partition)
        try:
            result = action()
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The log or its group vanished: Redis came back empty, or someone deleted them. Start over.
            log.warning("partition %d: its consumer group is gone (Redis restarted empty?); recreating it",
                        partition, extra={"fields": {"partition": partition, "state": "recovered"}})
            self.reader.ensure_group(partition)
            state = self.partitions.get(partition)
            if state is not None:
                self._rewind(state)
            return None
        except REDIS_DOWN as exc:
            if node not in self._down:
                log.warning("Redis node of partition %d unavailable; its partitions wait: %s", partition, exc,
                            extra={"fields": {"state": "down", "dependency": "redis", "partition": partition}})
            self._mark_down(partition)
            return None
        if node in self._down:
            del self._down[node]
            log.warning("Redis node of partition %d is back", partition,
                        extra={"fields": {"state": "recovered", "dependency": "redis", "partition": partition}})
            for other, state in self.partitions.items():
                if self._node_of(other) == node:
                    self._rewind(state)
        return result

    def _mark_down(self, partition: int) -> None:
        node = self._node_of(partition)
        down = self._down.setdefault(node, _Down(0.0, Backoff()))
        down.until = self._clock() + down.backoff.next_delay()
        self.health.redis_up = False

    # --- the self-check ---

    def _self_check(self, partition: int, state: PartitionState) -> None:
        state.check_due = self._clock() + self.settings.check_interval_s
        self._guard(partition, partial(self._check, partition, state))

    def _reproject(self, partition: int, state: PartitionState) -> int:
        """One batch of an unfinished re-projection: acknowledged entries the read model lacks, applied again
        (version-guarded, so whatever it still has is skipped), the checkpoint following."""
        assert state.reproject is not None
        after, until = state.reproject
        chunk = self.reader.scan(partition, after, until, self.settings.batch_size)
        if not chunk:
            meanwhile = state.settled_meanwhile
            end = until if meanwhile is None or entry_position(until) >= meanwhile.position else meanwhile.entry_id
            found = self.reader.entry(partition, end)
            event_id = found.event.event_id if found is not None and found.event is not None else ""
            self.read_model.write((), [CheckpointWrite(partition, end, event_id)])
            state.checkpoint, state.checkpoint_event = end, event_id
            state.reproject, state.diverged, state.settled_meanwhile = None, None, None
            self.health.diverged.pop(partition, None)
            log.warning("partition %d: re-projection finished; the read model has caught up with its log",
                        partition, extra={"fields": {"partition": partition, "divergence": "resolved"}})
            return 0
        pending = self.reader.pending_ids(partition, chunk[0].entry_id, chunk[-1].entry_id, len(chunk))
        todo = [e for e in chunk if e.entry_id not in pending and e.account_id not in state.quarantine]
        last = chunk[-1]
        outcome = apply.apply_entries(todo, self.read_model, self.history, CheckpointWrite(
            partition, last.entry_id, last.event.event_id if last.event is not None else ""))
        for entry, error in outcome.failed:  # parked before, or poison the live path parks
            log.warning("re-projection skips entry %s of partition %d: %s", entry.entry_id, partition, error)
        state.reproject = (last.entry_id, until)
        return len(outcome.settled)

    def _check(self, partition: int, state: PartitionState) -> None:
        finding = selfcheck.compare(self.reader, self.read_model, partition)
        if finding.malformed is not None:
            log.error("partition %d: %s; replacing it and re-projecting the partition from its log", partition,
                      finding.malformed, extra={"fields": {"partition": partition, "divergence": "malformed"}})
            self.read_model.create_checkpoint(partition)
        if finding.redis_behind:
            repairs = selfcheck.repairs_from_streams(self.history, partition, finding.suspects, finding.keep)
            self.read_model.write((), [CheckpointWrite(partition, finding.keep, finding.keep_event_id)], repairs)
            lost = finding.checkpoint.entry_id if finding.checkpoint else "?"
            log.error("partition %d: Redis has lost log entries the read model had applied (checkpoint %s is "
                      "gone; the last entry before it is %s). Repaired %d accounts from their streams: %s",
                      partition, lost, finding.keep, len(repairs), ", ".join(r.account_id for r in repairs),
                      extra={"fields": {"partition": partition, "repaired": [r.account_id for r in repairs],
                                        "divergence": "redis-behind"}})
        state.checkpoint, state.checkpoint_event = finding.keep, finding.keep_event_id
        if finding.checkpoint is None and not finding.mongo_behind:
            self.read_model.create_checkpoint(partition)  # never projected: it starts at the log's beginning
        if finding.mongo_behind and state.reproject is None:
            state.reproject = (finding.keep, finding.frontier)
            state.diverged = f"re-projecting acknowledged entries after {finding.keep} (the read model is behind)"
            log.error("partition %d: the read model is behind its log (checkpoint %s, acknowledged up to %s); "
                      "re-projecting from the checkpoint", partition, finding.keep, finding.frontier,
                      extra={"fields": {"partition": partition, "divergence": "mongo-behind"}})
        if state.reproject is None:
            state.diverged = None
        self.health.diverged = {p: s.diverged for p, s in self.partitions.items() if s.diverged}

    # --- one batch ---

    def process(self, entries: list[LogEntry]) -> BatchReport:
        report = BatchReport(entries=len(entries))
        live, quarantined = self._split_quarantined(entries)
        plan = self._plan(live)
        repairs = [r for r in (selfcheck.repair_from_stream(self.history, account_id, group[0].partition, group)
                               for account_id, (_, group) in plan.diverged.items()) if r is not None]
        for account_id, (reason, _) in plan.diverged.items():
            log.error("account %s: %s; repaired from its stream", account_id, reason,
                      extra={"fields": {"account_id": account_id, "divergence": "event-id"}})
        checkpoints = self._checkpoints(plan)
        written = self.read_model.write(plan.writes, checkpoints, repairs)
        if not written.checkpoints_held:
            self._checkpoint_moved_under_us([c.partition for c in checkpoints])
        failed = self._settle(plan, written, report)
        report.parked = self._park_quarantined(quarantined)
        held, parked = self._hold_or_park(failed)
        report.held, report.parked = held, report.parked + parked
        return report

    def _split_quarantined(self, entries: list[LogEntry]) -> tuple[list[LogEntry], list[LogEntry]]:
        """Each entry once; those of quarantined accounts apart (they are parked behind their account's poison)."""
        live: list[LogEntry] = []
        quarantined: list[LogEntry] = []
        for entry in {(e.partition, e.entry_id): e for e in entries}.values():
            state = self.partitions.get(entry.partition)
            (quarantined if state is not None and entry.account_id in state.quarantine else live).append(entry)
        return live, quarantined

    def _settle(self, plan: projection.Plan, written: WriteResult, report: BatchReport) -> list[tuple[LogEntry, str]]:
        """Acknowledge what is now in the read model; return what failed."""
        settled: dict[int, list[LogEntry]] = defaultdict(list)
        for entry in plan.done:
            settled[entry.partition].append(entry)
        report.skipped = len(plan.done)
        failed = list(plan.failed)
        for write in plan.writes:
            if write.after.id in written.applied:
                for entry in write.entries:
                    settled[entry.partition].append(entry)
                report.applied += len(write.entries)
            else:
                reason = written.refused.get(write.after.id, "another writer moved the document first")
                failed += [(e, reason) for e in write.entries]
        for _, group in plan.diverged.values():
            for entry in group:
                settled[entry.partition].append(entry)
            report.repaired += len(group)
        for partition, done in settled.items():
            self._acknowledge(partition, done)
        return failed

    def _plan(self, entries: list[LogEntry]) -> projection.Plan:
        return apply.plan_entries(entries, self.read_model, self.history)

    def _checkpoint_moved_under_us(self, partitions: list[int]) -> None:
        """A checkpoint was not where we left it: the collection was wiped, restored or rebuilt under us.
        Forget what we believed and let the self-check find out, at once."""
        for partition in partitions:
            state = self.partitions.get(partition)
            if state is not None:
                state.checkpoint, state.check_due = None, 0.0
        log.error("the read model's checkpoints of partitions %s are not where this projector left them "
                  "(wiped, restored or rebuilt?); checking them against the logs now", partitions,
                  extra={"fields": {"partitions": partitions, "divergence": "checkpoint-moved"}})

    def _checkpoints(self, plan: projection.Plan) -> list[CheckpointWrite]:
        """Each partition's new checkpoint: the last entry this batch settles, unless a re-projection of
        older entries is still under way (then everything up to its cursor is known to be in)."""
        last: dict[int, LogEntry] = {}
        candidates = [*plan.done, *(e for w in plan.writes for e in w.entries),
                      *(e for _, entries in plan.diverged.values() for e in entries)]
        for entry in candidates:
            if entry.partition not in last or entry.position > last[entry.partition].position:
                last[entry.partition] = entry
        moves = []
        for partition, entry in last.items():
            state = self.partitions.get(partition)
            if state is None:
                continue
            if state.reproject is not None:
                if state.settled_meanwhile is None or entry.position > state.settled_meanwhile.position:
                    state.settled_meanwhile = entry
                continue
            if state.checkpoint is None or entry_position(state.checkpoint) >= entry.position:
                continue  # unknown until the self-check has run, or already past this entry
            if not self._checkpoint_in_log(partition, state):
                continue
            event_id = entry.event.event_id if entry.event else ""
            moves.append(CheckpointWrite(partition, entry.entry_id, event_id, expected=state.checkpoint))
            state.checkpoint, state.checkpoint_event = entry.entry_id, event_id
        return moves

    def _checkpoint_in_log(self, partition: int, state: PartitionState) -> bool:
        """Is the entry our checkpoint names still in the log, holding the same event? Checked before the
        checkpoint moves on: once moved past a Redis that went back in time, the evidence would be gone."""
        if state.checkpoint in (None, "0-0"):
            return True
        assert state.checkpoint is not None
        found = self.reader.entry(partition, state.checkpoint)
        if found is not None and (found.event is None or not state.checkpoint_event
                                  or found.event.event_id == state.checkpoint_event):
            return True
        log.error("partition %d: the log no longer holds checkpoint %s; checking the read model against it now",
                  partition, state.checkpoint, extra={"fields": {"partition": partition, "divergence": "redis-behind"}})
        state.checkpoint, state.check_due = None, 0.0
        return False

    def _acknowledge(self, partition: int, entries: list[LogEntry]) -> None:
        state = self.partitions.get(partition)
        if state is None:
            return
        try:
            self.reader.ack(state.lease, partition, [e.entry_id for e in entries])
        except LeaseLost:
            log.warning("partition %d: lease lost before acknowledging; the next owner settles these entries",
                        partition, extra={"fields": {"partition": partition, "lease": "lost"}})
            self.partitions.pop(partition, None)
            self.leases.owned.pop(partition, None)
            return
        for entry in entries:
            state.held.pop(entry.entry_id, None)

    def _park_quarantined(self, entries: list[LogEntry]) -> int:
        parked = 0
        for entry in entries:
            state = self.partitions.get(entry.partition)
            if state is None:
                continue
            account_id = entry.account_id or "?"
            reason = f"account {account_id} is quarantined: {state.quarantine.get(account_id, '')}"[:500]
            if self._park(state, entry, reason, 0):
                parked += 1
        return parked

    def _hold_or_park(self, failed: list[tuple[LogEntry, str]]) -> tuple[int, int]:
        held = parked = 0
        now = self._clock()
        for entry, error in failed:
            state = self.partitions.get(entry.partition)
            if state is None:
                continue
            known = state.held.get(entry.entry_id)
            attempts = (known.attempts if known else 0) + 1
            if attempts >= self.settings.max_deliveries:
                if self._park(state, entry, error, attempts):
                    parked += 1
                continue
            delay = min(_MAX_RETRY_S, _FIRST_RETRY_S * 2 ** min(attempts, 16))
            state.held[entry.entry_id] = Held(entry, attempts, now + delay, error)
            held += 1
            if known is None:
                log.warning("entry %s of partition %d cannot be applied yet (attempt %d of %d): %s",
                            entry.entry_id, entry.partition, attempts, self.settings.max_deliveries, error)
        return held, parked

    def _park(self, state: PartitionState, entry: LogEntry, error: str, attempts: int) -> bool:
        try:
            self.reader.park(state.lease, entry, error, attempts, quarantine=entry.account_id is not None)
        except LeaseLost:
            self.partitions.pop(entry.partition, None)
            self.leases.owned.pop(entry.partition, None)
            return False
        state.held.pop(entry.entry_id, None)
        if entry.account_id is not None:
            state.quarantine.setdefault(entry.account_id, error[:500])
        log.error("parked entry %s of partition %d (account %s) after %d attempts; the account is quarantined "
                  "until its parked events are replayed: %s", entry.entry_id, entry.partition, entry.account_id,
                  attempts, error, extra={"fields": {"entry_id": entry.entry_id, "partition": entry.partition,
                                                     "account_id": entry.account_id, "parked": True}})
        return True
