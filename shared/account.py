"""The account aggregate: rebuilt from its events, it decides what may happen next. Pure: no I/O.

Balances and amounts are integer minor units (see ``money.py``). A command's ``decide`` returns a typed
domain event (``AccountOpened``, ``FundsDeposited``, ``FundsWithdrawn``, ``OwnerAssigned``) or raises a named
domain error. Who owns an account is a fact of its history like its balance: ``AccountOpened`` names the
owner (accounts opened before owners existed name none), ``OwnerAssigned`` changes it.
``fold`` is the one fold of events into state: ``rebuild`` and ``apply_recorded`` (stored events) and ``apply``
(a decision, folded as it will be stored) all go through it, so the state a response reports is exactly
what a later rebuild will see.
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
from shared.events import SCHEMA_VERSION, EventData, RecordedEvent
from shared.money import MAX_BALANCE_MINOR, format_minor
from shared.principal import Owner

OPENED = "AccountOpened"
DEPOSITED = "FundsDeposited"
WITHDRAWN = "FundsWithdrawn"
OWNER_ASSIGNED = "OwnerAssigned"
#: The event types that say who owns the account.
_OWNING = frozenset({OPENED, OWNER_ASSIGNED})


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    balance: int = 0
    version: int = 0
    opened_at: str | None = None
    updated_at: str | None = None
    owner: Owner | None = None

    @property
    def exists(self) -> bool:
        return self.version > 0


# --- domain events: what a decision produces, before it has a version or an envelope ---

@dataclass(frozen=True, slots=True)
class AccountOpened:
    owner: Owner | None = None
    type: ClassVar[str] = OPENED

    def data(self) -> EventData:
        return {} if self.owner is None else {"owner": self.owner.to_json()}


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


@dataclass(frozen=True, slots=True)
class OwnerAssigned:
    owner: Owner
    type: ClassVar[str] = OWNER_ASSIGNED

    def data(self) -> EventData:
        return {"owner": self.owner.to_json()}


DomainEvent = AccountOpened | FundsDeposited | FundsWithdrawn | OwnerAssigned


def apply(account: Account, event: DomainEvent, version: int, at: str) -> Account:
    """The account after a decided ``event``, recorded as ``version`` at ``at``: folded exactly as it will be
    once stored, so what a response reports is what every later rebuild sees."""
    return fold(account, (RecordedEvent(account.id, version, event.type, event.data(), "", at, SCHEMA_VERSION),))


def apply_recorded(account: Account, event: RecordedEvent) -> Account:
    """The account after one stored event (for a caller that must know which event could not be applied)."""
    return fold(account, (event,))


def rebuild(account_id: str, events: Iterable[RecordedEvent], start: Account | None = None) -> Account:
    """The account after ``events``, folded onto ``start`` (a snapshot) or onto nothing."""
    return fold(start or Account(account_id), events)


def fold(start: Account, events: Iterable[RecordedEvent]) -> Account:
    """The one fold of stored events into account state: every request's rebuild, the projector and the
    operator tools go through it. ``CorruptHistory`` if an event cannot follow the state before it."""
    # The hot path of every request: a plain loop over locals, one Account at the end (not one per event).
    account_id, balance, version = start.id, start.balance, start.version
    opened_at, updated_at, owner = start.opened_at, start.updated_at, start.owner
    for event in events:
        balance = _step(account_id, balance, version, event.type, event.data, event.version)
        if version == 0:
            opened_at = event.recorded_at
        if event.type in _OWNING:
            owner = _owner(account_id, event.type, event.data)
        version = event.version
        updated_at = event.recorded_at
    return Account(account_id, balance, version, opened_at, updated_at, owner)


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
    if event_type == OWNER_ASSIGNED:
        if version == 0:
            raise CorruptHistory(f"account {account_id}: {event_type} before {OPENED}")
        return balance
    raise CorruptHistory(f"account {account_id}: unknown event type {event_type!r}")


def _owner(account_id: str, event_type: str, data: EventData) -> Owner | None:
    raw = data.get("owner")
    if raw is None and event_type == OPENED:
        return None  # opened before accounts had owners
    if not isinstance(raw, dict) or not isinstance(raw.get("iss"), str) or not isinstance(raw.get("sub"), str):
        raise CorruptHistory(f"account {account_id}: {event_type} with a malformed owner")
    return Owner(raw["iss"], raw["sub"])


# --- commands: each decides one domain event against the current state ---

@dataclass(frozen=True, slots=True)
class OpenAccount:
    #: Who opens it (None: nobody was asked, AUTH_MODE=none).
    owner: Owner | None = None

    def decide(self, account: Account) -> AccountOpened:
        if account.exists:
            raise AccountAlreadyExists(f"account {account.id} already exists")
        return AccountOpened(self.owner)

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


@dataclass(frozen=True, slots=True)
class AssignOwner:
    """An administrator gives the account to ``owner`` (the way accounts opened before owners existed get
    one). Nothing is decided when it already has that owner."""

    owner: Owner

    def decide(self, account: Account) -> OwnerAssigned | None:
        _require_open(account)
        return None if account.owner == self.owner else OwnerAssigned(self.owner)

    def fingerprint(self) -> str:
        return f"owner:{len(self.owner.issuer)}:{self.owner.issuer}:{self.owner.subject}"


Command = OpenAccount | Deposit | Withdraw | AssignOwner


def amount_of(event: DomainEvent) -> int | None:
    """The money an event moved, if any."""
    return event.amount_minor if isinstance(event, FundsDeposited | FundsWithdrawn) else None


def _require_open(account: Account) -> None:
    if not account.exists:
        raise AccountNotFound(f"account {account.id} does not exist")
