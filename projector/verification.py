"""``python -m projector verify``: every account's document against its stream (found by the streams' exact key
names, never by splitting a key), the sum of all balances, and, with ``repair``, the document rewritten from
the stream. What it found is kept as the read model's ``verify`` note, which ``status`` reports."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from tqdm import tqdm

from projector.projection import History
from projector.read_model import Document, MalformedDocument, ReadModel, Repair, document_state
from projector.statements import Transaction, transactions
from shared import account
from shared.account import Account
from shared.errors import ArchiveUnavailable, CorruptHistory
from shared.events import RecordedEvent
from shared.keys import KeySpace
from shared.money import format_minor

log = logging.getLogger("ledgerstream.projector")


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

    @property
    def all_repaired(self) -> bool:
        return bool(self.repaired) and len(self.repaired) == len(self.differences)


VERIFY_NOTE = "verify"


def record_verify(model: ReadModel, report: VerifyReport) -> None:
    """What this verify found, for ``status`` to show beside its own checks (which compare checkpoints with
    logs and cannot see a document gone wrong in between)."""
    model.write_note(VERIFY_NOTE, {"at_ms": int(time.time() * 1000), "accounts": report.accounts,
                                   "differences": len(report.differences), "repaired": len(report.repaired),
                                   "first": report.differences[:3]})


#: What ``verify --deep`` reads of an account in Redis besides its history: its snapshot, its version record.
Stored = Callable[[str], tuple[Account | None, int]]


def verify(keys: KeySpace, model: ReadModel, history: History, stream_accounts: Iterator[str],
           repair: bool = False, progress: bool = True, deep: Stored | None = None) -> VerifyReport:
    """Compare every document with its account's history (the archive's segments, then its stream): version,
    balance, owner, the recorded event ids, and the sum of all balances. With ``repair``, rewrite every
    document that differs from its history. With ``deep``, also check the account's snapshot and version
    record in Redis against the same fold. History that cannot be read (a segment missing or damaged, the
    archive down) is a difference, and its document is never rewritten."""
    documents = model.documents()
    report = VerifyReport()
    seen: set[str] = set()
    with tqdm(disable=not progress, unit="account", desc="verify") as bar:
        for account_id in stream_accounts:
            seen.add(account_id)
            report.accounts += 1
            bar.update()
            try:
                events = history(account_id, 0, None)
                state = account.rebuild(account_id, events)
            except CorruptHistory as exc:
                report.differences.append(f"{account_id}: its stream cannot be folded: {exc.detail}")
                continue
            except ArchiveUnavailable as exc:
                reason = exc.__cause__ if isinstance(exc.__cause__, ArchiveUnavailable) else exc
                report.differences.append(f"{account_id}: its archived history cannot be read: {reason.detail}")
                continue
            if deep is not None and (problem := _stored_difference(events, *deep(account_id))):
                report.differences.append(f"{account_id}: {problem}")
            report.stream_total += state.balance
            doc = documents.get(account_id)
            moved = transactions(account_id, events)
            problem = _difference(state, [e.event_id for e in events], doc) or _statement_difference(
                moved, model.transactions(account_id))
            if doc is not None and isinstance(doc.get("balance_minor"), int):
                report.model_total += int(doc["balance_minor"])
            if problem:
                report.differences.append(f"{account_id}: {problem}")
                if repair:
                    partition = keys.partition_of(account_id)
                    position = (int(doc.get("log_ms", 0)), int(doc.get("log_seq", 0))) if doc else (0, 0)
                    model.write((), (), [Repair(account_id, state, [e.event_id for e in events], partition,
                                                position, moved)])
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


def _stored_difference(events: list[RecordedEvent], snapshot: Account | None, version_record: int) -> str | None:
    """How Redis's snapshot and version record of an account disagree with its history folded, or None."""
    last = events[-1].version if events else 0
    if version_record != last:
        return f"its version record says {version_record}, its history ends at version {last}"
    if snapshot is None:
        return None
    folded = account.rebuild(snapshot.id, [e for e in events if e.version <= snapshot.version])
    if folded != snapshot:
        return f"its snapshot at version {snapshot.version} differs from its history folded to that version"
    return None


def _statement_difference(expected: list[Transaction], stored: list[Document]) -> str | None:
    """How the account's transactions in the read model differ from its stream's, or None."""
    have = [(d.get("version"), d.get("event_id"), d.get("amount_minor"), d.get("balance_minor")) for d in stored]
    want = [(t.version, t.event_id, t.amount_minor, t.balance_minor) for t in expected]
    if have == want:
        return None
    missing = len({w[0] for w in want} - {h[0] for h in have})
    return (f"its statement holds {len(have)} transactions, its stream {len(want)}"
            + (f" ({missing} missing)" if missing else " (differing)"))


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
