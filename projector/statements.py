"""Statements' transactions, pure: what a deposit or a withdrawal becomes in the read model, with the balance
after it exactly as the account's fold has it.

The ``<collection>_transactions`` collection: one document per deposit or withdrawal, what the
statements are served from::

    {_id: "alice#000000000007", account_id: "alice", version: 7, event_id, type: "FundsDeposited",
     amount_minor: 500, balance_minor: 1200, at: <date>}

A transaction is a fact of one version of one account, so writing it again writes the same document. It is
written right after its account's document moved (so the statements add nothing to the documents' latency)
and before anything is acknowledged: a crash in between leaves the document ahead and the entries pending,
and their redelivery, finding the document done, folds the missing transactions from the account's stream
(``applying.restore_transactions``). A repair replaces an account's transactions with those of its stream.

Checkpoints live next to the documents on purpose: whatever wipes or restores the collection wipes or restores
them with it, so the projector can tell that the read model went back in time. Every account write is guarded
by the stored version, so a redelivered, reordered or concurrently projected event is never applied twice.
Nothing read back is trusted by its ``_id``: a checkpoint is a checkpoint only if it looks like one, an
account document only if it looks like one (``MalformedDocument`` otherwise)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared import account
from shared.account import Account
from shared.events import RecordedEvent
from shared.read_model_layout import transaction_id

MONEY_EVENTS = frozenset({account.DEPOSITED, account.WITHDRAWN})


@dataclass(frozen=True, slots=True)
class Transaction:
    """One movement of money, as a statement lists it: the balance after it is the fold's, so a statement's
    running balance is exactly the account's."""

    account_id: str
    version: int
    event_id: str
    #: ``FundsDeposited`` or ``FundsWithdrawn``.
    type: str
    amount_minor: int
    balance_minor: int
    #: When it was recorded (ISO 8601); an account's events are recorded in time order.
    at: str


def transaction(event: RecordedEvent, after: Account) -> Transaction | None:
    """The transaction ``event`` is, given the state it led to (None for an event that moves no money)."""
    if event.type not in MONEY_EVENTS:
        return None
    return Transaction(after.id, event.version, event.event_id, event.type, int(event.data["amount_minor"]),
                       after.balance, event.recorded_at)


def transactions(account_id: str, events: Iterable[RecordedEvent]) -> list[Transaction]:
    """Every transaction of an account's whole history (a repair's, a verify's)."""
    found: list[Transaction] = []
    state = Account(account_id)
    for event in events:
        state = account.apply_recorded(state, event)
        moved = transaction(event, state)
        if moved is not None:
            found.append(moved)
    return found


def transaction_document(moved: Transaction) -> dict[str, Any]:
    """Plain Python values; an adapter stores them in its own types."""
    return {"_id": transaction_id(moved.account_id, moved.version), "account_id": moved.account_id,
            "version": moved.version, "event_id": moved.event_id, "type": moved.type,
            "amount_minor": moved.amount_minor, "balance_minor": moved.balance_minor,
            "at": datetime.fromisoformat(moved.at.replace("Z", "+00:00"))}
