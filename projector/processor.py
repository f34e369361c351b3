"""The processor: takes a batch of log entries to the read model and settles every one of them.

Each entry ends one of three ways: **acknowledged** (``_settle``) once the read model has it (written now,
already there, or repaired from its account's stream); **held** for another try from memory, with back-off;
or, after ``max_deliveries`` tries, **parked** with its error and its account **quarantined**, so the
account's later events are parked behind it (never applied out of order) while every other account flows on.
Acknowledging only after the read model has the entry means a crash anywhere loses nothing (the entry stays
pending and its next owner claims it) and applies nothing twice (the version guard skips what was written).
Each batch also moves its partitions' checkpoints, guarded: a checkpoint that is not where this replica left
it was wiped, restored or rebuilt under it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from projector.applying import Applied, apply_entries, plan_entries, write_plan
from projector.checkpoints import Checkpoints
from projector.memo import recall, remember
from projector.partition_log import PartitionLog
from projector.partitions import Held, LeaseLost, Partition, Settling, backoff_delay
from projector.projection import History, LogEntry
from projector.read_model import ReadModel
from shared import tracing

log = logging.getLogger("ledgerstream.projector")
_FIRST_RETRY_SECONDS = 0.05
_MAX_RETRY_SECONDS = 5.0


@dataclass(slots=True)
class BatchReport:
    entries: int = 0
    applied: int = 0
    skipped: int = 0
    repaired: int = 0
    held: int = 0
    parked: int = 0

    @property
    def progressed(self) -> bool:
        return bool(self.applied or self.skipped or self.parked or self.repaired)


class Processor:
    def __init__(self, group: Settling, partition_log: PartitionLog, model: ReadModel, history: History,
                 partitions: dict[int, Partition], max_deliveries: int, on_lease_lost: Callable[[int], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._group = group
        self._model = model
        self._history = history
        self._partitions = partitions
        self._max_deliveries = max_deliveries
        self._on_lease_lost = on_lease_lost
        self._clock = clock
        self._checkpoints = Checkpoints(partition_log, partitions)

    def process(self, entries: list[LogEntry]) -> BatchReport:
        if not tracing.SWITCH.on:
            return self._process(entries)
        from shared.otel_tracing import AppliedSpans

        spans = AppliedSpans([(e.event.type, _traceparent(e.event.metadata_json)) if e.event else ("?", None)
                              for e in entries])
        report = self._process(entries)
        spans.end(report.applied, report.held + report.parked)
        return report

    def _process(self, entries: list[LogEntry]) -> BatchReport:
        report = BatchReport(entries=len(entries))
        live, quarantined = self._split_quarantined(entries)
        known = recall(self._partitions, live)
        plan = plan_entries(live, self._model, self._history, known)
        applied = write_plan(plan, self._model, self._history)
        # The checkpoints after the documents, not with them: their check against the log is then off the
        # path every reader waits on.
        checkpoints = self._checkpoints.moves(plan)
        if checkpoints and not self._model.write((), checkpoints).checkpoints_held:
            self._checkpoints.moved_under_us([c.partition for c in checkpoints])
        remember(self._partitions, plan, applied)
        if applied.refused & known.keys():
            self._plan_again(applied, applied.refused & known.keys())
        self._settle(applied, report)
        report.parked = self._park_quarantined(quarantined)
        report.held, parked = self._hold_or_park(applied.failed)
        report.parked += parked
        return report

    def _split_quarantined(self, entries: list[LogEntry]) -> tuple[list[LogEntry], list[LogEntry]]:
        """Each entry once; those of quarantined accounts apart (they are parked behind their account's poison)."""
        live: list[LogEntry] = []
        quarantined: list[LogEntry] = []
        for entry in {(e.partition, e.entry_id): e for e in entries}.values():
            partition = self._partitions.get(entry.partition)
            quarantine = partition.retries.quarantine if partition is not None else {}
            (quarantined if entry.account_id in quarantine else live).append(entry)
        return live, quarantined

    def _plan_again(self, applied: Applied, stale: set[str]) -> None:
        """Writes planned from the memo that the read model refused (another writer, a restore): planned again
        at once from the documents themselves, so a stale memo never costs an entry a delivery attempt."""
        again = [entry for entry, _ in applied.failed if entry.account_id in stale]
        applied.failed = [(entry, error) for entry, error in applied.failed if entry.account_id not in stale]
        retried = apply_entries(again, self._model, self._history)
        applied.written += retried.written
        applied.skipped += retried.skipped
        applied.repaired += retried.repaired
        applied.failed += retried.failed

    # --- settling ---

    def _settle(self, applied: Applied, report: BatchReport) -> None:
        """Where entries are acknowledged: only here, once the read model has them, each partition's fenced by
        our lease (all partitions' in one round trip)."""
        report.applied, report.skipped, report.repaired = (len(applied.written), len(applied.skipped),
                                                           len(applied.repaired))
        settled: dict[int, list[LogEntry]] = defaultdict(list)
        for entry in applied.settled:
            if entry.partition in self._partitions:
                settled[entry.partition].append(entry)
        lost = self._group.acknowledge_all([(self._partitions[number].lease, number, [e.entry_id for e in done])
                                            for number, done in settled.items()])
        for number, done in settled.items():
            if number in lost:
                log.warning("partition %d: lease lost before acknowledging; the next owner settles these entries",
                            number, extra={"fields": {"partition": number, "lease": "lost"}})
                self._on_lease_lost(number)
                continue
            held = self._partitions[number].retries.held
            for entry in done:
                held.pop(entry.entry_id, None)

    def _park_quarantined(self, entries: list[LogEntry]) -> int:
        parked = 0
        for entry in entries:
            partition = self._partitions.get(entry.partition)
            if partition is None:
                continue
            account_id = entry.account_id or "?"
            reason = f"account {account_id} is quarantined: {partition.retries.quarantine.get(account_id, '')}"
            parked += self._park(partition, entry, reason[:500], 0)
        return parked

    def _hold_or_park(self, failed: list[tuple[LogEntry, str]]) -> tuple[int, int]:
        held = parked = 0
        now = self._clock()
        for entry, error in failed:
            partition = self._partitions.get(entry.partition)
            if partition is None:
                continue
            known = partition.retries.held.get(entry.entry_id)
            attempts = (known.attempts if known else 0) + 1
            if attempts >= self._max_deliveries:
                parked += self._park(partition, entry, error, attempts)
                continue
            due = now + backoff_delay(_FIRST_RETRY_SECONDS, _MAX_RETRY_SECONDS, attempts, jitter=False)
            partition.retries.held[entry.entry_id] = Held(entry, attempts, due, error)
            held += 1
            if known is None:
                log.warning("entry %s of partition %d cannot be applied yet (attempt %d of %d): %s",
                            entry.entry_id, entry.partition, attempts, self._max_deliveries, error)
        return held, parked

    def _park(self, partition: Partition, entry: LogEntry, error: str, attempts: int) -> bool:
        try:
            self._group.park(partition.lease, entry, error, attempts, quarantine=entry.account_id is not None)
        except LeaseLost:
            self._on_lease_lost(entry.partition)
            return False
        partition.retries.held.pop(entry.entry_id, None)
        if entry.account_id is not None:
            partition.retries.quarantine.setdefault(entry.account_id, error[:500])
        log.error("parked entry %s of partition %d (account %s) after %d attempts; the account is quarantined "
                  "until its parked events are replayed: %s", entry.entry_id, entry.partition, entry.account_id,
                  attempts, error, extra={"fields": {"entry_id": entry.entry_id, "partition": entry.partition,
                                                     "account_id": entry.account_id, "parked": True}})
        return True


def _traceparent(metadata_json: str) -> str | None:
    try:
        found = orjson.loads(metadata_json).get("traceparent")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return found if isinstance(found, str) else None
