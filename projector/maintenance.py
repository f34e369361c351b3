"""Operator repairs: rebuild the read model, catch up after it, and replay parked events (``verification.py``
checks every document against its stream)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from projector import projection
from projector.applying import apply_entries
from projector.dead_letters import DeadLetters, ParkedEntry
from projector.partition_log import PartitionLog, to_entry
from projector.projection import History, entry_position
from projector.read_model import (
    CheckpointWrite,
    ReadModel,
    document,
)
from projector.statements import Transaction

log = logging.getLogger("ledgerstream.projector")
_SCAN_COUNT = 5_000


@dataclass(frozen=True, slots=True)
class RebuildReport:
    events: int
    accounts: int
    refused: int
    caught_up: int
    seconds: float


def rebuild(partition_log: PartitionLog, live: ReadModel, history: History, kept: int,
            progress: bool = True) -> RebuildReport:
    """Project every partition log from its start into a fresh collection, copy it over the live one, then
    catch up.

    The live collection keeps serving (and the live projector keeps updating it) throughout. Events appended
    after the snapshot of the log ends are applied by a version-guarded catch-up, so nothing the live
    projector acknowledged in the meantime is missing.
    """
    started = time.monotonic()
    partitions = range(partition_log.keys.partitions)
    ends = {p: partition_log.end(p) for p in partitions}
    built: dict[str, projection.Built] = {}
    events = refused = 0
    with tqdm(total=sum(partition_log.length(p) for p in partitions), disable=not progress, unit="event",
              desc="rebuild") as bar:
        for partition in partitions:
            for entries in _chunks(partition_log, partition, "0-0", ends[partition]):
                moved: list[Transaction] = []
                refused += len(projection.fold(built, entries, kept, moved))
                live.put_transactions(moved)  # each the same document as the live projector's: written in place
                events += len(entries)
                bar.update(len(entries))
    fresh = live.sibling(f"{live.name}_rebuild_{int(time.time())}")
    fresh.recreate()
    fresh.insert(document(b.state, list(b.event_ids), list(b.log_ids), b.partition, b.position)
                 for b in built.values())
    live.replace_with(fresh)
    live.write((), [CheckpointWrite(p, end, _event_id(partition_log, p, end)) for p, end in ends.items()
                    if end != "0-0"])
    caught_up = catch_up(partition_log, live, history, ends)
    return RebuildReport(events, len(built), refused, caught_up, time.monotonic() - started)


def _chunks(partition_log: PartitionLog, partition: int, after: str, until: str
            ) -> Iterator[list[projection.LogEntry]]:
    while until != "0-0":
        entries = partition_log.scan(partition, after, until, _SCAN_COUNT)
        if not entries:
            return
        yield entries
        after = entries[-1].entry_id


def _event_id(partition_log: PartitionLog, partition: int, entry_id: str) -> str:
    found = partition_log.entry(partition, entry_id)
    return found.event.event_id if found is not None and found.event is not None else ""


def catch_up(partition_log: PartitionLog, model: ReadModel, history: History, after: dict[int, str]) -> int:
    """Apply, version-guarded, every entry past ``after`` (per partition) that the model lacks."""
    applied = 0
    for partition, start in after.items():
        for entries in _chunks(partition_log, partition, start, "+"):
            last = entries[-1]
            outcome = apply_entries(entries, model, history, CheckpointWrite(
                partition, last.entry_id, last.event.event_id if last.event is not None else ""))
            applied += sum(1 for e in outcome.settled if e.event is not None)
    return applied


@dataclass(frozen=True, slots=True)
class ReplayReport:
    replayed: list[str]
    remaining: list[tuple[str, str]]
    released: list[str]
    #: Every parked id and original entry id the replay took up (to name the asked-for ids it did not find).
    matched: set[str] = field(default_factory=set)


def replay_parked(dead_letters: DeadLetters, model: ReadModel, history: History,
                  partitions: Sequence[int] | None = None, ids: set[str] | None = None) -> ReplayReport:
    """Apply parked events again (after a fix), in log order; unpark what took, and lift the quarantine of
    every account left with nothing parked."""
    chosen = list(range(dead_letters.keys.partitions)) if partitions is None else list(partitions)
    parked = [p for p in dead_letters.parked(chosen) if ids is None or p.parked_id in ids or p.original_id in ids]
    parked.sort(key=lambda p: entry_position(p.original_id))
    by_entry: dict[tuple[int, str], ParkedEntry] = {}
    entries = []
    for item in parked:
        entries.append(to_entry(item.partition, item.original_id, item.entry_fields))
        by_entry[item.partition, item.original_id] = item
    outcome = apply_entries(entries, model, history)
    for entry in outcome.settled:
        dead_letters.unpark(by_entry[entry.partition, entry.entry_id])
    remaining = [(e.entry_id, error) for e, error in outcome.failed]
    still = {(p.partition, p.entry_fields.get(b"account_id", b"").decode()) for p in dead_letters.parked(chosen)}
    released = []
    for partition in chosen:
        for account_id in dead_letters.quarantined(partition):
            if (partition, account_id) not in still:
                dead_letters.lift(partition, account_id)
                released.append(account_id)
    matched = {p.parked_id for p in parked} | {p.original_id for p in parked}
    return ReplayReport([e.entry_id for e in outcome.settled], remaining, released, matched)
