"""Applying log entries to the read model: plan them with the pure ``projection`` (the versions they skip read
from the account streams), repair the accounts whose document disagrees with their stream, write, and say
what became of each entry. The live processor, recovery's re-projection and the operator tools all apply
entries this one way, and differ only in what they do with the outcome (acknowledge, move a checkpoint,
unpark)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from projector import projection
from projector.projection import Current, History, LogEntry, entry_position
from projector.read_model import CheckpointWrite, ReadModel, Repair
from projector.statements import MONEY_EVENTS, transactions
from shared import account
from shared.errors import CorruptHistory

log = logging.getLogger("ledgerstream.projector")


def plan_entries(entries: Sequence[LogEntry], model: ReadModel, history: History,
                 known: Mapping[str, Current] | None = None) -> projection.Plan:
    """Plan ``entries`` against the read model; read the versions they skip from the account streams.
    ``known``: documents already in hand (what this replica last wrote), not read again."""
    known = known or {}
    current = {**model.current(e.event.account_id for e in entries
                               if e.event is not None and e.event.account_id not in known), **known}
    plan = projection.plan(entries, current)
    if not plan.need_history:
        return plan
    fetched = {account_id: history(account_id, after, upto) for account_id, (after, upto) in plan.need_history.items()}
    return projection.plan(entries, current, fetched)


def repair_from_stream(history: History, account_id: str, partition: int, entries: Sequence[LogEntry] = (),
                       at: str = "0-0") -> Repair | None:
    """The document ``account_id`` should have, from its whole stream (None if the stream cannot be folded)."""
    events = history(account_id, 0, None)
    try:
        state = account.rebuild(account_id, events)
    except CorruptHistory as exc:
        log.error("cannot repair %s from its stream: %s", account_id, exc.detail,
                  extra={"fields": {"account_id": account_id}})
        return None
    position = max([entry_position(at), *(e.position for e in entries)])
    return Repair(account_id, state if state.exists else None, [e.event_id for e in events], partition, position,
                  transactions(account_id, events))


def restore_transactions(done: Sequence[LogEntry], model: ReadModel, history: History) -> None:
    """The transactions of redelivered entries that the read model lacks: an account's document is written
    before its transactions, so a crash in between leaves the document ahead and the entries unacknowledged.
    Their redelivery finds the document done; the transactions are folded from the account's stream here, before
    anything acknowledges them. (One lookup per batch with redeliveries; a stream read only for a gap.)"""
    wanted = {(e.event.account_id, e.event.version) for e in done
              if e.event is not None and e.event.type in MONEY_EVENTS}
    missing = model.missing_transactions(wanted) if wanted else set()
    for account_id in sorted({account_id for account_id, _ in missing}):
        upto = max(version for owner, version in missing if owner == account_id)
        try:
            found = transactions(account_id, history(account_id, 0, upto))
        except CorruptHistory as exc:  # the document was folded from it: only a stream changed since would do
            log.error("cannot restore the transactions of %s from its stream: %s", account_id, exc.detail,
                      extra={"fields": {"account_id": account_id}})
            continue
        model.put_transactions(t for t in found if (account_id, t.version) in missing)


@dataclass(slots=True)
class Applied:
    #: Entries written now, by their account's version-guarded write.
    written: list[LogEntry] = field(default_factory=list)
    #: Entries the read model already had (redeliveries).
    skipped: list[LogEntry] = field(default_factory=list)
    #: Entries of accounts repaired from their stream (their document disagreed with the log).
    repaired: list[LogEntry] = field(default_factory=list)
    #: Entries that cannot be applied, and why.
    failed: list[tuple[LogEntry, str]] = field(default_factory=list)
    #: False when a guarded checkpoint move found its checkpoint moved under it.
    checkpoints_held: bool = True
    #: Accounts whose guarded write was refused: the document was not at the version the plan expected.
    refused: set[str] = field(default_factory=set)

    @property
    def settled(self) -> list[LogEntry]:
        """Everything now reflected in the read model."""
        return [*self.written, *self.skipped, *self.repaired]


def write_plan(plan: projection.Plan, model: ReadModel, history: History,
               checkpoints: Sequence[CheckpointWrite] = ()) -> Applied:
    if plan.done:
        restore_transactions(plan.done, model, history)
    repairs = [r for r in (repair_from_stream(history, account_id, group[0].partition, group)
                           for account_id, (_, group) in plan.diverged.items()) if r is not None]
    for account_id, (reason, _) in plan.diverged.items():
        log.error("account %s: %s; repaired from its stream", account_id, reason,
                  extra={"fields": {"account_id": account_id, "divergence": "event-id"}})
    result = model.write(plan.writes, checkpoints, repairs)
    outcome = Applied(skipped=list(plan.done), failed=list(plan.failed), checkpoints_held=result.checkpoints_held)
    for write in plan.writes:
        if write.after.id in result.applied:
            outcome.written += write.entries
        else:
            reason = result.refused.get(write.after.id, "another writer moved the document first")
            outcome.failed += [(e, reason) for e in write.entries]
            outcome.refused.add(write.after.id)
    for _, group in plan.diverged.values():
        outcome.repaired += group
    return outcome


def apply_entries(entries: Sequence[LogEntry], model: ReadModel, history: History,
                  checkpoint: CheckpointWrite | None = None) -> Applied:
    """Apply ``entries`` (already acknowledged, or parked) and move ``checkpoint`` once they are in."""
    return write_plan(plan_entries(entries, model, history), model, history, [checkpoint] if checkpoint else [])
