"""The account aggregate: rebuilt from its events, it decides what may happen next. Pure: no I/O.

Balances and amounts are integer minor units (see ``money.py``). A command's ``decide`` returns a typed
domain event (``AccountOpened``, ``FundsDeposited``, ``FundsWithdrawn``) or raises a named domain error.
``_step`` is the single fold step behind both ``apply`` (a decision, typed) and ``rebuild`` / ``apply_recorded``
(stored events, as the store decodes them), so the state a response reports is exactly what a later
rebuild will see.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

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


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    balance: int = 0
    version: int = 0
    opened_at: str | None = None
    updated_at: str | None = None

    @property
    def exists(self) -> bool:
        return self.version > 0


# --- domain events: what a decision produces, before it has a version or an envelope ---

@dataclass(frozen=True, slots=True)
class AccountOpened:
    type: ClassVar[str] = OPENED

    def data(self) -> EventData:
        return {}


@dataclass(frozen=True, slots=True)
class FundsDeposited:
    amount_minor: int
    type: ClassVar[str] = DEPOSITED

    def data(self) -> EventData:
        return {"amount_minor": self.amount_minor}


@dataclass(frozen=True, slots=True)
class FundsWithdrawn:
    amount_minor: int
    type: ClassVar[str] = WITHDRAWN

    def data(self) -> EventData:
        return {"amount_minor": self.amount_minor}


DomainEvent = AccountOpened | FundsDeposited | FundsWithdrawn


def apply(account: Account, event: DomainEvent, version: int, at: str) -> Account:
    """The account after a decided ``event``, recorded as ``version`` at ``at``."""
    return _evolve(account, event.type, event.data(), version, at)


def apply_recorded(account: Account, event: RecordedEvent) -> Account:
    """The account after one stored event (the projector's fold step)."""
    return _evolve(account, event.type, event.data, event.version, event.recorded_at)


def _evolve(account: Account, event_type: str, data: EventData, version: int, at: str) -> Account:
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


# --- commands: each decides one domain event against the current state ---

@dataclass(frozen=True, slots=True)
class OpenAccount:
    def decide(self, account: Account) -> AccountOpened:
        if account.exists:
            raise AccountAlreadyExists(f"account {account.id} already exists")
        return AccountOpened()

    def fingerprint(self) -> str:
        return "open"


@dataclass(frozen=True, slots=True)
class Deposit:
    amount: int

    def decide(self, account: Account) -> FundsDeposited:
        _require_open(account)
        if account.balance + self.amount > MAX_BALANCE_MINOR:
            raise BalanceLimitExceeded(
                f"a deposit of {format_minor(self.amount)} would take the balance past "
                f"{format_minor(MAX_BALANCE_MINOR)}"
            )
        return FundsDeposited(self.amount)

    def fingerprint(self) -> str:
        return f"deposit:{self.amount}"


@dataclass(frozen=True, slots=True)
class Withdraw:
    amount: int

    def decide(self, account: Account) -> FundsWithdrawn:
        _require_open(account)
        if self.amount > account.balance:
            raise InsufficientFunds(
                f"cannot withdraw {format_minor(self.amount)}: the balance is {format_minor(account.balance)}"
            )
        return FundsWithdrawn(self.amount)

    def fingerprint(self) -> str:
        return f"withdraw:{self.amount}"


Command = OpenAccount | Deposit | Withdraw


def amount_of(event: DomainEvent) -> int | None:
    """The money an event moved, if any."""
    return None if isinstance(event, AccountOpened) else event.amount_minor


def _require_open(account: Account) -> None:
    if not account.exists:
        raise AccountNotFound(f"account {account.id} does not exist")
