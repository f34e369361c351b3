"""``MongoReadModel``: the read model on MongoDB; with ``mongo_transactions``, the projector's only pymongo code.

Writes go with write concern ``majority``, so an acknowledged write survives a replica-set failover and
acknowledging the Redis entry afterwards cannot lose it (on a standalone server "majority" is the one node).
Outcomes are decided by the version guard, never by write counts: whoever wrote it, an account is projected
up to its stored version. Connection failures and timeouts become ``ReadModelUnavailable``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from itertools import islice
from typing import Any
from urllib.parse import urlsplit

from bson.int64 import Int64
from pymongo import DeleteOne, InsertOne, MongoClient, ReplaceOne, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError
from pymongo.write_concern import WriteConcern

from projector.mongo_connection import DUPLICATE_KEY, stored, unavailable_as_error
from projector.mongo_transactions import MongoTransactions
from projector.projection import AccountWrite, Current
from projector.read_model import (
    Checkpoint,
    CheckpointWrite,
    Document,
    ReadModel,
    Repair,
    WriteResult,
    checkpoint_document,
    checkpoint_of,
    current_of,
    document,
    note_document,
    note_id,
    owner_document,
    timestamp,
)
from projector.statements import Transaction
from shared.money import format_minor
from shared.read_model_layout import ACCOUNT_INDEXES, ACCOUNTS, checkpoint_id, transactions_name

Operation = InsertOne[Document] | UpdateOne | ReplaceOne[Document] | DeleteOne


class MongoReadModel:
    def __init__(self, client: MongoClient[Document], database: str, collection: str, kept: int,
                 group: str = "projector", owner: str = "") -> None:
        self._client = client
        self._db = client[database]
        self._name = collection
        self._collection: Collection[Document] = self._db.get_collection(
            collection, write_concern=WriteConcern(w="majority"))
        self._transactions = MongoTransactions(self._db.get_collection(
            transactions_name(collection), write_concern=WriteConcern(w="majority")))
        self._kept = kept
        self.group = group
        self.owner = owner

    @property
    def name(self) -> str:
        return self._name

    def describe(self) -> str:
        hosts = ",".join(f"{host}:{port}" for host, port in self._client.topology_description.server_descriptions())
        return f"MongoDB {hosts or urlsplit(str(self._client.address)).netloc}, {self._db.name}.{self._name}"

    def sibling(self, name: str) -> ReadModel:
        return MongoReadModel(self._client, self._db.name, name, self._kept, self.group, self.owner)

    def ping(self) -> None:
        with unavailable_as_error():
            self._client.admin.command("ping")

    def current(self, account_ids: Iterable[str]) -> dict[str, Current]:
        ids = list(set(account_ids))
        if not ids:
            return {}
        with unavailable_as_error():
            found = self._collection.find({"_id": {"$in": ids}, **ACCOUNTS},
                                          {"balance_minor": 1, "version": 1, "created_at": 1, "updated_at": 1,
                                           "event_ids": 1, "owner": 1})
            return {doc["_id"]: current_of(doc) for doc in found}

    def write(self, writes: Sequence[AccountWrite], checkpoints: Sequence[CheckpointWrite] = (),
              repairs: Sequence[Repair] = ()) -> WriteResult:
        applied, refused = self._write_guarded(writes) if writes else (set(), {})
        # After the documents, so the statements cost the accounts' latency nothing; a document that moved on
        # without its transactions (a crash in between) gets them from its redelivery (``applying``).
        with unavailable_as_error():
            self._transactions.put(t for w in writes if w.after.id in applied for t in w.transactions)
            self._transactions.replace([r.account_id for r in repairs],
                                       (t for r in repairs if r.state is not None for t in r.transactions))
        settle: list[Operation] = [self._repair(r) for r in repairs]
        settle += [self._checkpoint(c) for c in checkpoints if c.expected is None]
        guarded = [self._checkpoint(c) for c in checkpoints if c.expected is not None]
        held = True
        with unavailable_as_error():
            if settle:
                self._collection.bulk_write(settle, ordered=False)
            if guarded:
                # A guarded move that matched nothing: the checkpoint is not where its owner left it.
                held = self._collection.bulk_write(guarded, ordered=False).matched_count == len(guarded)
        return WriteResult(applied, refused, held)

    def put_transactions(self, transactions: Iterable[Transaction]) -> None:
        with unavailable_as_error():
            self._transactions.put(transactions)

    def missing_transactions(self, wanted: set[tuple[str, int]]) -> set[tuple[str, int]]:
        with unavailable_as_error():
            return self._transactions.missing(wanted)

    def transactions(self, account_id: str) -> list[Document]:
        with unavailable_as_error():
            return self._transactions.of(account_id)

    def ensure_indexes(self) -> None:
        with unavailable_as_error():
            for name, keys in ACCOUNT_INDEXES:
                self._collection.create_index(keys, name=name)
            self._transactions.ensure_indexes()

    def _write_guarded(self, writes: Sequence[AccountWrite]) -> tuple[set[str], dict[str, str]]:
        ops = [self._operation(w) for w in writes]
        errors: dict[str, str] = {}
        with unavailable_as_error():
            try:
                result = self._collection.bulk_write(ops, ordered=False)
                complete = result.inserted_count + result.matched_count == len(ops)
            except BulkWriteError as exc:
                complete = False
                for error in exc.details.get("writeErrors", []):
                    if error.get("code") != DUPLICATE_KEY:  # a duplicate insert lost a race: re-read decides
                        errors[writes[error["index"]].after.id] = str(error.get("errmsg", "write refused"))[:500]
            if complete:
                return {w.after.id for w in writes}, errors
            stored = self.current(w.after.id for w in writes)
        applied = {w.after.id for w in writes
                   if w.after.id in stored and stored[w.after.id].state.version >= w.after.version}
        return applied, {k: v for k, v in errors.items() if k not in applied}

    def _operation(self, write: AccountWrite) -> InsertOne[Document] | UpdateOne:
        state = write.after
        log_ids = write.entry_ids[-self._kept:]
        position = write.last_position
        partition = write.entries[0].partition
        if write.expected_version == 0:
            return InsertOne(stored(document(state, write.event_ids[-self._kept:], log_ids, partition, position)))
        return UpdateOne(
            {"_id": state.id, "version": write.expected_version},
            {"$set": {"balance_minor": Int64(state.balance), "balance": format_minor(state.balance),
                      "version": state.version, "owner": owner_document(state.owner),
                      "updated_at": timestamp(state.updated_at), "partition": partition,
                      "log_ms": Int64(position[0]), "log_seq": position[1]},
             "$push": {"timestamps": {"$each": log_ids, "$slice": -self._kept},
                       "event_ids": {"$each": write.event_ids, "$slice": -self._kept}}},
        )

    def _repair(self, repair: Repair) -> ReplaceOne[Document] | DeleteOne:
        if repair.state is None:
            return DeleteOne({"_id": repair.account_id, **ACCOUNTS})
        return ReplaceOne({"_id": repair.account_id},
                          stored(document(repair.state, repair.event_ids[-self._kept:], [], repair.partition,
                                           repair.position)), upsert=True)

    def _checkpoint(self, checkpoint: CheckpointWrite) -> UpdateOne:
        where: dict[str, Any] = {"_id": checkpoint_id(self.group, checkpoint.partition)}
        if checkpoint.expected is not None:
            where["entry_id"] = checkpoint.expected
        fields = stored(checkpoint_document(self.group, self.owner, checkpoint.partition, checkpoint.entry_id,
                                             checkpoint.event_id, int(time.time() * 1000)))
        del fields["_id"]
        return UpdateOne(where, {"$set": fields}, upsert=checkpoint.expected is None)

    def checkpoint(self, partition: int) -> Checkpoint | None:
        with unavailable_as_error():
            doc = self._collection.find_one({"_id": checkpoint_id(self.group, partition)})
        return checkpoint_of(doc, self.group, partition)

    def create_checkpoint(self, partition: int) -> None:
        fresh = checkpoint_document(self.group, self.owner, partition, "0-0", "", int(time.time() * 1000))
        with unavailable_as_error():
            self._collection.replace_one({"_id": fresh["_id"]}, stored(fresh), upsert=True)

    def applied_after(self, partition: int, position: tuple[int, int]) -> list[str]:
        ms, seq = position
        with unavailable_as_error():
            found = self._collection.find({"partition": partition, "log_ms": {"$gte": ms}, **ACCOUNTS},
                                          {"log_ms": 1, "log_seq": 1})
            return sorted(doc["_id"] for doc in found if (int(doc["log_ms"]), int(doc.get("log_seq", 0))) > (ms, seq))

    def find(self, account_id: str) -> Document | None:
        with unavailable_as_error():
            return self._collection.find_one({"_id": account_id, **ACCOUNTS})

    def documents(self) -> dict[str, Document]:
        with unavailable_as_error():
            return {doc["_id"]: doc for doc in self._collection.find(ACCOUNTS)}

    def note(self, name: str) -> Document | None:
        with unavailable_as_error():
            return self._collection.find_one({"_id": note_id(name), "kind": "note"})

    def write_note(self, name: str, fields: Document) -> None:
        with unavailable_as_error():
            self._collection.replace_one({"_id": note_id(name)}, stored(note_document(name, fields)), upsert=True)

    def recreate(self) -> None:
        with unavailable_as_error():
            self._collection.drop()
            self._transactions.drop()

    def insert(self, documents: Iterable[Document], chunk: int = 1000) -> int:
        count, converted = 0, map(stored, documents)
        with unavailable_as_error():
            while batch := list(islice(converted, chunk)):
                self._collection.insert_many(batch, ordered=False)
                count += len(batch)
        return count

    def replace_with(self, built: ReadModel) -> None:
        """Each built account document replaces its live one unless the live one is newer (the live projector
        kept going), then the live documents the rebuild did not produce go: readers see every account, each
        as it was or as rebuilt, and never an empty collection. (Checkpoints are the rebuild's to write.)"""
        rebuilt = built.documents()
        with unavailable_as_error():
            ops: list[UpdateOne | DeleteOne] = []
            for doc in rebuilt.values():
                guard = {"version": {"$lte": doc["version"]}} if "version" in doc else {}
                fields = {k: v for k, v in stored(doc).items() if k != "_id"}
                ops.append(UpdateOne({"_id": doc["_id"], **guard}, {"$set": fields}, upsert=True))
            gone = [key for key in self.documents() if key not in rebuilt]
            ops += [DeleteOne({"_id": key, **ACCOUNTS}) for key in gone]
            for start in range(0, len(ops), 1000):
                self._apply_guarded(ops[start:start + 1000])
            self._transactions.forget(gone)
        built.recreate()

    def _apply_guarded(self, ops: Sequence[UpdateOne | DeleteOne]) -> None:
        try:
            self._collection.bulk_write(list(ops), ordered=False)
        except BulkWriteError as exc:
            # A duplicate key means the live document is newer than the rebuilt one: keep the live one.
            others = [e for e in exc.details.get("writeErrors", []) if e.get("code") != DUPLICATE_KEY]
            if others:
                raise
