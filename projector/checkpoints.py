"""Moving each partition's checkpoint in the read model as batches settle: to the last entry a batch settles,
unless a re-projection of older entries is under way, and only from where this replica left it.

Before a checkpoint moves on, the entry it names is looked up in the log (every partition's in one round trip
per node): once moved past a Redis that went back in time, the evidence would be gone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from projector import projection
from projector.partition_log import PartitionLog
from projector.partitions import Partition
from projector.projection import LogEntry, entry_position
from projector.read_model import CheckpointWrite

log = logging.getLogger("ledgerstream.projector")


class Checkpoints:
    def __init__(self, partition_log: PartitionLog, partitions: Mapping[int, Partition]) -> None:
        self._log = partition_log
        self._partitions = partitions

    def moves(self, plan: projection.Plan) -> list[CheckpointWrite]:
        """Each partition's new checkpoint after ``plan``: the last entry it settles, unless a re-projection
        of older entries is still under way (then everything up to its cursor is known to be in)."""
        last: dict[int, LogEntry] = {}
        candidates = [*plan.done, *(e for w in plan.writes for e in w.entries),
                      *(e for _, entries in plan.diverged.values() for e in entries)]
        for entry in candidates:
            if entry.partition not in last or entry.position > last[entry.partition].position:
                last[entry.partition] = entry
        movable: dict[int, LogEntry] = {}
        for number, entry in last.items():
            partition = self._partitions.get(number)
            if partition is None:
                continue
            progress = partition.progress
            if progress.reproject is not None:
                if progress.settled_meanwhile is None or entry.position > progress.settled_meanwhile.position:
                    progress.settled_meanwhile = entry
                continue
            if progress.checkpoint is None or entry_position(progress.checkpoint) >= entry.position:
                continue  # unknown until the self-check has run, or already past this entry
            movable[number] = entry
        moves = []
        for number in self._still_in_log(list(movable)):
            entry, progress = movable[number], self._partitions[number].progress
            event_id = entry.event.event_id if entry.event else ""
            moves.append(CheckpointWrite(number, entry.entry_id, event_id, expected=progress.checkpoint))
            progress.checkpoint, progress.checkpoint_event = entry.entry_id, event_id
        return moves

    def _still_in_log(self, numbers: list[int]) -> list[int]:
        """Those of ``numbers`` whose checkpoint entry is still in the log, holding the same event; the others
        are forgotten, so the self-check looks at once."""
        wanted = {n: self._partitions[n].progress.checkpoint for n in numbers}
        looked = self._log.entries({n: c for n, c in wanted.items() if c not in (None, "0-0")})
        kept = []
        for number in numbers:
            progress = self._partitions[number].progress
            if number not in looked:
                kept.append(number)
                continue
            found = looked[number]
            if found is not None and (found.event is None or not progress.checkpoint_event
                                      or found.event.event_id == progress.checkpoint_event):
                kept.append(number)
                continue
            log.error("partition %d: the log no longer holds checkpoint %s (trimmed while we were behind, or lost "
                      "by Redis); checking the read model against it now", number, progress.checkpoint,
                      extra={"fields": {"partition": number, "divergence": "redis-behind"}})
            progress.forget()
            self._partitions[number].written.clear()
        return kept

    def moved_under_us(self, numbers: list[int]) -> None:
        """A checkpoint was not where we left it: the collection was wiped, restored or rebuilt under us.
        Forget what we believed and let the self-check find out, at once."""
        for number in numbers:
            partition = self._partitions.get(number)
            if partition is not None:
                partition.progress.forget()
                partition.written.clear()
        log.error("the read model's checkpoints of partitions %s are not where this projector left them "
                  "(wiped, restored or rebuilt?); checking them against the logs now", numbers,
                  extra={"fields": {"partitions": numbers, "divergence": "checkpoint-moved"}})
