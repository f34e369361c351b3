"""Where the read model keeps what: the names and indexes that the projector (which writes it) and the query
functions (which read it) must agree on. ``projector/read_model.py`` documents the documents themselves.

Every query the API serves from the read model is served by one of ``ACCOUNT_INDEXES`` or
``TRANSACTION_INDEXES`` (the projector creates them at start; a test shows each query's plan on a real
MongoDB).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Account documents: everything in the collection but the checkpoints and notes.
ACCOUNTS: Mapping[str, Any] = {"kind": {"$exists": False}}

IndexSpec = tuple[str, list[tuple[str, int]]]
#: ``GET /accounts`` by owner (one owner's accounts are few: sorted by id after the index found them). Listing
#: every account walks the ``_id`` index, which MongoDB always has.
ACCOUNT_INDEXES: tuple[IndexSpec, ...] = (("by_owner", [("owner.iss", 1), ("owner.sub", 1)]),)
#: ``GET /accounts/{id}/statement``: one account's transactions in a time range, in order, and the last one
#: before a time (the opening and closing balances).
TRANSACTION_INDEXES: tuple[IndexSpec, ...] = (("by_account_time", [("account_id", 1), ("at", 1), ("version", 1)]),)


def transactions_name(collection: str) -> str:
    return f"{collection}_transactions"


def transaction_id(account_id: str, version: int) -> str:
    # "#" is in no account id, and the zero-padded version keeps one account's ids in version order.
    return f"{account_id}#{version:012d}"


def checkpoint_id(group: str, partition: int) -> str:
    return f"_checkpoint.{group}.p{partition}"
