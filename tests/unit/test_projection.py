"""The projector's pure planning: redelivery, reordering, gaps, poison and folding."""

from __future__ import annotations

import random

from projector.projection import LogEntry, fold, plan
from shared.account import DEPOSITED, OPENED, WITHDRAWN, Account
from shared.events import RecordedEvent


def entry(version: int, event_type: str = DEPOSITED, amount: int = 100, account_id: str = "a",
          entry_id: str | None = None) -> LogEntry:
    data = {} if event_type == OPENED else {"amount_minor": amount}
    event = RecordedEvent(account_id, version, event_type, data, f"e{account_id}{version}", "2026-11-28T12:00:00Z", 1)
    return LogEntry(0, entry_id or f"{version}-0", {}, event)


def history(n: int, account_id: str = "a") -> list[LogEntry]:
    return [entry(1, OPENED, account_id=account_id)] + [entry(v, account_id=account_id) for v in range(2, n + 1)]


def test_a_fresh_account_folds_into_one_write() -> None:
    result = plan(history(4), {})
    assert len(result.writes) == 1
    write = result.writes[0]
    assert (write.expected_version, write.after.version, write.after.balance) == (0, 4, 300)
    assert write.entry_ids == ["1-0", "2-0", "3-0", "4-0"]
    assert not (result.done or result.deferred or result.failed)


def test_already_projected_entries_are_skipped() -> None:
    current = {"a": Account("a", 200, 3)}
    result = plan(history(5), current)
    assert [e.event.version for e in result.done if e.event] == [1, 2, 3]
    assert (result.writes[0].expected_version, result.writes[0].after.version) == (3, 5)
    assert result.writes[0].after.balance == 400


def test_order_of_delivery_does_not_matter() -> None:
    entries = history(6) + history(3, "b")
    random.Random(7).shuffle(entries)
    result = plan(entries, {})
    assert {(w.after.id, w.after.version, w.after.balance) for w in result.writes} == {("a", 6, 500), ("b", 3, 200)}


def test_a_gap_defers_everything_after_it() -> None:
    current = {"a": Account("a", 100, 2)}
    result = plan([entry(3), entry(5), entry(6)], current)
    assert result.writes[0].after.version == 3
    assert [e.event.version for e in result.deferred if e.event] == [5, 6]


def test_only_a_gap_writes_nothing() -> None:
    result = plan([entry(4)], {"a": Account("a", 100, 2)})
    assert result.writes == []
    assert len(result.deferred) == 1


def test_the_same_entry_twice_is_acknowledged_with_its_write() -> None:
    twice = [entry(1, OPENED), entry(2), entry(2)]
    result = plan(twice, {})
    assert len(result.writes[0].entries) == 3
    assert result.writes[0].entry_ids == ["1-0", "2-0"]
    assert result.writes[0].after.balance == 100


def test_poison_is_refused_and_blocks_only_its_own_account() -> None:
    poison = entry(2, "FundsFrozen")
    result = plan([entry(1, OPENED), poison, entry(3), *history(2, "b")], {})
    assert [(e.entry_id, "unknown event type" in reason) for e, reason in result.failed] == [("2-0", True)]
    assert [e.event.version for e in result.deferred if e.event] == [3]
    assert {(w.after.id, w.after.version) for w in result.writes} == {("a", 1), ("b", 2)}


def test_undecodable_entries_fail() -> None:
    broken = LogEntry(0, "9-0", {b"junk": b"1"}, None, "unreadable stream entry")
    assert plan([broken], {}).failed == [(broken, "unreadable stream entry")]


def test_withdrawals_are_facts_not_decisions() -> None:
    result = plan([entry(1, OPENED), entry(2, WITHDRAWN, 50)], {})
    assert result.writes[0].after.balance == -50  # the write side decided; the projection only records


def test_fold_for_rebuild() -> None:
    states: dict[str, Account] = {}
    events = [e.event for e in [*history(3), entry(4, "Mystery")] if e.event]
    refused = fold(events, states)
    assert states["a"].version == 3
    assert len(refused) == 1
