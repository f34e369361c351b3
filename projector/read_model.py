"""The MongoDB read model: the only module that calls pymongo.

One document per account::

    {_id: "alice", balance_minor: 0 (int64), balance: "0.00", version: 3,
     event_ids: [ids of the latest events, oldest first; the last is version 3's],
     timestamps: [partition-log ids of the latest events delivered through the log],
     partition: 7, log_ms: <int64>, log_seq: <int>,     (the last log entry applied, for the self-checks)
     created_at: <date>, updated_at: <date>}

and, in the same collection, one checkpoint per partition and consumer group (``_id`` starts with "_",
which no account id can)::

    {_id: "_checkpoint.projector.p7", kind: "checkpoint", group, partition, entry_id, event_id,
     owner, updated_ms}

Checkpoints live next to the documents on purpose: whatever wipes or restores the collection wipes or
restores them with it, so the projector can tell that MongoDB went back in time.

Every write is guarded by the stored version (``{_id, version: expected}``), so a redelivered, reordered or
concurrently projected event can never be applied twice. Money is int64 minor units (no Decimal128: the
local stand-in cannot store it), with a display string beside it.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson.int64 import Int64
from pymongo import DeleteOne, InsertOne, MongoClient, ReplaceOne, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure, PyMongoError, WTimeoutError
from pymongo.write_concern import WriteConcern

from projector.projection import AccountWrite, Current
from shared.account import Account
from shared.config import ProjectorSettings
from shared.money import format_minor
from shared.principal import Owner
from shared.validation import ACCOUNT_ID_PATTERN

Document = dict[str, Any]
Operation = InsertOne[Document] | UpdateOne | ReplaceOne[Document] | DeleteOne
_DUPLICATE_KEY = 11000
#: Account documents: everything but the checkpoints.
ACCOUNTS: Mapping[str, Any] = {"kind": {"$exists": False}}


class MongoUnavailable(Exception):
    """MongoDB cannot answer now; nothing was acknowledged, so everything stays pending."""


class MalformedDocument(Exception):
    """A document in the collection is not what the projector writes there (edited by hand, or written by
    something else): reported by what it is, never trusted. ``detail`` names it in one line."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


#: Anything MongoDB can fail with, for a command-line tool that only reports it.
MONGO_ERRORS: tuple[type[Exception], ...] = (MongoUnavailable, PyMongoError)


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


@dataclass(frozen=True, slots=True)
class Checkpoint:
    partition: int
    entry_id: str
    event_id: str
    owner: str
    #: Wall-clock time of the last move, epoch milliseconds (a number: every server stores it the same way).
    updated_ms: int | None


@dataclass(frozen=True, slots=True)
class CheckpointWrite:
    partition: int
    entry_id: str
    event_id: str
    #: The entry the checkpoint must still hold for this move to happen (None: set it unconditionally). A
    #: checkpoint that is not where its owner left it was wiped, restored or rebuilt under it.
    expected: str | None = None


@dataclass(frozen=True, slots=True)
class WriteResult:
    #: Accounts now at (or past) their target version.
    applied: set[str]
    #: Per-account errors that are not outages (a document MongoDB refuses).
    refused: dict[str, str]
    #: False when a guarded checkpoint was not where its owner expected it.
    checkpoints_held: bool = True


@dataclass(frozen=True, slots=True)
class Repair:
    """An account's document as its stream says it should be (``state`` None: the account does not exist)."""

    account_id: str
    state: Account | None
    event_ids: list[str]
    partition: int
    position: tuple[int, int]


class ReadModel:
    def __init__(self, client: MongoClient[Document], database: str, collection: str, kept: int,
                 group: str = "projector", owner: str = "") -> None:
        self._client = client
        self._db = client[database]
        self.name = collection
        # Majority: an acknowledged write survives a replica-set failover, so acknowledging the Redis entry
        # afterwards cannot lose it. (On a standalone server "majority" is the one node.)
        self._collection: Collection[Document] = self._db.get_collection(
            collection, write_concern=WriteConcern(w="majority"))
        self._kept = kept
        self.group = group
        self.owner = owner

    def sibling(self, collection: str) -> ReadModel:
        return ReadModel(self._client, self._db.name, collection, self._kept, self.group, self.owner)

    def ping(self) -> None:
        with mongo_unavailable_as_error():
            self._client.admin.command("ping")

    # --- the live projection ---

    def current(self, account_ids: Iterable[str]) -> dict[str, Current]:
        ids = list(set(account_ids))
        if not ids:
            return {}
        with mongo_unavailable_as_error():
            found = self._collection.find({"_id": {"$in": ids}, **ACCOUNTS},
                                          {"balance_minor": 1, "version": 1, "created_at": 1, "updated_at": 1,
                                           "event_ids": 1, "owner": 1})
            return {doc["_id"]: _current(doc) for doc in found}

    def write(self, writes: Sequence[AccountWrite], checkpoints: Sequence[CheckpointWrite] = (),
              repairs: Sequence[Repair] = ()) -> WriteResult:
        """Apply ``writes`` (version-guarded) and ``repairs`` (unconditional), then move ``checkpoints``."""
        applied, refused = self._write_guarded(writes) if writes else (set(), {})
        settle: list[Operation] = [self._repair(r) for r in repairs]
        settle += [self._checkpoint(c) for c in checkpoints if c.expected is None]
        guarded = [self._checkpoint(c) for c in checkpoints if c.expected is not None]
        held = True
        with mongo_unavailable_as_error():
            if settle:
                self._collection.bulk_write(settle, ordered=False)
            if guarded:
                # A guarded move that matched nothing: the checkpoint is not where its owner left it.
                held = self._collection.bulk_write(guarded, ordered=False).matched_count == len(guarded)
        return WriteResult(applied, refused, held)

    def _write_guarded(self, writes: Sequence[AccountWrite]) -> tuple[set[str], dict[str, str]]:
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
                   if w.after.id in stored and stored[w.after.id].state.version >= w.after.version}
        return applied, {k: v for k, v in errors.items() if k not in applied}

    def _operation(self, write: AccountWrite) -> InsertOne[Document] | UpdateOne:
        state = write.after
        log_ids = write.entry_ids[-self._kept:]
        ms, seq = write.last_position
        partition = write.entries[0].partition
        if write.expected_version == 0:
            return InsertOne(document(state, write.event_ids[-self._kept:], log_ids, partition, (ms, seq)))
        return UpdateOne(
            {"_id": state.id, "version": write.expected_version},
            {"$set": {"balance_minor": Int64(state.balance), "balance": format_minor(state.balance),
                      "version": state.version, "owner": _owner(state.owner),
                      "updated_at": _time(state.updated_at), "partition": partition,
                      "log_ms": Int64(ms), "log_seq": seq},
             "$push": {"timestamps": {"$each": log_ids, "$slice": -self._kept},
                       "event_ids": {"$each": write.event_ids, "$slice": -self._kept}}},
        )

    def _repair(self, repair: Repair) -> ReplaceOne[Document] | DeleteOne:
        if repair.state is None:
            return DeleteOne({"_id": repair.account_id})
        return ReplaceOne({"_id": repair.account_id},
                          document(repair.state, repair.event_ids[-self._kept:], [], repair.partition,
                                   repair.position), upsert=True)

    def _checkpoint(self, checkpoint: CheckpointWrite) -> UpdateOne:
        where: dict[str, Any] = {"_id": self._checkpoint_id(checkpoint.partition)}
        if checkpoint.expected is not None:
            where["entry_id"] = checkpoint.expected
        return UpdateOne(where, {"$set": {"kind": "checkpoint", "group": self.group, "partition": checkpoint.partition,
                                          "entry_id": checkpoint.entry_id, "event_id": checkpoint.event_id,
                                          "owner": self.owner, "updated_ms": Int64(time.time() * 1000)}},
                         upsert=checkpoint.expected is None)

    def _checkpoint_id(self, partition: int) -> str:
        return f"_checkpoint.{self.group}.p{partition}"

    def checkpoint(self, partition: int) -> Checkpoint | None:
        """The partition's checkpoint; ``MalformedDocument`` if what stands under its id is not one (the
        projector then re-projects the partition from its log instead of trusting it)."""
        with mongo_unavailable_as_error():
            doc = self._collection.find_one({"_id": self._checkpoint_id(partition)})
        if doc is None:
            return None
        entry_id, event_id, owner, updated = (doc.get(k) for k in ("entry_id", "event_id", "owner", "updated_ms"))
        if (doc.get("kind") != "checkpoint" or not isinstance(entry_id, str) or not _ENTRY_ID.fullmatch(entry_id)
                or not isinstance(event_id, str | None) or not isinstance(owner, str | None)
                or not (updated is None or isinstance(updated, int))):
            raise MalformedDocument(f"the checkpoint of partition {partition} ({self._checkpoint_id(partition)}) "
                                    "is not a checkpoint document")
        return Checkpoint(partition, entry_id, event_id or "", owner or "", updated)

    def applied_after(self, partition: int, position: tuple[int, int]) -> list[str]:
        """Accounts of ``partition`` whose last applied log entry lies after ``position``."""
        ms, seq = position
        with mongo_unavailable_as_error():
            found = self._collection.find({"partition": partition, "log_ms": {"$gte": ms}, **ACCOUNTS},
                                          {"log_ms": 1, "log_seq": 1})
            return sorted(doc["_id"] for doc in found if (int(doc["log_ms"]), int(doc.get("log_seq", 0))) > (ms, seq))

    def repair(self, repairs: Sequence[Repair]) -> None:
        self.write((), (), repairs)

    def create_checkpoint(self, partition: int) -> None:
        """A partition that has never been projected starts at the beginning of its log. Whatever stood under
        the checkpoint's id (a malformed document) is replaced whole, not merged into."""
        checkpoint_id = self._checkpoint_id(partition)
        with mongo_unavailable_as_error():
            self._collection.replace_one({"_id": checkpoint_id}, {
                "_id": checkpoint_id, "kind": "checkpoint", "group": self.group, "partition": partition,
                "entry_id": "0-0", "event_id": "", "owner": self.owner, "updated_ms": Int64(time.time() * 1000)},
                upsert=True)

    # --- reading, for operators ---

    def find(self, account_id: str) -> Document | None:
        """The document of ``account_id`` (an id the caller validated: an account id can never name a
        checkpoint, whose ids start with '_')."""
        with mongo_unavailable_as_error():
            return self._collection.find_one({"_id": account_id, **ACCOUNTS})

    def documents(self) -> dict[str, Document]:
        with mongo_unavailable_as_error():
            return {doc["_id"]: doc for doc in self._collection.find(ACCOUNTS)}

    def iterate(self, batch: int = 1000) -> Iterator[Document]:
        with mongo_unavailable_as_error():
            yield from self._collection.find(ACCOUNTS, batch_size=batch)

    def count(self) -> int:
        with mongo_unavailable_as_error():
            return self._collection.count_documents(ACCOUNTS)

    # --- rebuild (blue/green) ---

    def recreate(self) -> None:
        with mongo_unavailable_as_error():
            self._collection.drop()

    def insert(self, documents: Iterable[Document], chunk: int = 1000) -> int:
        count = 0
        batch: list[Document] = []
        with mongo_unavailable_as_error():
            for doc in documents:
                batch.append(doc)
                if len(batch) >= chunk:
                    self._collection.insert_many(batch, ordered=False)
                    count += len(batch)
                    batch = []
            if batch:
                self._collection.insert_many(batch, ordered=False)
                count += len(batch)
        return count

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
            guard = {"version": {"$lte": doc["version"]}} if "version" in doc else {}
            ops.append(UpdateOne({"_id": doc["_id"], **guard}, {"$set": fields}, upsert=True))
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


def document(state: Account, event_ids: list[str], log_ids: list[str], partition: int,
             position: tuple[int, int]) -> Document:
    return {
        "_id": state.id,
        "balance_minor": Int64(state.balance),
        "balance": format_minor(state.balance),
        "version": state.version,
        "owner": _owner(state.owner),
        "event_ids": event_ids,
        "timestamps": log_ids,
        "partition": partition,
        "log_ms": Int64(position[0]),
        "log_seq": position[1],
        "created_at": _time(state.opened_at),
        "updated_at": _time(state.updated_at),
    }


def _time(iso: str | None) -> datetime | None:
    return None if iso is None else datetime.fromisoformat(iso.replace("Z", "+00:00"))


def _owner(owner: Owner | None) -> Document | None:
    """The owner as the query side will filter on it: {iss, sub}, or None for an account nobody owns."""
    return None if owner is None else {"iss": owner.issuer, "sub": owner.subject}


_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


def _current(doc: Document) -> Current:
    try:
        return Current(document_state(doc), tuple(doc.get("event_ids") or ()))
    except MalformedDocument as exc:  # planned as a divergence: repaired from the account's stream
        return Current(Account(str(doc["_id"])), malformed=exc.detail)


def document_state(doc: Document) -> Account:
    """The account a document describes; ``MalformedDocument`` if it is not one the projector wrote."""
    def iso(value: object) -> str | None:
        return value.isoformat() if isinstance(value, datetime) else None

    account_id, balance, version = doc.get("_id"), doc.get("balance_minor", 0), doc.get("version", 0)
    if (not isinstance(account_id, str) or not ACCOUNT_ID_PATTERN.fullmatch(account_id)
            or not isinstance(balance, int) or not isinstance(version, int) or version < 0
            or not isinstance(doc.get("event_ids", []), list)):
        raise MalformedDocument(f"document {str(account_id)[:80]!r} is not an account document the projector "
                                "wrote")
    return Account(account_id, int(balance), version, iso(doc.get("created_at")), iso(doc.get("updated_at")),
                   owner_of(doc))


def owner_of(doc: Document) -> Owner | None:
    stored = doc.get("owner")
    if isinstance(stored, dict) and isinstance(stored.get("iss"), str) and isinstance(stored.get("sub"), str):
        return Owner(stored["iss"], stored["sub"])
    return None
