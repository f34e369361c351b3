"""Pure projection logic: which log entries to apply, skip, defer or refuse, given the read model's versions.

Delivery is at-least-once and, with several consumers, out of order, so every decision is guarded by the
version the read model holds: event ``v`` applies only on top of ``v - 1``; ``v`` at or below the stored
version was applied before (acknowledge, skip); anything beyond the next version is a gap (leave it pending,
retry later). Several events of one account in a batch fold into a single write.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from shared import account
from shared.account import Account
from shared.errors import CorruptHistory
from shared.events import RecordedEvent


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One entry of a partition log, as delivered to this consumer."""

    partition: int
    entry_id: str
    fields: Mapping[bytes, bytes]
    event: RecordedEvent | None
    #: Why ``event`` is None: the entry could not be decoded.
    error: str | None = None


@dataclass(frozen=True, slots=True)
class AccountWrite:
    """One version-guarded write: move ``after.id`` from ``expected_version`` to ``after.version``."""

    expected_version: int
    after: Account
    entries: list[LogEntry]

    @property
    def entry_ids(self) -> list[str]:
        ids = (e.entry_id for e in self.entries if e.event is not None and e.event.version > self.expected_version)
        return list(dict.fromkeys(ids))  # one batch may hold the same entry twice (claimed and re-read)


@dataclass(slots=True)
class Plan:
    writes: list[AccountWrite] = field(default_factory=list)
    #: Already in the read model: acknowledge without writing.
    done: list[LogEntry] = field(default_factory=list)
    #: Beyond the next version (a gap): leave pending and retry.
    deferred: list[LogEntry] = field(default_factory=list)
    #: Cannot be applied (undecodable, unknown type, bad payload): retry, and park after max deliveries.
    failed: list[tuple[LogEntry, str]] = field(default_factory=list)


def plan(entries: Iterable[LogEntry], current: Mapping[str, Account]) -> Plan:
    """Decide what to do with ``entries``; ``current`` is the read model's state of their accounts."""
    result = Plan()
    by_account: dict[str, list[LogEntry]] = defaultdict(list)
    for entry in entries:
        if entry.event is None:
            result.failed.append((entry, entry.error or "undecodable entry"))
        else:
            by_account[entry.event.account_id].append(entry)
    for account_id, group in by_account.items():
        _plan_account(result, current.get(account_id) or Account(account_id), group)
    return result


def _plan_account(result: Plan, state: Account, group: list[LogEntry]) -> None:
    group.sort(key=lambda e: _event(e).version)
    start = state.version
    applied: list[LogEntry] = []
    blocked: str | None = None
    for entry in group:
        event = _event(entry)
        if event.version <= start:
            result.done.append(entry)  # a redelivery of something already projected
        elif event.version <= state.version:
            applied.append(entry)  # the same version twice in one batch: ack it with the write
        elif blocked is not None:
            result.deferred.append(entry)
        elif event.version != state.version + 1:
            blocked = f"waiting for version {state.version + 1} of {state.id}"
            result.deferred.append(entry)
        else:
            try:
                state = account.apply_recorded(state, event)
            except CorruptHistory as exc:
                result.failed.append((entry, exc.detail))
                blocked = exc.detail
                continue
            applied.append(entry)
    if applied:
        result.writes.append(AccountWrite(start, state, applied))


def _event(entry: LogEntry) -> RecordedEvent:
    assert entry.event is not None
    return entry.event


def fold(events: Iterable[RecordedEvent], states: dict[str, Account]) -> list[tuple[RecordedEvent, str]]:
    """Apply ``events`` in log order to ``states`` in place (the rebuild path); return the ones refused."""
    refused: list[tuple[RecordedEvent, str]] = []
    for event in events:
        state = states.get(event.account_id) or Account(event.account_id)
        if event.version <= state.version:
            continue
        try:
            states[event.account_id] = account.apply_recorded(state, event)
        except CorruptHistory as exc:
            refused.append((event, exc.detail))
    return refused
