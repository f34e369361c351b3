"""Pure projection logic: given log entries and what the read model holds, decide what to write, what to
acknowledge without writing, what needs the account's own history, what cannot be applied, and where the
read model disagrees with the log. No I/O.

Each partition log is read by one owner, in order, so an account's events normally arrive in version order.
They may still arrive ahead of the document (a document restored from an old backup, a log entry claimed
from a dead consumer, a document deleted by hand): the account stream is the source of truth and is
readable at any time, so the missing versions are *fetched*, never waited for. Every write is guarded by
the version the document holds, and every applied version's event id is recorded, so a redelivery is
recognised and a reissued version (Redis lost writes and handed the number out again) is detected.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from projector.statements import Transaction, transaction
from shared import account
from shared.account import Account
from shared.errors import CorruptHistory
from shared.events import RecordedEvent

#: Reads an account's events with version in (after, up to]; ``None``: to the end. The account stream is the
#: source of truth the planner fills gaps from; the caller supplies it.
History = Callable[[str, int, int | None], list[RecordedEvent]]


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One entry of a partition log, as delivered to this consumer."""

    partition: int
    entry_id: str
    fields: Mapping[bytes, bytes]
    event: RecordedEvent | None
    #: Why ``event`` is None: the entry could not be decoded.
    error: str | None = None

    @property
    def account_id(self) -> str | None:
        if self.event is not None:
            return self.event.account_id
        raw = self.fields.get(b"account_id")
        return raw.decode(errors="replace") if raw else None

    @property
    def position(self) -> tuple[int, int]:
        """The entry id as numbers, so ids compare in log order."""
        return entry_position(self.entry_id)


def entry_position(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True, slots=True)
class Current:
    """What the read model holds for an account: its state and the event ids of its latest versions."""

    state: Account
    #: The ids of the latest events, oldest first; the last one is ``state.version``'s.
    event_ids: tuple[str, ...] = ()
    #: Why the stored document cannot be trusted (not one the projector wrote); None when it can.
    malformed: str | None = None

    def recorded_id(self, version: int) -> str | None:
        back = self.state.version - version
        if back < 0 or back >= len(self.event_ids):
            return None
        return self.event_ids[-1 - back]


@dataclass(slots=True)
class AccountWrite:
    """One version-guarded write: move ``after.id`` from ``expected_version`` to ``after.version``."""

    expected_version: int
    after: Account
    #: Event ids of versions ``expected_version + 1 .. after.version``, in order.
    event_ids: list[str]
    #: The log entries this write settles (acknowledged once it is stored).
    entries: list[LogEntry]
    #: The money movements among the new versions, for the statements (written once the document is).
    transactions: list[Transaction] = field(default_factory=list)

    @property
    def entry_ids(self) -> list[str]:
        """Log ids of the entries that brought new versions, in version order, each once."""
        ids = (e.entry_id for e in sorted(self.entries, key=_version)
               if e.event is not None and e.event.version > self.expected_version)
        return list(dict.fromkeys(ids))

    @property
    def last_position(self) -> tuple[int, int]:
        return max(e.position for e in self.entries)


@dataclass(slots=True)
class Plan:
    writes: list[AccountWrite] = field(default_factory=list)
    #: Already in the read model: acknowledge without writing.
    done: list[LogEntry] = field(default_factory=list)
    #: Ahead of the document: read these versions (after, up to] from the account stream, then plan again.
    need_history: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Cannot be applied (undecodable, unknown type, bad payload): retry, and park after max deliveries.
    failed: list[tuple[LogEntry, str]] = field(default_factory=list)
    #: The read model disagrees with the log about an applied version: repair the account from its stream,
    #: then acknowledge these entries.
    diverged: dict[str, tuple[str, list[LogEntry]]] = field(default_factory=dict)


def plan(entries: Iterable[LogEntry], current: Mapping[str, Current],
         history: Mapping[str, list[RecordedEvent]] | None = None) -> Plan:
    """Decide what to do with ``entries``. ``current`` is the read model's view of their accounts;
    ``history`` holds events read from account streams for an earlier plan's ``need_history``."""
    result = Plan()
    by_account: dict[str, list[LogEntry]] = defaultdict(list)
    for entry in entries:
        if entry.event is None:
            result.failed.append((entry, entry.error or "undecodable entry"))
        else:
            by_account[entry.event.account_id].append(entry)
    for account_id, group in by_account.items():
        known = current.get(account_id) or Current(Account(account_id))
        _plan_account(result, known, sorted(group, key=_version), (history or {}).get(account_id))
    return result


def _plan_account(result: Plan, known: Current, group: list[LogEntry], history: list[RecordedEvent] | None) -> None:
    if known.malformed is not None:
        result.diverged[known.state.id] = (known.malformed, group)
        return
    start = known.state.version
    fresh: list[LogEntry] = []
    for entry in group:
        event = _event(entry)
        if event.version > start:
            fresh.append(entry)
            continue
        recorded = known.recorded_id(event.version)
        if recorded is not None and recorded != event.event_id:
            reason = (f"version {event.version} of {known.state.id} is event {event.event_id} in the log but "
                      f"{recorded} in the read model")
            result.diverged[known.state.id] = (reason, group)
            return
        result.done.append(entry)  # a redelivery of something already projected
    if not fresh:
        return
    target = _event(fresh[-1]).version
    by_version = _versions(result, start, target, fresh, history)
    if by_version is None:
        return
    missing = [v for v in range(start + 1, target + 1) if v not in by_version]
    if missing:
        if history is None:
            result.need_history[known.state.id] = (start, target)
        else:
            reason = f"the stream of {known.state.id} lacks version {missing[0]} that its log entries follow"
            result.failed += [(entry, reason) for entry in fresh]
        return
    state = known.state
    applied: list[str] = []
    moved: list[Transaction] = []
    for version in range(start + 1, target + 1):
        try:
            state = account.apply_recorded(state, by_version[version])
        except CorruptHistory as exc:
            behind = f"follows version {version} of {known.state.id}, which cannot be applied: {exc.detail}"
            result.failed += [(e, exc.detail if _event(e).version == version else behind)
                              for e in fresh if _event(e).version >= version]
            fresh = [e for e in fresh if _event(e).version < version]
            break
        applied.append(by_version[version].event_id)
        moved += filter(None, (transaction(by_version[version], state),))
    if applied and fresh:
        result.writes.append(AccountWrite(start, state, applied, fresh, moved))


def _versions(result: Plan, start: int, target: int, fresh: list[LogEntry],
              history: list[RecordedEvent] | None) -> dict[int, RecordedEvent] | None:
    """Versions ``start + 1 .. target`` by number, from the entries and the account's stream; None (with the
    entries failed) when the log and the stream disagree about a version."""
    by_version = {event.version: event for event in history or () if start < event.version <= target}
    for entry in fresh:
        event = _event(entry)
        truth = by_version.setdefault(event.version, event)
        if truth.event_id != event.event_id:
            reason = (f"log entry {entry.entry_id} holds event {event.event_id} as version {event.version}, "
                      f"but the account stream holds {truth.event_id}")
            result.failed += [(other, reason) for other in fresh]
            return None
    return by_version


def _event(entry: LogEntry) -> RecordedEvent:
    assert entry.event is not None
    return entry.event


def _version(entry: LogEntry) -> int:
    return entry.event.version if entry.event is not None else 0
