"""The projector's pure parts: planning (redelivery, reordering, gaps filled from history, poison, divergence),
the fair share of partitions, and back-off arithmetic."""

from __future__ import annotations

import random
from functools import partial

import pytest

from projector.leases import fair_share, preference
from projector.partitions import Backoff
from projector.projection import Current, LogEntry, plan
from shared.account import DEPOSITED, OPENED, WITHDRAWN, Account
from shared.events import RecordedEvent


def event(version: int, event_type: str = DEPOSITED, amount: int = 100, account_id: str = "a") -> RecordedEvent:
    data = {} if event_type == OPENED else {"amount_minor": amount}
    return RecordedEvent(account_id, version, event_type, data, f"e{account_id}{version}", "2026-11-28T12:00:00Z", 1)


def entry(version: int, event_type: str = DEPOSITED, amount: int = 100, account_id: str = "a",
          entry_id: str | None = None) -> LogEntry:
    return LogEntry(0, entry_id or f"{version}-0", {}, event(version, event_type, amount, account_id))


def history(n: int, account_id: str = "a") -> list[LogEntry]:
    return [entry(1, OPENED, account_id=account_id)] + [entry(v, account_id=account_id) for v in range(2, n + 1)]


def at(version: int, balance: int, account_id: str = "a", known: int = 0) -> dict[str, Current]:
    """The read model holding ``account_id`` at ``version``, with the ids of its last ``known`` events."""
    ids = tuple(f"e{account_id}{v}" for v in range(max(1, version - known + 1), version + 1)) if known else ()
    return {account_id: Current(Account(account_id, balance, version), ids)}


def test_a_fresh_account_folds_into_one_write() -> None:
    result = plan(history(4), {})
    [write] = result.writes
    assert (write.expected_version, write.after.version, write.after.balance) == (0, 4, 300)
    assert write.entry_ids == ["1-0", "2-0", "3-0", "4-0"]
    assert write.event_ids == ["ea1", "ea2", "ea3", "ea4"]
    assert not (result.done or result.need_history or result.failed or result.diverged)


def test_already_projected_entries_are_skipped() -> None:
    result = plan(history(5), at(3, 200, known=3))
    assert [e.event.version for e in result.done if e.event] == [1, 2, 3]
    assert (result.writes[0].expected_version, result.writes[0].after.version) == (3, 5)
    assert result.writes[0].after.balance == 400


def test_order_of_delivery_does_not_matter() -> None:
    entries = history(6) + history(3, "b")
    random.Random(7).shuffle(entries)
    result = plan(entries, {})
    assert {(w.after.id, w.after.version, w.after.balance) for w in result.writes} == {("a", 6, 500), ("b", 3, 200)}


def test_an_entry_ahead_of_the_document_asks_for_the_missing_history_instead_of_waiting() -> None:
    current = at(2, 100)
    first = plan([entry(5), entry(6)], current)
    assert first.need_history == {"a": (2, 6)}
    assert not (first.writes or first.done or first.failed)
    second = plan([entry(5), entry(6)], current, {"a": [event(3), event(4), event(5), event(6)]})
    [write] = second.writes
    assert (write.expected_version, write.after.version, write.after.balance) == (2, 6, 500)
    assert write.event_ids == ["ea3", "ea4", "ea5", "ea6"]
    assert [e.entry_id for e in write.entries] == ["5-0", "6-0"]


def test_a_stream_without_the_versions_its_log_entries_follow_fails_them() -> None:
    result = plan([entry(5)], at(2, 100), {"a": [event(3)]})
    assert [(e.entry_id, "lacks version 4" in why) for e, why in result.failed] == [("5-0", True)]


def test_a_reissued_version_is_divergence_not_a_redelivery() -> None:
    # Redis lost version 3 and handed the number to another event: the read model recorded the first one.
    reissued = LogEntry(0, "9-0", {}, event(3)._replace(event_id="other"))
    result = plan([reissued], at(3, 200, known=3))
    assert list(result.diverged) == ["a"]
    reason, entries = result.diverged["a"]
    assert "version 3" in reason and entries == [reissued]
    assert not (result.done or result.writes)


def test_the_same_entry_twice_is_acknowledged_with_its_write() -> None:
    twice = [entry(1, OPENED), entry(2), entry(2)]
    [write] = plan(twice, {}).writes
    assert len(write.entries) == 3
    assert write.entry_ids == ["1-0", "2-0"]
    assert write.after.balance == 100


def test_poison_fails_what_follows_it_and_only_its_own_account() -> None:
    poison = entry(2, "FundsFrozen")
    result = plan([entry(1, OPENED), poison, entry(3), *history(2, "b")], {})
    assert [(e.entry_id, "unknown event type" in reason) for e, reason in result.failed] == [
        ("2-0", True), ("3-0", True)]
    assert {(w.after.id, w.after.version) for w in result.writes} == {("a", 1), ("b", 2)}


def test_undecodable_entries_fail() -> None:
    broken = LogEntry(0, "9-0", {b"account_id": b"a"}, None, "unreadable stream entry")
    assert plan([broken], {}).failed == [(broken, "unreadable stream entry")]
    assert broken.account_id == "a"


def test_a_log_entry_that_disagrees_with_its_stream_fails() -> None:
    result = plan([entry(3)], at(2, 100), {"a": [event(3)._replace(event_id="the-truth")]})
    assert len(result.failed) == 1 and "the-truth" in result.failed[0][1]


def test_withdrawals_are_facts_not_decisions() -> None:
    result = plan([entry(1, OPENED), entry(2, WITHDRAWN, 50)], {})
    assert result.writes[0].after.balance == -50  # the write side decided; the projection only records


@pytest.mark.parametrize(("members", "partitions", "shares"), [
    (["a"], 16, [16]), (["a", "b"], 16, [8, 8]), (["a", "b", "c"], 16, [6, 5, 5]), (["a", "b", "c"], 2, [1, 1, 0]),
    (["c", "a", "b"], 16, [5, 6, 5]),
])
def test_fair_shares_add_up_and_differ_by_at_most_one(members: list[str], partitions: int, shares: list[int]) -> None:
    assert [fair_share(members, me, partitions) for me in members] == shares
    assert sum(shares) == partitions


def test_a_newcomer_counts_itself() -> None:
    assert fair_share(["a"], "b", 16) == 8


def test_owners_rank_partitions_differently() -> None:
    orders = {owner: sorted(range(16), key=partial(preference, owner)) for owner in ("a-1", "b-2", "c-3")}
    assert len({tuple(order) for order in orders.values()}) == 3


def test_back_off_never_overflows_and_stays_capped() -> None:
    backoff = Backoff(initial=0.2, cap=30.0)
    delays = [backoff.next_delay() for _ in range(5000)]
    assert max(delays) <= 30.0 and min(delays) > 0
