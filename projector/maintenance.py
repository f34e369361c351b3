"""Operator repairs: rebuild the read model, catch up after it, and replay parked events (``verification.py``
checks every document against its stream)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from projector import projection
from projector.applying import apply_entries
from projector.dead_letters import DeadLetters, ParkedEntry
from projector.partition_log import PartitionLog, to_entry
from projector.projection import History, entry_position
from projector.read_model import CheckpointWrite, Document, ReadModel, document
from projector.recovery import resync_from_streams
from projector.statements import transactions
from shared import account
from shared.errors import CorruptHistory

log = logging.getLogger("ledgerstream.projector")
_SCAN_COUNT = 5_000
_INSERT_BATCH = 1_000


@dataclass(frozen=True, slots=True)
class RebuildReport:
    events: int
    accounts: int
    refused: int
    caught_up: int
    seconds: float


def rebuild(partition_log: PartitionLog, live: ReadModel, history: History, accounts: Iterable[str], kept: int,
            progress: bool = True) -> RebuildReport:
    """Fold every account's stream (``accounts``: every account with one) into a fresh collection, copy it
    over the live one, then catch up.

    The streams, not the partition logs: the logs are trimmed once every projector group has their entries,
    so only the streams hold every event. The live collection keeps serving (and the live projector keeps
    updating it) throughout. Each partition log's end is read before any stream: events appended after it
    are applied by a version-guarded catch-up, so nothing the live projector acknowledged in the meantime is
    missing. A rebuilt document names no log entries of its events (``timestamps``) until new ones arrive.
    """
    started = time.monotonic()
    keys = partition_log.keys
    ends = {p: partition_log.end(p) for p in range(keys.partitions)}
    fresh = live.sibling(f"{live.name}_rebuild_{int(time.time())}")
    fresh.recreate()
    built: list[Document] = []
    events = refused = count = 0
    for account_id in tqdm(accounts, disable=not progress, unit="account", desc="rebuild"):
        recorded = history(account_id, 0, None)
        events += len(recorded)
        try:
            state = account.rebuild(account_id, recorded)
        except CorruptHistory as exc:
            refused += 1
            log.error("rebuild: %s left out, its stream cannot be folded: %s", account_id, exc.detail,
                      extra={"fields": {"account_id": account_id}})
            continue
        if not state.exists:
            continue
        partition = keys.partition_of(account_id)
        built.append(document(state, [e.event_id for e in recorded[-kept:]], [], partition,
                              entry_position(ends[partition])))
        live.put_transactions(transactions(account_id, recorded))  # the live projector's very documents
        count += 1
        if len(built) >= _INSERT_BATCH:
            fresh.insert(built)
            built = []
    fresh.insert(built)
    live.replace_with(fresh)
    live.write((), [CheckpointWrite(p, end, partition_log.event_id_at(p, end)) for p, end in ends.items()
                    if end != "0-0"])
    caught_up = catch_up(partition_log, live, history, ends)
    return RebuildReport(events, count, refused, caught_up, time.monotonic() - started)


def _chunks(partition_log: PartitionLog, partition: int, after: str, until: str
            ) -> Iterator[list[projection.LogEntry]]:
    while until != "0-0":
        entries = partition_log.scan(partition, after, until, _SCAN_COUNT)
        if not entries:
            return
        yield entries
        after = entries[-1].entry_id


def catch_up(partition_log: PartitionLog, model: ReadModel, history: History, after: dict[int, str]) -> int:
    """Apply, version-guarded, every entry past ``after`` (per partition) that the model lacks. A log trimmed
    past ``after`` meanwhile (a live projector trims behind its checkpoint) cannot say what came since: that
    partition is re-synchronised from its accounts' streams instead."""
    applied = 0
    for partition, start in after.items():
        if partition_log.trimmed_past(partition, start):
            accounts = resync_from_streams(partition_log, model, history, partition, _SCAN_COUNT)[2]
            log.warning("partition %d: its log was trimmed past %s meanwhile; re-synchronised its %d accounts from "
                        "their streams", partition, start, accounts,
                        extra={"fields": {"partition": partition, "accounts": accounts}})
            continue
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
