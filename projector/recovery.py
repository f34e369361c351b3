"""A read model that knows where it is: each owned partition's checkpoint (in the read model) is compared with
its log (in Redis) at takeover, every ``PROJECTOR_CHECK_INTERVAL_SECONDS``, after an outage, and whenever a
checkpoint was found moved; what the comparison finds is repaired here.

* **Redis behind** (it lost writes: ``appendfsync everysec`` and a power cut, an asynchronous replica
  promoted): the checkpoint's entry is gone from the log, or holds another event. Versions were or will be
  handed out again, so every account the read model advanced past what the log still holds is rebuilt from
  its stream, and the repair is logged by account id.
* **Read model behind** (wiped, restored from an old backup, or its checkpoint malformed): entries the group
  acknowledged lie after the checkpoint. They are projected again from there, version-guarded, a batch at a
  time between live batches; the checkpoint reaches the log's end only when that is done.
* **Log trimmed past the checkpoint** (the projector was away while ``PARTITION_LOG_MAX_ENTRIES`` capped the
  log, or the read model is older than what the logs still hold): the log cannot bring the read model up to
  date any more, so every account of the partition is re-synchronised from its stream (which holds every
  event for good), and the checkpoint set to the log's end as it was before the streams were read. Logged
  as an ERROR naming the partition; ``status`` shows it until it is done.

``status`` uses the same comparison, so it never reports a healthy lag over a read model that disagrees.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from projector.applying import apply_entries, repair_from_stream
from projector.partition_log import PartitionLog
from projector.partitions import Partition
from projector.projection import History, entry_position
from projector.read_model import Checkpoint, CheckpointWrite, MalformedDocument, ReadModel, Repair
from projector.trimming import LogTrimmer

log = logging.getLogger("ledgerstream.projector")
_SCAN_CAP = 100_000


@dataclass(frozen=True, slots=True)
class Finding:
    checkpoint: Checkpoint | None
    #: Where the read model is known to be consistent with the log (the checkpoint, or less after a loss).
    keep: str
    keep_event_id: str
    #: The group's last delivered entry: everything up to it was read, most of it acknowledged.
    frontier: str
    redis_behind: bool = False
    suspects: list[str] = field(default_factory=list)
    mongo_behind: bool = False
    #: Acknowledged entries after ``keep`` (at most the scan cap).
    behind_by: int = 0
    #: What stands under the checkpoint's id is not a checkpoint (why, in one line): nothing of it is trusted,
    #: the partition is compared as if it had never been projected.
    malformed: str | None = None
    #: The log no longer holds every entry after the checkpoint: trimmed while the read model was behind.
    trimmed: bool = False


def compare(partition_log: PartitionLog, model: ReadModel, partition: int) -> Finding:
    malformed = None
    try:
        checkpoint = model.checkpoint(partition)
    except MalformedDocument as exc:
        checkpoint, malformed = None, exc.detail
    info = partition_log.group_info(partition)
    frontier = info.last_delivered if info else "0-0"
    keep, keep_event_id = "0-0", ""
    redis_behind = False
    suspects: list[str] = []
    since = checkpoint.entry_id if checkpoint is not None else "0-0"
    found = partition_log.entry(partition, since) if since != "0-0" else None
    if found is None and partition_log.trimmed_past(partition, since):
        return Finding(checkpoint, since, checkpoint.event_id if checkpoint else "", frontier, malformed=malformed,
                       trimmed=True)
    if checkpoint is not None and checkpoint.entry_id != "0-0":
        if found is None or (checkpoint.event_id and found.event is not None
                             and found.event.event_id != checkpoint.event_id):
            redis_behind = True
            # Strictly before the checkpoint: if its id exists again, it holds another event than ours.
            keep = partition_log.last_before(partition, checkpoint.entry_id) or "0-0"
            suspects = model.applied_after(partition, entry_position(keep))
            kept = partition_log.entry(partition, keep) if keep != "0-0" else None
            keep_event_id = kept.event.event_id if kept is not None and kept.event is not None else ""
        else:
            keep, keep_event_id = checkpoint.entry_id, checkpoint.event_id
    behind_by = 0
    if entry_position(keep) < entry_position(frontier):
        entries = partition_log.scan(partition, keep, frontier, _SCAN_CAP)
        if entries:
            pending = partition_log.pending_ids(partition, entries[0].entry_id, entries[-1].entry_id, _SCAN_CAP)
            behind_by = sum(1 for e in entries if e.entry_id not in pending)
    return Finding(checkpoint, keep, keep_event_id, frontier, redis_behind, suspects, behind_by > 0, behind_by,
                   malformed)


def repairs_from_streams(history: History, partition: int, accounts: Sequence[str], at: str) -> list[Repair]:
    repairs = [repair_from_stream(history, account_id, partition, at=at) for account_id in accounts]
    return [r for r in repairs if r is not None]


def resync_from_streams(partition_log: PartitionLog, model: ReadModel, history: History, partition: int,
                        batch: int) -> tuple[str, str, int]:
    """Every account of ``partition`` rewritten from its stream, then the checkpoint set to where the log
    ended before the streams were read (every event up to there is in them; later ones are applied as they
    come, version-guarded): (checkpoint, its event id, accounts)."""
    end = partition_log.end(partition)
    event_id = partition_log.event_id_at(partition, end)
    accounts = sorted(partition_log.accounts(partition))
    for start in range(0, len(accounts), batch):
        model.write((), (), repairs_from_streams(history, partition, accounts[start:start + batch], end))
    model.write((), [CheckpointWrite(partition, end, event_id)])
    return end, event_id, len(accounts)


class Recovery:
    def __init__(self, partition_log: PartitionLog, model: ReadModel, history: History, check_interval: float,
                 batch_size: int, clock: Callable[[], float] = time.monotonic,
                 announce: Callable[[int, str], None] = lambda partition, checkpoint: None,
                 trimmer: LogTrimmer | None = None) -> None:
        self._log = partition_log
        self._announce = announce
        self._trimmer = trimmer
        self._model = model
        self._history = history
        self._interval = check_interval
        self._batch = batch_size
        self._clock = clock

    def tend(self, partition: Partition, now: float, trim: bool) -> tuple[int, int]:
        """The self-check when it is due, a batch of an unfinished re-projection, and a trim when asked:
        (entries re-projected, entries trimmed)."""
        if partition.progress.check_due <= now:
            self.check(partition)
        reprojected = self.reproject(partition) if partition.progress.reproject is not None else 0
        return reprojected, self.trim(partition) if trim else 0

    def check(self, partition: Partition) -> None:
        """The self-check: compare, repair what Redis lost, start re-projecting what the read model lacks."""
        number, progress = partition.number, partition.progress
        progress.check_due = self._clock() + self._interval
        finding = compare(self._log, self._model, number)
        if finding.malformed is not None or finding.redis_behind or finding.mongo_behind:
            partition.written.clear()  # the documents are read afresh: the memo may describe what is gone
        if finding.trimmed:
            self._resync(partition)
            return
        if finding.malformed is not None:
            log.error("partition %d: %s; replacing it and re-projecting the partition from its log", number,
                      finding.malformed, extra={"fields": {"partition": number, "divergence": "malformed"}})
            self._model.create_checkpoint(number)
        if finding.redis_behind:
            repairs = repairs_from_streams(self._history, number, finding.suspects, finding.keep)
            self._model.write((), [CheckpointWrite(number, finding.keep, finding.keep_event_id)], repairs)
            lost = finding.checkpoint.entry_id if finding.checkpoint else "?"
            log.error("partition %d: Redis has lost log entries the read model had applied (checkpoint %s is "
                      "gone; the last entry before it is %s). Repaired %d accounts from their streams: %s",
                      number, lost, finding.keep, len(repairs), ", ".join(r.account_id for r in repairs),
                      extra={"fields": {"partition": number, "repaired": [r.account_id for r in repairs],
                                        "divergence": "redis-behind"}})
        progress.checkpoint, progress.checkpoint_event = finding.keep, finding.keep_event_id
        if finding.checkpoint is None and not finding.mongo_behind:
            self._model.create_checkpoint(number)  # never projected: it starts at the log's beginning
        if finding.mongo_behind and progress.reproject is None:
            progress.reproject = (finding.keep, finding.frontier)
            progress.diverged = f"re-projecting acknowledged entries after {finding.keep} (the read model is behind)"
            log.error("partition %d: the read model is behind its log (checkpoint %s, acknowledged up to %s); "
                      "re-projecting from the checkpoint", number, finding.keep, finding.frontier,
                      extra={"fields": {"partition": number, "divergence": "mongo-behind"}})
        if progress.reproject is None:
            progress.diverged = None

    def _resync(self, partition: Partition) -> None:
        number, progress = partition.number, partition.progress
        started = time.monotonic()
        log.error("partition %d: its log was trimmed past the read model's checkpoint (the projector was away "
                  "longer than PARTITION_LOG_MAX_ENTRIES covers, or the read model is older than the log); "
                  "re-synchronising the partition from the account streams", number,
                  extra={"fields": {"partition": number, "divergence": "log-trimmed"}})
        end, event_id, accounts = resync_from_streams(self._log, self._model, self._history, number, self._batch)
        partition.written.clear()
        progress.checkpoint, progress.checkpoint_event = end, event_id
        progress.reproject, progress.diverged, progress.settled_meanwhile = None, None, None
        self._announce(number, end)
        log.warning("partition %d: re-synchronised %d accounts from their streams in %.1f s; the checkpoint is "
                    "at %s", number, accounts, time.monotonic() - started, end,
                    extra={"fields": {"partition": number, "divergence": "resolved", "accounts": accounts}})

    def trim(self, partition: Partition) -> int:
        """Trim the partition's log behind every group's checkpoint (ours: what the read model has now)."""
        progress = partition.progress
        if self._trimmer is None or progress.checkpoint is None or progress.reproject is not None:
            return 0
        return self._trimmer.trim(partition.lease, partition.number, progress.checkpoint).removed

    def reproject(self, partition: Partition) -> int:
        """One batch of an unfinished re-projection: acknowledged entries the read model lacks, applied again
        (version-guarded, so whatever it still has is skipped), the checkpoint following."""
        number, progress = partition.number, partition.progress
        assert progress.reproject is not None
        after, until = progress.reproject
        chunk = self._log.scan(number, after, until, self._batch)
        if not chunk:
            meanwhile = progress.settled_meanwhile
            end = until if meanwhile is None or entry_position(until) >= meanwhile.position else meanwhile.entry_id
            event_id = self._log.event_id_at(number, end)
            self._model.write((), [CheckpointWrite(number, end, event_id)])
            progress.checkpoint, progress.checkpoint_event = end, event_id
            progress.reproject, progress.diverged, progress.settled_meanwhile = None, None, None
            self._announce(number, end)
            log.warning("partition %d: re-projection finished; the read model has caught up with its log",
                        number, extra={"fields": {"partition": number, "divergence": "resolved"}})
            return 0
        pending = self._log.pending_ids(number, chunk[0].entry_id, chunk[-1].entry_id, len(chunk))
        todo = [e for e in chunk if e.entry_id not in pending and e.account_id not in partition.retries.quarantine]
        last = chunk[-1]
        outcome = apply_entries(todo, self._model, self._history, CheckpointWrite(
            number, last.entry_id, last.event.event_id if last.event is not None else ""))
        for entry, error in outcome.failed:  # parked before, or poison the live path parks
            log.warning("re-projection skips entry %s of partition %d: %s", entry.entry_id, number, error)
        progress.reproject = (last.entry_id, until)
        return len(outcome.settled)
