"""``MongoQueries``: the read model on MongoDB, read-only, for the query functions (the projector's
``mongo_read_model`` writes it). Every query is served by an index of ``read_model_layout``. Reads use the
``majority`` read concern, so an answer never includes a write a failover could roll back, and the client is
made once per process (a Lambda container reuses it across invocations)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import ConnectionFailure, WTimeoutError
from pymongo.read_concern import ReadConcern

from shared.consistency import LogPosition, position_of
from shared.errors import ReadModelUnavailable
from shared.principal import Owner
from shared.queries import AccountRow, TransactionRow
from shared.read_model_layout import ACCOUNTS, checkpoint_id, transactions_name

Document = dict[str, Any]
_ACCOUNT_FIELDS = {"balance_minor": 1, "version": 1, "created_at": 1, "updated_at": 1, "owner": 1}


@contextmanager
def unavailable_as_error() -> Iterator[None]:
    try:
        yield
    except (ConnectionFailure, WTimeoutError) as exc:  # timeouts, no primary, refused (anything else is our bug)
        raise ReadModelUnavailable.unreachable() from exc


def connect(uri: str, timeout_seconds: float) -> MongoClient[Document]:
    timeout_ms = int(timeout_seconds * 1000)
    return MongoClient(uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms,
                       socketTimeoutMS=timeout_ms * 2, tz_aware=True, appname="ledgerstream-queries")


class MongoQueries:
    def __init__(self, client: MongoClient[Document], database: str, collection: str, group: str) -> None:
        db = client[database]
        concern = ReadConcern("majority")
        self._accounts: Collection[Document] = db.get_collection(collection, read_concern=concern)
        self._transactions: Collection[Document] = db.get_collection(transactions_name(collection),
                                                                     read_concern=concern)
        self._group = group

    def checkpoints(self, partitions: Iterable[int]) -> dict[int, LogPosition]:
        wanted = {checkpoint_id(self._group, p): p for p in partitions}
        found: dict[int, LogPosition] = dict.fromkeys(wanted.values(), (0, 0))
        with unavailable_as_error():
            for doc in self._accounts.find({"_id": {"$in": list(wanted)}, "kind": "checkpoint"}, {"entry_id": 1}):
                entry_id = doc.get("entry_id")
                if isinstance(entry_id, str):
                    found[wanted[doc["_id"]]] = position_of(entry_id)
        return found

    def account(self, account_id: str) -> AccountRow | None:
        with unavailable_as_error():
            doc = self._accounts.find_one({"_id": account_id, **ACCOUNTS}, _ACCOUNT_FIELDS)
        return None if doc is None else _account(doc)

    def accounts(self, owner: Owner | None, only: str | None, min_funds: int | None, max_funds: int | None,
                 after: str | None, limit: int) -> list[AccountRow]:
        where: Document = {**ACCOUNTS, **_where("_id", {"$eq": only, "$gt": after}),
                           **_where("balance_minor", {"$gte": min_funds, "$lte": max_funds})}
        if owner is not None:
            where["owner.iss"], where["owner.sub"] = owner.issuer, owner.subject
        with unavailable_as_error():
            return [_account(doc) for doc in self._accounts.find(where, _ACCOUNT_FIELDS).sort("_id", 1).limit(limit)]

    def transactions(self, account_id: str, start: datetime | None, end: datetime | None,
                     after: tuple[datetime, int] | None, limit: int) -> list[TransactionRow]:
        if after is not None:  # an account's transactions are in time order: resume at the cursor's time
            start = after[0] if start is None else max(after[0], start)
        where: Document = {"account_id": account_id, **_where("at", {"$gte": start, "$lt": end}),
                           **_where("version", {"$gt": None if after is None else after[1]})}
        with unavailable_as_error():
            found = self._transactions.find(where).sort([("at", 1), ("version", 1)]).limit(limit)
            return [TransactionRow(int(d["version"]), str(d["event_id"]), str(d["type"]), int(d["amount_minor"]),
                                   int(d["balance_minor"]), d["at"]) for d in found]

    def balance_before(self, account_id: str, moment: datetime | None) -> int:
        where: Document = {"account_id": account_id, **_where("at", {"$lt": moment})}
        with unavailable_as_error():
            last = self._transactions.find_one(where, {"balance_minor": 1}, sort=[("at", -1), ("version", -1)])
        return 0 if last is None else int(last["balance_minor"])


def _where(field: str, bounds: dict[str, Any]) -> Document:
    """``{field: bounds}`` without the bounds that are None (nothing, when none is left)."""
    given = {op: value for op, value in bounds.items() if value is not None}
    return {field: given} if given else {}


def _account(doc: Document) -> AccountRow:
    stored = doc.get("owner")
    owner = Owner(stored["iss"], stored["sub"]) if isinstance(stored, dict) else None
    return AccountRow(str(doc["_id"]), int(doc.get("balance_minor", 0)), int(doc.get("version", 0)),
                      doc.get("created_at"), doc.get("updated_at"), owner)
