"""Applying log entries to the read model outside the live loop's acknowledgements: re-projection after the
read model fell behind, the rebuild's catch-up and the replay of parked entries all plan the same way as the
live loop (version-guarded, missing versions read from the account stream) and differ only in what they do
with the outcome."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from projector import projection, selfcheck
from projector.projection import LogEntry
from projector.read_model import CheckpointWrite, ReadModel
from projector.selfcheck import History


def plan_entries(entries: Sequence[LogEntry], model: ReadModel, history: History) -> projection.Plan:
    """Plan ``entries`` against the read model; read the versions they skip from the account streams."""
    current = model.current(e.event.account_id for e in entries if e.event is not None)
    plan = projection.plan(entries, current)
    if not plan.need_history:
        return plan
    fetched = {account_id: history(account_id, after, upto) for account_id, (after, upto) in plan.need_history.items()}
    return projection.plan(entries, current, fetched)


@dataclass(slots=True)
class Applied:
    #: Entries now reflected in the read model (written, already there, or repaired from the stream).
    settled: list[LogEntry] = field(default_factory=list)
    failed: list[tuple[LogEntry, str]] = field(default_factory=list)


def apply_entries(entries: Sequence[LogEntry], model: ReadModel, history: History,
                  checkpoint: CheckpointWrite | None = None) -> Applied:
    """Apply ``entries`` (already acknowledged, or parked) and move ``checkpoint`` once they are in."""
    plan = plan_entries(entries, model, history)
    repairs = [r for r in (selfcheck.repair_from_stream(history, account_id, group[0].partition, group)
                           for account_id, (_, group) in plan.diverged.items()) if r is not None]
    written = model.write(plan.writes, [checkpoint] if checkpoint else [], repairs)
    applied, refused = written.applied, written.refused
    outcome = Applied(settled=list(plan.done), failed=list(plan.failed))
    for write in plan.writes:
        if write.after.id in applied:
            outcome.settled += write.entries
        else:
            reason = refused.get(write.after.id, "lost a race with another writer; run it again")
            outcome.failed += [(e, reason) for e in write.entries]
    for _, group in plan.diverged.values():
        outcome.settled += group
    return outcome
