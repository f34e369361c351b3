from __future__ import annotations

import pytest

from shared import account
from shared.account import Account, Deposit, OpenAccount, Withdraw
from shared.errors import (
    AccountAlreadyExists,
    AccountNotFound,
    BalanceLimitExceeded,
    CorruptHistory,
    InsufficientFunds,
)
from shared.events import RecordedEvent
from shared.money import MAX_BALANCE_MINOR


def recorded(version: int, event_type: str, amount: int | None = None) -> RecordedEvent:
    data = {} if amount is None else {"amount_minor": amount}
    return RecordedEvent("acc", version, event_type, data, f"e{version}", f"t{version}", 1)


def test_rebuild_folds_the_history() -> None:
    state = account.rebuild("acc", [recorded(1, account.OPENED), recorded(2, account.DEPOSITED, 500),
                                    recorded(3, account.WITHDRAWN, 200)])
    assert state == Account("acc", 300, 3, "t1", "t3")
    assert state.exists


def test_empty_history_is_a_missing_account() -> None:
    assert not account.rebuild("acc", []).exists


@pytest.mark.parametrize("history", [
    [recorded(1, account.DEPOSITED, 5)],
    [recorded(1, account.OPENED), recorded(3, account.DEPOSITED, 5)],
    [recorded(1, account.OPENED), recorded(2, account.OPENED)],
    [recorded(1, account.OPENED), recorded(2, "Mystery", 1)],
    [recorded(1, account.OPENED), recorded(2, account.DEPOSITED, -5)],
    [recorded(1, account.OPENED), recorded(2, account.DEPOSITED)],
])
def test_impossible_histories_are_reported(history: list[RecordedEvent]) -> None:
    with pytest.raises(CorruptHistory):
        account.rebuild("acc", history)


def test_open_only_once() -> None:
    assert OpenAccount().decide(Account("acc")).type == account.OPENED
    with pytest.raises(AccountAlreadyExists):
        OpenAccount().decide(Account("acc", 0, 1))


def test_deposit_and_withdraw_need_an_open_account() -> None:
    for command in (Deposit(1), Withdraw(1)):
        with pytest.raises(AccountNotFound):
            command.decide(Account("acc"))


def test_withdraw_never_takes_the_balance_below_zero() -> None:
    state = Account("acc", 100, 2)
    assert Withdraw(100).decide(state) == account.FundsWithdrawn(100)
    with pytest.raises(InsufficientFunds):
        Withdraw(101).decide(state)


def test_deposit_respects_the_balance_limit() -> None:
    assert Deposit(1).decide(Account("acc", MAX_BALANCE_MINOR - 1, 2)).type == account.DEPOSITED
    with pytest.raises(BalanceLimitExceeded):
        Deposit(2).decide(Account("acc", MAX_BALANCE_MINOR - 1, 2))


def test_fingerprints_tell_commands_apart() -> None:
    prints = {OpenAccount().fingerprint(), Deposit(5).fingerprint(), Withdraw(5).fingerprint(),
              Deposit(6).fingerprint()}
    assert len(prints) == 4
