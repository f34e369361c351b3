"""One contract for every read model: the in-memory fake (fast tier), the MongoDB stand-in, and a real MongoDB
when MONGODB_URI is set. What the projector relies on: version-guarded writes decided by the stored version,
repairs, guarded and unguarded checkpoint moves, documents and checkpoints never taken for one another."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from pymongo import MongoClient

from devstack.mongo_standin import MongoStandIn
from projector.mongo_read_model import MongoReadModel
from projector.projection import AccountWrite, LogEntry
from projector.read_model import (
    CheckpointWrite,
    MalformedDocument,
    ReadModel,
    Repair,
    document,
)
from projector.statements import Transaction
from shared.account import Account
from shared.errors import ReadModelUnavailable
from shared.events import RecordedEvent
from shared.principal import Owner
from tests.support.memory_read_model import InMemoryReadModel

KEPT = 3
ALICE = Owner("https://issuer.test", "alice")


def _entry(account_id: str, version: int, entry_id: str, partition: int = 1) -> LogEntry:
    event = RecordedEvent(account_id, version, "FundsDeposited", {"amount_minor": 100}, f"ev-{account_id}-{version}",
                          "2026-11-28T12:00:00Z", 1)
    return LogEntry(partition, entry_id, {}, event)


def _write(account_id: str, expected: int, to: int, balance: int, first_ms: int = 100,
           owner: Owner | None = ALICE) -> AccountWrite:
    entries = [_entry(account_id, v, f"{first_ms + v}-0") for v in range(expected + 1, to + 1)]
    after = Account(account_id, balance, to, "2026-11-28T12:00:00+00:00", "2026-11-28T12:00:05+00:00", owner)
    return AccountWrite(expected, after, [f"ev-{account_id}-{v}" for v in range(expected + 1, to + 1)], entries)


class ReadModelContract:
    def test_a_new_account_is_inserted_and_read_back(self, model: ReadModel) -> None:
        assert model.write([_write("acc", 0, 2, 200)]).applied == {"acc"}
        current = model.current(["acc", "other"])
        assert set(current) == {"acc"}
        assert (current["acc"].state.version, current["acc"].state.balance) == (2, 200)
        assert current["acc"].state.owner == ALICE and current["acc"].event_ids == ("ev-acc-1", "ev-acc-2")
        doc = model.find("acc")
        assert doc is not None and doc["balance"] == "2.00" and doc["balance_minor"] == 200
        assert doc["owner"] == {"iss": ALICE.issuer, "sub": ALICE.subject} and doc["timestamps"] == ["101-0", "102-0"]

    def test_writes_apply_only_at_the_expected_version(self, model: ReadModel) -> None:
        model.write([_write("acc", 0, 2, 200)])
        stale = model.write([_write("acc", 1, 3, 999)])  # expects version 1; the document is at 2
        assert stale.applied == set() and stale.refused == {}
        assert model.write([_write("acc", 2, 5, 500)]).applied == {"acc"}
        current = model.current(["acc"])["acc"]
        assert (current.state.version, current.state.balance) == (5, 500)
        assert current.event_ids == ("ev-acc-3", "ev-acc-4", "ev-acc-5")  # the latest KEPT
        doc = model.find("acc")
        assert doc is not None and len(doc["timestamps"]) == KEPT and doc["log_ms"] == 105

    def test_a_second_insert_loses_the_race_and_an_applied_write_is_recognised(self, model: ReadModel) -> None:
        model.write([_write("acc", 0, 2, 200)])
        again = model.write([_write("acc", 0, 1, 100)])  # an older write of a version the document passed
        assert again.applied == {"acc"}  # decided by the stored version, not by counts
        assert model.current(["acc"])["acc"].state.version == 2

    def test_transactions_are_written_with_applied_documents_only_and_replaced_by_repairs(
            self, model: ReadModel) -> None:
        def moved(account_id: str, version: int, balance: int) -> Transaction:
            return Transaction(account_id, version, f"ev-{account_id}-{version}", "FundsDeposited", 100, balance,
                               "2026-11-28T12:00:00.000000Z")

        first = _write("acc", 0, 2, 200)
        first.transactions = [moved("acc", 1, 100), moved("acc", 2, 200)]
        model.write([first])
        stale = _write("acc", 1, 3, 999)  # refused by the version guard: its transactions are not written
        stale.transactions = [moved("acc", 3, 999)]
        model.write([stale])
        assert [(d["version"], d["balance_minor"]) for d in model.transactions("acc")] == [(1, 100), (2, 200)]
        assert model.missing_transactions({("acc", 2), ("acc", 3), ("other", 1)}) == {("acc", 3), ("other", 1)}
        model.put_transactions([moved("acc", 2, 200)])  # the same fact again changes nothing
        assert len(model.transactions("acc")) == 2
        model.put_transactions([moved("acc", 2, 201), moved("acc", 4, 300)])  # written again: the new word stands
        assert [(d["version"], d["balance_minor"]) for d in model.transactions("acc")] == [(1, 100), (2, 201),
                                                                                           (4, 300)]
        model.write((), (), [Repair("acc", Account("acc", 50, 2), ["ev-acc-1", "ev-acc-2"], 1, (0, 0),
                                    [moved("acc", 2, 50)])])
        assert [(d["version"], d["balance_minor"]) for d in model.transactions("acc")] == [(2, 50)]  # 1, 4 gone

    def test_repairs_replace_or_delete(self, model: ReadModel) -> None:
        model.write([_write("acc", 0, 2, 200), _write("gone", 0, 1, 100)])
        fixed = Account("acc", 700, 3, None, None, None)
        model.write((), (), [Repair("acc", fixed, ["a", "b", "c", "d"], 1, (300, 0)),
                             Repair("gone", None, [], 1, (0, 0))])
        assert set(model.documents()) == {"acc"}
        current = model.current(["acc"])["acc"]
        assert (current.state.balance, current.state.owner, current.event_ids) == (700, None, ("b", "c", "d"))

    def test_checkpoints_move_guarded_and_live_apart_from_accounts(self, model: ReadModel) -> None:
        assert model.checkpoint(2) is None
        model.write((), [CheckpointWrite(2, "10-0", "ev-10")])
        checkpoint = model.checkpoint(2)
        assert checkpoint is not None and (checkpoint.entry_id, checkpoint.event_id) == ("10-0", "ev-10")
        assert model.write((), [CheckpointWrite(2, "11-0", "ev-11", expected="10-0")]).checkpoints_held
        assert not model.write((), [CheckpointWrite(2, "12-0", "ev-12", expected="10-0")]).checkpoints_held
        moved = model.checkpoint(2)
        assert moved is not None and moved.entry_id == "11-0"
        assert model.documents() == {} and model.find("_checkpoint.projector.p2") is None

    def test_accounts_applied_after_a_position(self, model: ReadModel) -> None:
        model.write([_write("early", 0, 1, 100, first_ms=100), _write("late", 0, 1, 100, first_ms=500)])
        assert model.applied_after(1, (300, 0)) == ["late"]
        assert model.applied_after(1, (0, 0)) == ["early", "late"]
        assert model.applied_after(2, (0, 0)) == []

    def test_what_is_not_a_checkpoint_or_an_account_is_never_trusted(self, model: ReadModel) -> None:
        model.insert([{"_id": "_checkpoint.projector.p4", "balance_minor": 0, "version": 0},
                      {**document(Account("acc", 1, 1), [], [], 1, (1, 0)), "balance_minor": "lots"}])
        with pytest.raises(MalformedDocument, match="not a checkpoint"):
            model.checkpoint(4)
        model.create_checkpoint(4)  # replaces it whole
        fresh = model.checkpoint(4)
        assert fresh is not None and fresh.entry_id == "0-0"
        assert model.current(["acc"])["acc"].malformed is not None

    def test_a_rebuilt_collection_replaces_the_live_one_without_emptying_it(self, model: ReadModel) -> None:
        model.write([_write("kept", 0, 3, 300), _write("stale", 0, 1, 100), _write("newer", 0, 5, 500)])
        built = model.sibling(f"{model.name}_rebuilt")
        built.recreate()
        built.insert([document(Account("kept", 999, 3), [], [], 1, (1, 0)),
                      document(Account("newer", 1, 4), [], [], 1, (1, 0))])
        model.replace_with(built)
        docs = model.documents()
        assert set(docs) == {"kept", "newer"}
        assert docs["kept"]["balance_minor"] == 999 and docs["newer"]["version"] == 5  # the live one was newer
        assert built.documents() == {}


class TestInMemoryReadModel(ReadModelContract):
    @pytest.fixture
    def model(self) -> ReadModel:
        return InMemoryReadModel(kept=KEPT)

    def test_an_outage_is_read_model_unavailable(self, model: ReadModel) -> None:
        assert isinstance(model, InMemoryReadModel)
        model.down = True
        with pytest.raises(ReadModelUnavailable):
            model.current(["acc"])


def _mongo_model(uri: str) -> Iterator[ReadModel]:
    database = f"c{uuid.uuid4().hex[:12]}"
    client: MongoClient[dict[str, object]] = MongoClient(uri, tz_aware=True)
    try:
        yield MongoReadModel(client, database, "accountCollection", KEPT)
    finally:
        client.drop_database(database)
        client.close()


class TestStandInReadModel(ReadModelContract):
    @pytest.fixture
    def model(self, mongo_standin: MongoStandIn) -> Iterator[ReadModel]:
        yield from _mongo_model(mongo_standin.uri)


class TestRealMongoReadModel(ReadModelContract):
    @pytest.fixture
    def model(self, real_mongo_uri: str) -> Iterator[ReadModel]:
        yield from _mongo_model(real_mongo_uri)
