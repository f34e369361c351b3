"""An in-memory read model implementing the same port as ``MongoReadModel``, and passing the same contract
suite (``tests/contract/test_read_model_contract.py``): the fast tier's stand-in for the database, with a
switch to play its outage."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

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
from projector.statements import Transaction, transaction_document
from shared.errors import ReadModelUnavailable
from shared.money import format_minor
from shared.read_model_layout import checkpoint_id, transaction_id, transactions_name


class Database:
    """Collections by name, shared by the read models made from one another (``sibling``)."""

    def __init__(self) -> None:
        self.collections: dict[str, dict[Any, Document]] = {}
        self.lock = threading.Lock()
        self.down = False


class InMemoryReadModel:
    def __init__(self, collection: str = "accountCollection", kept: int = 20, group: str = "projector",
                 owner: str = "", database: Database | None = None) -> None:
        self._db = database or Database()
        self._name = collection
        self._kept = kept
        self.group = group
        self.owner = owner

    @property
    def name(self) -> str:
        return self._name

    @property
    def down(self) -> bool:
        return self._db.down

    @down.setter
    def down(self, value: bool) -> None:
        self._db.down = value

    @property
    def _docs(self) -> dict[Any, Document]:
        if self._db.down:
            raise ReadModelUnavailable("the in-memory read model is down")
        return self._db.collections.setdefault(self._name, {})

    @property
    def _txs(self) -> dict[Any, Document]:
        if self._db.down:
            raise ReadModelUnavailable("the in-memory read model is down")
        return self._db.collections.setdefault(transactions_name(self._name), {})

    def describe(self) -> str:
        return f"in-memory read model, {self._name}"

    def ping(self) -> None:
        _ = self._docs

    def sibling(self, name: str) -> ReadModel:
        return InMemoryReadModel(name, self._kept, self.group, self.owner, self._db)

    def current(self, account_ids: Iterable[str]) -> dict[str, Current]:
        with self._db.lock:
            docs = self._docs
            return {i: current_of(copy.deepcopy(docs[i])) for i in set(account_ids)
                    if i in docs and "kind" not in docs[i]}

    def write(self, writes: Sequence[AccountWrite], checkpoints: Sequence[CheckpointWrite] = (),
              repairs: Sequence[Repair] = ()) -> WriteResult:
        with self._db.lock:
            docs, txs = self._docs, self._txs
            for repair in repairs:
                for key in [k for k, d in txs.items() if d["account_id"] == repair.account_id]:
                    del txs[key]
                if repair.state is not None:
                    txs.update((d["_id"], d) for d in map(transaction_document, repair.transactions))
            applied = {w.after.id for w in writes if self._apply(docs, w)}
            # Decided by the version guard: whoever wrote it, the account is projected up to its version.
            applied |= {w.after.id for w in writes
                        if isinstance(docs.get(w.after.id, {}).get("version"), int)
                        and docs[w.after.id]["version"] >= w.after.version}
            for write in writes:
                if write.after.id in applied:
                    txs.update((d["_id"], d) for d in map(transaction_document, write.transactions))
            for repair in repairs:
                if repair.state is None:
                    if "kind" not in docs.get(repair.account_id, {"kind": 1}):
                        del docs[repair.account_id]
                else:
                    docs[repair.account_id] = document(repair.state, repair.event_ids[-self._kept:], [],
                                                       repair.partition, repair.position)
            held = True
            for checkpoint in checkpoints:
                held &= self._move(docs, checkpoint)
        return WriteResult(applied, {}, held)

    def _apply(self, docs: dict[Any, Document], write: AccountWrite) -> bool:
        state, position = write.after, write.last_position
        log_ids = write.entry_ids[-self._kept:]
        partition = write.entries[0].partition
        stored = docs.get(state.id)
        if write.expected_version == 0:
            if stored is not None:
                return False  # lost a race: the guard decides
            docs[state.id] = document(state, write.event_ids[-self._kept:], log_ids, partition, position)
            return True
        if stored is None or stored.get("version") != write.expected_version:
            return False
        stored.update({"balance_minor": state.balance, "balance": format_minor(state.balance),
                       "version": state.version, "owner": owner_document(state.owner),
                       "updated_at": timestamp(state.updated_at), "partition": partition,
                       "log_ms": position[0], "log_seq": position[1],
                       "timestamps": (list(stored.get("timestamps") or []) + log_ids)[-self._kept:],
                       "event_ids": (list(stored.get("event_ids") or []) + write.event_ids)[-self._kept:]})
        return True

    def _move(self, docs: dict[Any, Document], checkpoint: CheckpointWrite) -> bool:
        key = checkpoint_id(self.group, checkpoint.partition)
        stored = docs.get(key)
        if checkpoint.expected is not None and (stored is None or stored.get("entry_id") != checkpoint.expected):
            return False
        fields = checkpoint_document(self.group, self.owner, checkpoint.partition, checkpoint.entry_id,
                                     checkpoint.event_id, int(time.time() * 1000))
        docs[key] = {**(stored or {}), **fields}
        return True

    def checkpoint(self, partition: int) -> Checkpoint | None:
        with self._db.lock:
            doc = copy.deepcopy(self._docs.get(checkpoint_id(self.group, partition)))
        return checkpoint_of(doc, self.group, partition)

    def create_checkpoint(self, partition: int) -> None:
        fresh = checkpoint_document(self.group, self.owner, partition, "0-0", "", int(time.time() * 1000))
        with self._db.lock:
            self._docs[fresh["_id"]] = fresh

    def applied_after(self, partition: int, position: tuple[int, int]) -> list[str]:
        with self._db.lock:
            return sorted(key for key, doc in self._docs.items()
                          if "kind" not in doc and doc.get("partition") == partition
                          and (doc.get("log_ms", 0), doc.get("log_seq", 0)) > position)

    def find(self, account_id: str) -> Document | None:
        with self._db.lock:
            found = self._docs.get(account_id)
            return None if found is None or "kind" in found else copy.deepcopy(found)

    def transactions(self, account_id: str) -> list[Document]:
        with self._db.lock:
            return sorted((copy.deepcopy(d) for d in self._txs.values() if d["account_id"] == account_id),
                          key=lambda d: d["version"])

    def put_transactions(self, transactions: Iterable[Transaction]) -> None:
        with self._db.lock:
            self._txs.update((d["_id"], d) for d in map(transaction_document, transactions))

    def missing_transactions(self, wanted: set[tuple[str, int]]) -> set[tuple[str, int]]:
        with self._db.lock:
            return {key for key in wanted if transaction_id(*key) not in self._txs}

    def ensure_indexes(self) -> None:
        _ = self._docs  # nothing to index in memory; an outage is still one

    def documents(self) -> dict[str, Document]:
        with self._db.lock:
            return {key: copy.deepcopy(doc) for key, doc in self._docs.items() if "kind" not in doc}

    def note(self, name: str) -> Document | None:
        with self._db.lock:
            found = self._docs.get(note_id(name))
            return copy.deepcopy(found) if found is not None and found.get("kind") == "note" else None

    def write_note(self, name: str, fields: Document) -> None:
        with self._db.lock:
            self._docs[note_id(name)] = copy.deepcopy(note_document(name, fields))

    def recreate(self) -> None:
        with self._db.lock:
            self._docs.clear()
            self._txs.clear()

    def insert(self, documents: Iterable[Document]) -> int:
        count = 0
        with self._db.lock:
            docs = self._docs
            for doc in documents:
                docs[doc["_id"]] = copy.deepcopy(doc)
                count += 1
        return count

    def replace_with(self, built: ReadModel) -> None:
        rebuilt = built.documents()
        with self._db.lock:
            docs = self._docs
            for key, doc in rebuilt.items():
                live = docs.get(key)
                if live is None or live.get("version", 0) <= doc.get("version", 0):
                    docs[key] = doc
            gone = {k for k, d in docs.items() if "kind" not in d and k not in rebuilt}
            for key in gone:
                del docs[key]
            txs = self._txs
            for key in [k for k, d in txs.items() if d["account_id"] in gone]:
                del txs[key]
        built.recreate()
