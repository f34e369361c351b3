"""The account aggregate: rebuilt from its events, it decides what may happen next. Pure: no I/O.

Balances and amounts are integer minor units (see ``money.py``). A decision returns the event type and
data to record; ``apply`` is the single fold step used both to rebuild and to evolve after a decision,
so the state a response reports is exactly what a later rebuild will see.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shared.errors import (
    AccountAlreadyExists,
    AccountNotFound,
    BalanceLimitExceeded,
    CorruptHistory,
    InsufficientFunds,
)
from shared.events import EventData, RecordedEvent
from shared.money import MAX_BALANCE_MINOR, format_minor

OPENED = "AccountOpened"
DEPOSITED = "FundsDeposited"
WITHDRAWN = "FundsWithdrawn"
EVENT_TYPES = (OPENED, DEPOSITED, WITHDRAWN)


@dataclass(frozen=True)
class Account:
    id: str
    balance: int = 0
    version: int = 0
    opened_at: str | None = None
    updated_at: str | None = None

    @property
    def exists(self) -> bool:
        return self.version > 0


@dataclass(frozen=True)
class Change:
    """What a command decided: an event type and its data, not yet versioned or stored."""

    type: str
    data: EventData


def apply(account: Account, event_type: str, data: EventData, version: int, at: str) -> Account:
    balance = _step(account.id, account.balance, account.version, event_type, data, version)
    opened_at = at if event_type == OPENED else account.opened_at
    return Account(account.id, balance, version, opened_at, at)


def rebuild(account_id: str, events: Iterable[RecordedEvent], start: Account | None = None) -> Account:
    """The account after ``events``, folded onto ``start`` (a snapshot) or onto nothing."""
    # The hot path of every request: a plain loop over locals, one Account at the end (not one per event).
    balance, version = (start.balance, start.version) if start else (0, 0)
    opened_at, updated_at = (start.opened_at, start.updated_at) if start else (None, None)
    for event in events:
        balance = _step(account_id, balance, version, event.type, event.data, event.version)
        if version == 0:
            opened_at = event.recorded_at
        version = event.version
        updated_at = event.recorded_at
    return Account(account_id, balance, version, opened_at, updated_at)


def _step(account_id: str, balance: int, version: int, event_type: str, data: EventData, new_version: int) -> int:
    """The balance after one event, or ``CorruptHistory`` if the event cannot follow ``version``."""
    if new_version != version + 1:
        raise CorruptHistory(f"account {account_id}: version {new_version} follows {version}")
    if event_type in (DEPOSITED, WITHDRAWN):
        if version == 0:
            raise CorruptHistory(f"account {account_id}: {event_type} before {OPENED}")
        amount = data.get("amount_minor")
        if type(amount) is not int or amount <= 0:
            raise CorruptHistory(f"account {account_id}: bad amount_minor {amount!r}")
        return balance + amount if event_type == DEPOSITED else balance - amount
    if event_type == OPENED:
        if version != 0:
            raise CorruptHistory(f"account {account_id}: opened twice")
        return 0
    raise CorruptHistory(f"account {account_id}: unknown event type {event_type!r}")


@dataclass(frozen=True)
class OpenAccount:
    name = "open"
    amount = 0

    def decide(self, account: Account) -> Change:
        if account.exists:
            raise AccountAlreadyExists(f"account {account.id} already exists")
        return Change(OPENED, {})

    def fingerprint(self) -> str:
        return self.name


@dataclass(frozen=True)
class Deposit:
    amount: int
    name = "deposit"

    def decide(self, account: Account) -> Change:
        _require_open(account)
        if account.balance + self.amount > MAX_BALANCE_MINOR:
            raise BalanceLimitExceeded(
                f"a deposit of {format_minor(self.amount)} would take the balance past "
                f"{format_minor(MAX_BALANCE_MINOR)}"
            )
        return Change(DEPOSITED, {"amount_minor": self.amount})

    def fingerprint(self) -> str:
        return f"{self.name}:{self.amount}"


@dataclass(frozen=True)
class Withdraw:
    amount: int
    name = "withdraw"

    def decide(self, account: Account) -> Change:
        _require_open(account)
        if self.amount > account.balance:
            raise InsufficientFunds(
                f"cannot withdraw {format_minor(self.amount)}: the balance is {format_minor(account.balance)}"
            )
        return Change(WITHDRAWN, {"amount_minor": self.amount})

    def fingerprint(self) -> str:
        return f"{self.name}:{self.amount}"


Command = OpenAccount | Deposit | Withdraw


def _require_open(account: Account) -> None:
    if not account.exists:
        raise AccountNotFound(f"account {account.id} does not exist")
