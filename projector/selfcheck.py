"""A read model that knows where it is: compare a partition's checkpoint (in MongoDB) with its log (in Redis).

* **Redis behind** (it lost writes: ``appendfsync everysec`` and a power cut, an asynchronous replica
  promoted): the checkpoint's entry is gone from the log, or holds another event. Versions were or will be
  handed out again, so every account the read model advanced past what the log still holds is rebuilt from
  its stream, and the repair is logged by account id.
* **MongoDB behind** (wiped, or restored from an old backup): entries the group acknowledged lie after the
  checkpoint. They are projected again from the checkpoint on, version-guarded.

``status`` uses the same comparison, so it never reports a healthy lag over a read model that disagrees.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from projector.projection import LogEntry, entry_position
from projector.read_model import Checkpoint, MalformedDocument, ReadModel, Repair
from projector.reader import LogReader
from shared import account
from shared.errors import CorruptHistory
from shared.events import RecordedEvent

log = logging.getLogger("ledgerstream.projector")

#: Reads an account's events with version in (after, up to]; ``None``: to the end.
History = Callable[[str, int, int | None], list[RecordedEvent]]
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

    @property
    def diverged(self) -> bool:
        return self.redis_behind or self.mongo_behind


def compare(reader: LogReader, model: ReadModel, partition: int) -> Finding:
    malformed = None
    try:
        checkpoint = model.checkpoint(partition)
    except MalformedDocument as exc:
        checkpoint, malformed = None, exc.detail
    info = reader.group_info(partition)
    frontier = info.last_delivered if info else "0-0"
    keep, keep_event_id = "0-0", ""
    redis_behind = False
    suspects: list[str] = []
    if checkpoint is not None and checkpoint.entry_id != "0-0":
        found = reader.entry(partition, checkpoint.entry_id)
        if found is None or (checkpoint.event_id and found.event is not None
                             and found.event.event_id != checkpoint.event_id):
            redis_behind = True
            # Strictly before the checkpoint: if its id exists again, it holds another event than ours.
            keep = reader.last_before(partition, checkpoint.entry_id) or "0-0"
            suspects = model.applied_after(partition, entry_position(keep))
            kept = reader.entry(partition, keep) if keep != "0-0" else None
            keep_event_id = kept.event.event_id if kept is not None and kept.event is not None else ""
        else:
            keep, keep_event_id = checkpoint.entry_id, checkpoint.event_id
    behind_by = 0
    if entry_position(keep) < entry_position(frontier):
        entries = reader.scan(partition, keep, frontier, _SCAN_CAP)
        if entries:
            pending = reader.pending_ids(partition, entries[0].entry_id, entries[-1].entry_id, _SCAN_CAP)
            behind_by = sum(1 for e in entries if e.entry_id not in pending)
    return Finding(checkpoint, keep, keep_event_id, frontier, redis_behind, suspects, behind_by > 0, behind_by,
                   malformed)


def repair_from_stream(history: History, account_id: str, partition: int,
                       entries: Sequence[LogEntry] = (), at: str = "0-0") -> Repair | None:
    """The document ``account_id`` should have, from its whole stream (None if the stream cannot be folded)."""
    events = history(account_id, 0, None)
    try:
        state = account.rebuild(account_id, events)
    except CorruptHistory as exc:
        log.error("cannot repair %s from its stream: %s", account_id, exc.detail,
                  extra={"fields": {"account_id": account_id}})
        return None
    position = max([entry_position(at), *(e.position for e in entries)])
    return Repair(account_id, state if state.exists else None, [e.event_id for e in events], partition, position)


def repairs_from_streams(history: History, partition: int, accounts: Sequence[str], at: str) -> list[Repair]:
    repairs = [repair_from_stream(history, account_id, partition, at=at) for account_id in accounts]
    return [r for r in repairs if r is not None]
