"""Operator commands: rebuild the read model blue/green, and replay parked events."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

from tqdm import tqdm

from projector import projection
from projector.consumer import ParkedEntry, PartitionConsumer
from projector.projection import LogEntry
from projector.read_model import ReadModel
from shared.account import Account
from shared.errors import CorruptHistory
from shared.stream_codec import decode_mapping

log = logging.getLogger("ledgerstream.projector")
_SCAN_COUNT = 5_000
_PARKING_FIELDS = {b"original_id", b"error", b"deliveries", b"parked_at", b"group"}


@dataclass(frozen=True, slots=True)
class RebuildReport:
    events: int
    accounts: int
    refused: int
    caught_up: int
    seconds: float


def rebuild(consumer: PartitionConsumer, live: ReadModel, timestamps_kept: int,
            progress: bool = True) -> RebuildReport:
    """Project every partition log from its start into a fresh collection, swap it in, then catch up.

    The live collection keeps serving (and the live projector keeps updating it) until the swap. Events
    appended after the snapshot are applied to the new collection by a version-guarded catch-up pass, so
    nothing the live projector acknowledged in the meantime is missing from the new collection.
    """
    started = time.monotonic()
    ends = consumer.log_ends()
    states: dict[str, Account] = {}
    recent: dict[str, deque[str]] = {}
    events = refused = 0
    with tqdm(total=consumer.total_length(), disable=not progress, unit="event", desc="rebuild") as bar:
        for partition in consumer.partitions:
            after = "0-0"
            while ends[partition] != "0-0":
                entries = consumer.scan(partition, after, ends[partition], _SCAN_COUNT)
                if not entries:
                    break
                decoded = [e.event for e in entries if e.event is not None]
                refused += len(entries) - len(decoded) + len(projection.fold(decoded, states))
                for entry in entries:
                    if entry.event is not None:
                        recent.setdefault(entry.event.account_id, deque(maxlen=timestamps_kept)).append(entry.entry_id)
                events += len(entries)
                after = entries[-1].entry_id
                bar.update(len(entries))
    built = live.sibling(f"{live.name}_rebuild_{int(time.time())}")
    built.recreate()
    built.insert(states.values(), {k: list(v) for k, v in recent.items()})
    live.replace_with(built)
    caught_up = catch_up(consumer, live, ends)
    return RebuildReport(events, len(states), refused, caught_up, time.monotonic() - started)


def catch_up(consumer: PartitionConsumer, model: ReadModel, after: dict[int, str]) -> int:
    """Apply, version-guarded, every entry past ``after`` (per partition) that the model lacks."""
    applied = 0
    for partition in consumer.partitions:
        cursor = after[partition]
        while True:
            entries = consumer.scan(partition, cursor, "+", _SCAN_COUNT)
            if not entries:
                break
            plan = projection.plan(entries, model.current(e.event.account_id for e in entries if e.event))
            done, _ = model.write(plan.writes)
            applied += sum(len(w.entries) for w in plan.writes if w.after.id in done)
            cursor = entries[-1].entry_id
    return applied


@dataclass(frozen=True, slots=True)
class ReplayReport:
    replayed: list[str]
    remaining: list[tuple[str, str]]


def replay_parked(consumer: PartitionConsumer, model: ReadModel, partitions: list[int] | None = None,
                  ids: set[str] | None = None) -> ReplayReport:
    """Apply parked events (after a fix) with the same version-guarded writes, and unpark what took."""
    parked = [p for p in consumer.parked(partitions) if ids is None or p.parked_id in ids or p.original_id in ids]
    by_entry: dict[tuple[int, str], ParkedEntry] = {}
    entries: list[LogEntry] = []
    for item in parked:
        fields = {k: v for k, v in item.fields.items() if k not in _PARKING_FIELDS}
        try:
            event = decode_mapping(fields)
        except CorruptHistory as exc:
            entries.append(LogEntry(item.partition, item.original_id, fields, None, exc.detail))
        else:
            entries.append(LogEntry(item.partition, item.original_id, fields, event))
        by_entry[item.partition, item.original_id] = item
    plan = projection.plan(entries, model.current(e.event.account_id for e in entries if e.event))
    done, refused = model.write(plan.writes)
    took = list(plan.done) + [e for w in plan.writes if w.after.id in done for e in w.entries]
    for entry in took:
        consumer.unpark(by_entry[entry.partition, entry.entry_id])
    remaining = [(e.entry_id, error) for e, error in plan.failed]
    remaining += [(e.entry_id, "gap: an earlier version is neither projected nor parked") for e in plan.deferred]
    remaining += [(e.entry_id, refused.get(w.after.id, "lost a race; run replay again"))
                  for w in plan.writes if w.after.id not in done for e in w.entries]
    return ReplayReport([e.entry_id for e in took], remaining)
