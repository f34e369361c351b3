"""What this replica wrote to the read model: the processor plans an account's next entries from the document
it wrote last, instead of reading it back first (one read-model round trip fewer on every batch's way to the
read model, the lag that read-your-writes waits on)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING

from projector.projection import Current, LogEntry, Plan

if TYPE_CHECKING:
    from projector.applying import Applied
    from projector.partitions import Partition


class Written:
    """The processor's memo of the documents it wrote during this lease, the most recent ``limit`` accounts:
    an account's next entry is planned from it instead of read back from the read model first. Only a hint:
    every write is guarded by the version it expects, a refused one is planned again from the read model, and
    the memo is forgotten whenever what it remembers may have changed under it (an outage, the self-check)."""

    __slots__ = ("_documents", "_limit")

    def __init__(self, limit: int = 1000) -> None:
        self._documents: OrderedDict[str, Current] = OrderedDict()
        self._limit = limit

    def get(self, account_id: str) -> Current | None:
        return self._documents.get(account_id)

    def put(self, current: Current) -> None:
        self._documents[current.state.id] = current
        self._documents.move_to_end(current.state.id)
        if len(self._documents) > self._limit:
            self._documents.popitem(last=False)

    def discard(self, account_id: str) -> None:
        self._documents.pop(account_id, None)

    def clear(self) -> None:
        self._documents.clear()


def recall(partitions: Mapping[int, Partition], entries: list[LogEntry]) -> dict[str, Current]:
    """The documents this replica wrote last for the accounts of ``entries``, when every one of their
    entries is newer (a redelivery is checked against the read model itself, never against the memo)."""
    known: dict[str, Current] = {}
    older: set[str | None] = set()
    for entry in entries:
        partition = partitions.get(entry.partition)
        memo = partition.written.get(entry.event.account_id) if partition and entry.event else None
        if memo is None or entry.event is None or entry.event.version <= memo.state.version:
            older.add(entry.account_id)
        else:
            known[memo.state.id] = memo
    return {k: v for k, v in known.items() if k not in older}


def remember(partitions: Mapping[int, Partition], plan: Plan, applied: Applied) -> None:
    """Keep what was written; forget what was refused or repaired."""
    for write in plan.writes:
        partition = partitions.get(write.entries[0].partition)
        if partition is None:
            continue
        if write.after.id in applied.refused:
            partition.written.discard(write.after.id)
        else:
            partition.written.put(Current(write.after, tuple(write.event_ids)))
    for account_id, (_, group) in plan.diverged.items():
        partition = partitions.get(group[0].partition)
        if partition is not None:
            partition.written.discard(account_id)
