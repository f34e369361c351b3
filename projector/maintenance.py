"""Operator repairs: rebuild the read model, catch up after it, replay parked events, and verify every document
against its account stream (finding the accounts by their streams' exact key names)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from tqdm import tqdm

from projector import projection
from projector.applying import apply_entries
from projector.dead_letters import DeadLetters, ParkedEntry
from projector.partition_log import PartitionLog, redis_errors, to_entry
from projector.projection import History, entry_position
from projector.read_model import (
    CheckpointWrite,
    Document,
    MalformedDocument,
    ReadModel,
    Repair,
    document,
    document_state,
)
from shared import account
from shared.account import Account
from shared.errors import CorruptHistory
from shared.keys import KeySpace
from shared.money import format_minor

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
                refused += len(projection.fold(built, entries, kept))
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
    return ReplayReport([e.entry_id for e in outcome.settled], remaining, released)


@dataclass(slots=True)
class VerifyReport:
    accounts: int = 0
    differences: list[str] = field(default_factory=list)
    stream_total: int = 0
    model_total: int = 0
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences and self.stream_total == self.model_total


def verify(keys: KeySpace, model: ReadModel, history: History, stream_accounts: Iterator[str],
           repair: bool = False, progress: bool = True) -> VerifyReport:
    """Compare every document with its account stream: version, balance, owner, the recorded event ids, and
    the sum of all balances. With ``repair``, rewrite every document that differs from its stream."""
    documents = model.documents()
    report = VerifyReport()
    seen: set[str] = set()
    with tqdm(disable=not progress, unit="account", desc="verify") as bar:
        for account_id in stream_accounts:
            seen.add(account_id)
            report.accounts += 1
            bar.update()
            events = history(account_id, 0, None)
            try:
                state = account.rebuild(account_id, events)
            except CorruptHistory as exc:
                report.differences.append(f"{account_id}: its stream cannot be folded: {exc.detail}")
                continue
            report.stream_total += state.balance
            doc = documents.get(account_id)
            problem = _difference(state, [e.event_id for e in events], doc)
            if doc is not None and isinstance(doc.get("balance_minor"), int):
                report.model_total += int(doc["balance_minor"])
            if problem:
                report.differences.append(f"{account_id}: {problem}")
                if repair:
                    partition = keys.partition_of(account_id)
                    position = (int(doc.get("log_ms", 0)), int(doc.get("log_seq", 0))) if doc else (0, 0)
                    model.write((), (), [Repair(account_id, state, [e.event_id for e in events], partition,
                                                position)])
                    report.repaired.append(account_id)
    for account_id, doc in documents.items():
        if account_id in seen:
            continue
        try:
            found = document_state(doc)
        except MalformedDocument as exc:  # not an account's: shown, never deleted on a guess
            report.differences.append(f"{exc.detail}; left as it is: remove it by hand if it does not belong")
            continue
        report.model_total += found.balance
        report.differences.append(f"{account_id}: in the read model, but no such account stream")
        if repair:
            model.write((), (), [Repair(account_id, None, [], keys.partition_of(account_id), (0, 0))])
            report.repaired.append(account_id)
    return report


def _difference(state: Account, event_ids: list[str], doc: Document | None) -> str | None:
    if doc is None:
        return f"missing from the read model (stream at version {state.version})"
    try:
        stored = document_state(doc)
    except MalformedDocument as exc:
        return exc.detail
    version, balance = stored.version, stored.balance
    if version != state.version:
        kind = "behind" if version < state.version else "ahead of"
        return f"read model at version {version} is {kind} the stream at {state.version}"
    if balance != state.balance:
        return f"balance {format_minor(balance)} in the read model, {format_minor(state.balance)} in the stream"
    if stored.owner != state.owner:
        return "the read model names another owner than the stream"
    recorded = list(doc.get("event_ids") or [])
    if recorded and recorded != event_ids[-len(recorded):]:
        return "the read model records other events than the stream holds for its latest versions"
    return None


def stream_accounts(client: redis.Redis, keys: KeySpace) -> Iterator[str]:
    """Every account with a stream under this prefix (SCAN on every master of a cluster). A key the SCAN
    pattern finds that is not exactly an account's stream key (a client's idempotency key shaped like one, a
    hand-made key) is foreign: logged, never taken for an account."""
    key: Any
    with redis_errors():
        for key in client.scan_iter(match=keys.pattern("stream"), count=1000):
            account_id = keys.stream_account(key)
            if account_id is None:
                log.warning("ignoring %r: not the stream key of an account", _shown(key),
                            extra={"fields": {"foreign_key": _shown(key)}})
                continue
            yield account_id


def _shown(key: bytes | str) -> str:
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    return text if len(text) <= 200 else text[:200] + "..."
