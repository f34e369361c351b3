"""The MongoDB read model: the only module that calls pymongo.

One document per account::

    {_id: "alice", balance_minor: 0 (int64), balance: "0.00", version: 3,
     timestamps: [the partition-log ids of the latest events, at most PROJECTOR_TIMESTAMPS_KEPT],
     created_at: <date>, updated_at: <date>}

Every write is guarded by the stored version (``{_id, version: expected}``), so a redelivered, reordered or
concurrently projected event can never be applied twice. Money is int64 minor units (no Decimal128: the
local stand-in cannot store it), with a display string beside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from bson.int64 import Int64
from pymongo import InsertOne, MongoClient, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure, WTimeoutError
from pymongo.write_concern import WriteConcern

from projector.projection import AccountWrite
from shared.account import Account
from shared.config import ProjectorSettings
from shared.money import format_minor

Document = dict[str, Any]
_DUPLICATE_KEY = 11000


class MongoUnavailable(Exception):
    """MongoDB cannot answer now; nothing was acknowledged, so everything stays pending."""


@contextmanager
def mongo_unavailable_as_error() -> Iterator[None]:
    try:
        yield
    except (ConnectionFailure, WTimeoutError) as exc:  # includes AutoReconnect, timeouts, not-primary
        raise MongoUnavailable(f"MongoDB is unavailable: {type(exc).__name__}") from exc


def connect_mongo(settings: ProjectorSettings) -> MongoClient[Document]:
    timeout = settings.mongodb_timeout_ms
    return MongoClient(settings.mongodb_uri, serverSelectionTimeoutMS=timeout, connectTimeoutMS=timeout,
                       socketTimeoutMS=timeout * 2, retryWrites=True, tz_aware=True)


class ReadModel:
    def __init__(self, client: MongoClient[Document], database: str, collection: str,
                 timestamps_kept: int) -> None:
        self._client = client
        self._db = client[database]
        self.name = collection
        # Majority: an acknowledged write survives a replica-set failover, so acknowledging the Redis entry
        # afterwards cannot lose it. (On a standalone server "majority" is the one node.)
        self._collection: Collection[Document] = self._db.get_collection(
            collection, write_concern=WriteConcern(w="majority"))
        self._kept = timestamps_kept

    def sibling(self, collection: str) -> ReadModel:
        return ReadModel(self._client, self._db.name, collection, self._kept)

    def ping(self) -> None:
        with mongo_unavailable_as_error():
            self._client.admin.command("ping")

    def current(self, account_ids: Iterable[str]) -> dict[str, Account]:
        ids = list(set(account_ids))
        if not ids:
            return {}
        with mongo_unavailable_as_error():
            found = self._collection.find({"_id": {"$in": ids}},
                                          {"balance_minor": 1, "version": 1, "created_at": 1, "updated_at": 1})
            return {doc["_id"]: _state(doc) for doc in found}

    def write(self, writes: Sequence[AccountWrite]) -> tuple[set[str], dict[str, str]]:
        """Apply ``writes``; return the accounts now at (or past) their target version, and per-account
        errors that are not outages (a document MongoDB refuses)."""
        if not writes:
            return set(), {}
        ops = [self._operation(w) for w in writes]
        errors: dict[str, str] = {}
        with mongo_unavailable_as_error():
            try:
                result = self._collection.bulk_write(ops, ordered=False)
                complete = result.inserted_count + result.matched_count == len(ops)
            except BulkWriteError as exc:
                complete = False
                for error in exc.details.get("writeErrors", []):
                    if error.get("code") != _DUPLICATE_KEY:  # a duplicate insert lost a race: re-read decides
                        errors[writes[error["index"]].after.id] = str(error.get("errmsg", "write refused"))[:500]
            if complete:
                return {w.after.id for w in writes}, errors
            # Decide by the version guard, never by counts: whoever wrote it, the account is projected up to
            # its stored version.
            stored = self.current(w.after.id for w in writes)
        applied = {w.after.id for w in writes
                   if w.after.id in stored and stored[w.after.id].version >= w.after.version}
        return applied, {k: v for k, v in errors.items() if k not in applied}

    def _operation(self, write: AccountWrite) -> InsertOne[Document] | UpdateOne:
        state = write.after
        ids = write.entry_ids[-self._kept:]
        if write.expected_version == 0:
            return InsertOne(document(state, ids))
        return UpdateOne(
            {"_id": state.id, "version": write.expected_version},
            {"$set": {"balance_minor": Int64(state.balance), "balance": format_minor(state.balance),
                      "version": state.version, "updated_at": _time(state.updated_at)},
             "$push": {"timestamps": {"$each": ids, "$slice": -self._kept}}},
        )

    # --- rebuild (blue/green) ---

    def recreate(self) -> None:
        with mongo_unavailable_as_error():
            self._collection.drop()

    def insert(self, states: Iterable[Account], timestamps: Mapping[str, list[str]], chunk: int = 1000) -> int:
        count = 0
        batch: list[Document] = []
        with mongo_unavailable_as_error():
            for state in states:
                batch.append(document(state, timestamps.get(state.id, [])[-self._kept:]))
                if len(batch) >= chunk:
                    self._collection.insert_many(batch, ordered=False)
                    count += len(batch)
                    batch = []
            if batch:
                self._collection.insert_many(batch, ordered=False)
                count += len(batch)
        return count

    def count(self) -> int:
        with mongo_unavailable_as_error():
            return self._collection.count_documents({})

    def replace_with(self, built: ReadModel) -> None:
        """Make ``built`` the live read model under this collection's name, without a moment of emptiness.

        On MongoDB: one ``renameCollection`` with ``dropTarget``, which is atomic (readers see the old
        collection, then the new one). A server that does not implement that rename (the nx-27017 stand-in
        acknowledges it and does nothing) gets a guarded copy instead: each built document replaces its
        live one unless the live one is newer (the live projector kept going), so readers always see every
        account, each either as it was or as rebuilt.
        """
        with mongo_unavailable_as_error():
            if self._renames_atomically():
                built._collection.rename(self.name, dropTarget=True)
                return
            self._copy_from(built)
            built._collection.drop()

    def _renames_atomically(self) -> bool:
        probe = f"{self.name}_swap_probe"
        source, target = self._db[f"{probe}_source"], self._db[f"{probe}_target"]
        try:
            target.insert_one({"_id": "old"})
            source.insert_many([{"_id": "new-1"}, {"_id": "new-2"}])
            with contextlib.suppress(OperationFailure):
                source.rename(target.name, dropTarget=True)
            return (target.count_documents({}) == 2
                    and source.name not in self._db.list_collection_names())
        finally:
            source.drop()
            target.drop()

    def _copy_from(self, built: ReadModel, chunk: int = 1000) -> None:
        ops: list[UpdateOne] = []
        for doc in built._collection.find({}):
            fields = {k: v for k, v in doc.items() if k != "_id"}
            ops.append(UpdateOne({"_id": doc["_id"], "version": {"$lte": doc["version"]}}, {"$set": fields},
                                 upsert=True))
            if len(ops) >= chunk:
                self._apply_guarded(ops)
                ops = []
        if ops:
            self._apply_guarded(ops)

    def _apply_guarded(self, ops: list[UpdateOne]) -> None:
        try:
            self._collection.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            # A duplicate key means the live document is newer than the rebuilt one: keep the live one.
            others = [e for e in exc.details.get("writeErrors", []) if e.get("code") != _DUPLICATE_KEY]
            if others:
                raise

    def find(self, account_id: str) -> Document | None:
        with mongo_unavailable_as_error():
            return self._collection.find_one({"_id": account_id})

    def documents(self) -> dict[str, Document]:
        with mongo_unavailable_as_error():
            return {doc["_id"]: doc for doc in self._collection.find({})}


def document(state: Account, timestamps: list[str]) -> Document:
    return {
        "_id": state.id,
        "balance_minor": Int64(state.balance),
        "balance": format_minor(state.balance),
        "version": state.version,
        "timestamps": timestamps,
        "created_at": _time(state.opened_at),
        "updated_at": _time(state.updated_at),
    }


def _time(iso: str | None) -> datetime | None:
    return None if iso is None else datetime.fromisoformat(iso.replace("Z", "+00:00"))


def _state(doc: Document) -> Account:
    def iso(value: object) -> str | None:
        return value.isoformat() if isinstance(value, datetime) else None

    return Account(doc["_id"], int(doc.get("balance_minor", 0)), int(doc.get("version", 0)),
                   iso(doc.get("created_at")), iso(doc.get("updated_at")))
