"""Well-formed events for store-level tests and bulk loads."""

from __future__ import annotations

import uuid

from shared.account import OPENED, AccountOpened
from shared.events import Metadata, NewEvent
from shared.principal import Owner

RECORDED_AT = "2026-11-28T12:00:00.000000Z"


def new_event(account_id: str, event_type: str = "FundsDeposited", amount: int = 100,
              correlation_id: str = "corr-1", owner: Owner | None = None) -> NewEvent:
    return NewEvent(
        type=event_type, account_id=account_id,
        data=AccountOpened(owner).data() if event_type == OPENED else {"amount_minor": amount},
        event_id=str(uuid.uuid4()), recorded_at=RECORDED_AT,
        metadata=Metadata(correlation_id=correlation_id, causation_id="req-1"),
    )


def history(account_id: str, length: int, amount: int = 100, owner: Owner | None = None) -> list[NewEvent]:
    """An opening (by ``owner``) followed by ``length - 1`` deposits of ``amount``."""
    return [new_event(account_id, OPENED, owner=owner)] + [new_event(account_id, amount=amount)
                                                           for _ in range(length - 1)]
