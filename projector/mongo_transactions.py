"""``MongoTransactions``: the read model's transactions collection on MongoDB, the part of ``MongoReadModel``
the statements are served from. Each transaction is a fact of one account's version, so writing one again
writes the same document (an upsert by its id), and repairing an account replaces all of its transactions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import islice

from pymongo import ReplaceOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from projector.mongo_connection import DUPLICATE_KEY, stored
from projector.read_model import Document
from projector.statements import Transaction, transaction_document
from shared.read_model_layout import TRANSACTION_INDEXES, transaction_id


class MongoTransactions:
    def __init__(self, collection: Collection[Document]) -> None:
        self._collection = collection

    def put(self, transactions: Iterable[Transaction], chunk: int = 1000) -> None:
        """Inserted, as nearly all are new; one already there is replaced by this one (the stream's word), so
        writing again heals a document a hand or a lost history changed."""
        docs = map(stored, map(transaction_document, transactions))
        while batch := list(islice(docs, chunk)):
            try:
                self._collection.insert_many(batch, ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != DUPLICATE_KEY for e in errors):
                    raise
                there = [batch[e["index"]] for e in errors]
                self._collection.bulk_write([ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in there],
                                            ordered=False)

    def replace(self, accounts: Sequence[str], transactions: Iterable[Transaction]) -> None:
        """Every transaction of ``accounts`` becomes those of ``transactions``."""
        self.forget(accounts)
        self.put(transactions)

    def forget(self, accounts: Sequence[str]) -> None:
        if accounts:
            self._collection.delete_many({"account_id": {"$in": list(accounts)}})

    def missing(self, wanted: set[tuple[str, int]]) -> set[tuple[str, int]]:
        ids = {transaction_id(account_id, version): (account_id, version) for account_id, version in wanted}
        found = {doc["_id"] for doc in self._collection.find({"_id": {"$in": list(ids)}}, {"_id": 1})}
        return {key for doc_id, key in ids.items() if doc_id not in found}

    def of(self, account_id: str) -> list[Document]:
        return list(self._collection.find({"account_id": account_id}).sort("version", 1))

    def ensure_indexes(self) -> None:
        for name, keys in TRANSACTION_INDEXES:
            self._collection.create_index(keys, name=name)

    def drop(self) -> None:
        self._collection.drop()

