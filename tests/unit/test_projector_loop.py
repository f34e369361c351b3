"""The projector's loop on fakes, in the fast tier: the real adapters on fakeredis (which passes the consumer
group's and the event store's contracts, tests/contract) and the in-memory read model (which passes the read
model's). The scenarios that need servers in tests/integration, run here in seconds: takeover of a dead
consumer's entries, gap-fill, quarantine and parked replay, repair after the log lost entries the read model
had applied, re-projection after a wiped read model, outage back-off, and the blocking loop itself."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import fakeredis
import pytest

from projector import maintenance
from projector.partition_log import to_entry
from projector.runner import Runner
from shared import account
from shared.account import Deposit, OpenAccount
from shared.errors import ReadModelUnavailable
from shared.events import RecordedEvent
from shared.keys import KeySpace
from shared.principal import ANONYMOUS
from shared.redis_store import RedisEventStore
from shared.service import AccountService, CommandContext
from tests.support.events import new_event
from tests.support.memory_read_model import InMemoryReadModel
from tests.support.readmodel import (
    assert_documents_match,
    assert_transactions_match,
    drain,
    group_drained,
    make_projector,
    settings,
)
from tests.support.waiting import wait_until

KEYS = KeySpace("fast", 4)


@contextmanager
def running(projector: Runner) -> Iterator[threading.Thread]:
    """``projector.run`` on a thread of its own, stopped and joined afterwards."""
    runner = threading.Thread(target=projector.run)
    runner.start()
    try:
        yield runner
    finally:
        projector.stop()
        runner.join(10)


@dataclass
class World:
    server: fakeredis.FakeServer
    client: Any  # fakeredis, typed loosely: redis-py's stubs make every reply optional
    store: RedisEventStore
    service: AccountService
    model: InMemoryReadModel

    def projector(self, **overrides: Any) -> Runner:
        config = settings("mongodb://unused", "unused", **overrides)
        return make_projector(self.client, KEYS, config, model=self.model)

    def open(self, account_id: str, deposits: int = 0) -> None:
        self.service.execute(account_id, OpenAccount(), CommandContext("r", ANONYMOUS))
        for _ in range(deposits):
            self.service.execute(account_id, Deposit(100), CommandContext("r", ANONYMOUS))

    def matches(self) -> bool:
        try:
            assert_documents_match(self.client, KEYS, self.model.documents())
            assert_transactions_match(self.client, KEYS, self.model.transactions)
        except AssertionError:
            return False
        return group_drained(self.client, KEYS, "projector")


@pytest.fixture
def world() -> Iterator[World]:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    store = RedisEventStore(client, KEYS, 3600)
    yield World(server, client, store, AccountService(store, snapshot_interval=2, sleep=lambda _: None),
                InMemoryReadModel(kept=5))
    client.close()


def _log_entries(world: World) -> list[Any]:
    return [to_entry(p, raw_id.decode(), fields) for p in range(KEYS.partitions)
            for raw_id, fields in world.client.xrange(KEYS.partition_log(p))]


def test_a_burst_is_projected_exactly(world: World) -> None:
    for n in range(6):
        world.open(f"acct-{n}", deposits=n)
    drain(world.projector())
    assert world.matches()


def test_a_dead_consumers_pending_entries_are_taken_over_at_once(world: World) -> None:
    world.open("held-up")
    log = KEYS.partition_log(KEYS.partition_of("held-up"))
    world.client.xgroup_create(log, "projector", id="0", mkstream=True)
    world.client.xreadgroup("projector", "pod-dead", {log: ">"}, count=1)  # reads version 1, then dies
    for _ in range(10):
        world.service.execute("held-up", Deposit(100), CommandContext("r", ANONYMOUS))
    drain(world.projector(lease_ttl_seconds=600))  # no timer could have freed it
    assert world.matches()
    assert b"pod-dead" not in {c["name"] for c in world.client.xinfo_consumers(log, "projector")}


def test_entries_ahead_of_the_document_are_filled_from_the_stream(world: World) -> None:
    projector = world.projector()
    projector.step()
    world.open("gappy", deposits=4)
    first, _, _, fourth, fifth = sorted(_log_entries(world), key=lambda e: e.event.version)
    report = projector.process([fifth, first])  # out of order, three versions never delivered
    assert (report.applied, report.held) == (2, 0)
    doc = world.model.find("gappy")
    assert doc is not None and (doc["version"], doc["balance_minor"]) == (5, 400)
    assert projector.process([fourth]).skipped == 1


def test_poison_is_parked_its_account_quarantined_and_replayed_after_a_fix(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.store.append("victim", 0, [new_event("victim", "AccountOpened")])
    world.store.append("victim", 1, [new_event("victim", "FundsFrozen")])
    world.store.append("victim", 2, [new_event("victim", amount=700)])
    world.open("bystander", deposits=1)
    projector = world.projector(max_deliveries=3)
    parts = range(KEYS.partitions)

    def parked_both() -> bool:
        projector.step()
        return len(projector.dead_letters.parked(parts)) == 2

    wait_until(parked_both, 10, "the poison and the event behind it to be parked", interval=0.01)
    drain(projector)
    assert (world.model.find("bystander") or {})["balance_minor"] == 100
    first, _ = sorted(projector.dead_letters.parked(parts), key=lambda p: p.original_id)
    assert first.deliveries >= 3 and "unknown event type" in first.error
    assert projector.dead_letters.quarantined(KEYS.partition_of("victim")).keys() == {"victim"}
    original = account.apply_recorded

    def knows_frozen_funds(state: account.Account, event: RecordedEvent) -> account.Account:
        if event.type == "FundsFrozen":
            return account.Account(state.id, state.balance, event.version, state.opened_at, event.recorded_at)
        return original(state, event)

    monkeypatch.setattr(account, "apply_recorded", knows_frozen_funds)
    report = maintenance.replay_parked(projector.dead_letters, projector.read_model, projector.history)
    assert len(report.replayed) == 2 and report.released == ["victim"]
    assert (world.model.find("victim") or {})["version"] == 3


def test_versions_redis_lost_and_handed_out_again_are_repaired_from_the_stream(world: World) -> None:
    world.open("acct", deposits=2)
    projector = world.projector()
    drain(projector)
    # Redis goes back in time: versions 2 and 3 vanish from the stream and the log, then 2 is reissued.
    partition = KEYS.partition_of("acct")
    log = KEYS.partition_log(partition)
    for entry_id, fields in world.client.xrange(log):
        if int(fields[b"version"]) >= 2:
            world.client.xdel(log, entry_id)
    stream = KEYS.stream("acct")
    [(_, opened)] = world.client.xrange(stream, "1-0", "1-0")
    world.client.delete(stream)
    world.client.xadd(stream, opened, id="1-0")
    world.client.set(KEYS.version("acct"), 1)
    world.client.delete(KEYS.snapshot("acct"))
    world.service.execute("acct", Deposit(5), CommandContext("r", ANONYMOUS))
    projector.partitions[partition].progress.check_due = 0  # the next self-check, now
    drain(projector)
    assert world.matches()
    assert (world.model.find("acct") or {})["balance_minor"] == 5


def test_a_wiped_read_model_is_reprojected(world: World) -> None:
    for n in range(4):
        world.open(f"acct-{n}", deposits=3)
    projector = world.projector(batch_size=3)
    drain(projector)
    world.model.recreate()  # the collection dropped, checkpoints and all
    world.open("after", deposits=1)
    def reprojected() -> bool:
        drain(projector)
        return world.matches()

    wait_until(reprojected, 10, "the re-projection")


def test_outages_back_off_and_lose_nothing(world: World) -> None:
    world.open("acct", deposits=1)
    projector = world.projector(stall_seconds=30)
    with running(projector) as runner:
        wait_until(world.matches, 10, "the first projection")
        world.model.down = True
        world.service.execute("acct", Deposit(100), CommandContext("r", ANONYMOUS))
        wait_until(lambda: not projector.health.mongo_up, 10, "the read model's outage to be seen")
        assert not projector.health.ready()[0] and projector.health.live()[0]
        assert not group_drained(world.client, KEYS, "projector")  # nothing acknowledged meanwhile
        world.model.down = False
        wait_until(world.matches, 10, "the projection after the read model's outage")
        world.server.connected = False
        wait_until(lambda: not projector.health.redis_up, 10, "Redis's outage to be seen")
        world.server.connected = True
        world.service.execute("acct", Deposit(100), CommandContext("r", ANONYMOUS))
        wait_until(lambda: world.matches() and projector.health.ready()[0], 10, "the projection after Redis's")
    assert not runner.is_alive()


def test_the_running_loop_applies_a_new_entry_without_polling(world: World) -> None:
    projector = world.projector()
    with running(projector):
        wait_until(lambda: len(projector.partitions) == KEYS.partitions, 10, "the partitions to be taken")
        for n in range(20):
            world.open(f"acct-{n}")
            wait_until(partial(world.model.find, f"acct-{n}"), 2, "the new account's document", interval=0.001)
    assert world.matches()


# --- the memo of what this replica wrote ---


class _CountingModel(InMemoryReadModel):
    """Counts the accounts the processor asks the read model for."""

    def __init__(self) -> None:
        super().__init__(kept=5)
        self.asked: list[str] = []

    def current(self, account_ids: Any) -> Any:
        ids = list(account_ids)
        self.asked += ids
        return super().current(ids)


def test_an_accounts_next_entries_are_planned_from_what_this_replica_wrote(world: World) -> None:
    world.model = _CountingModel()
    projector = world.projector()
    world.open("busy", deposits=1)
    drain(projector)
    world.model.asked.clear()
    for _ in range(3):
        world.service.execute("busy", Deposit(100), CommandContext("r", ANONYMOUS))
        drain(projector)
    assert world.model.asked == []  # written from the memo, never read back
    assert world.matches()


def test_a_document_changed_under_the_memo_is_planned_again_at_once_at_no_cost(world: World) -> None:
    world.model = _CountingModel()
    projector = world.projector()
    world.open("moved", deposits=2)
    drain(projector)
    world.model.recreate()  # the document the memo describes is gone (a restore, an operator)
    world.service.execute("moved", Deposit(100), CommandContext("r", ANONYMOUS))
    new = max((e for e in _log_entries(world) if e.account_id == "moved"), key=lambda e: e.event.version)
    report = projector.process([new])
    assert (report.applied, report.held, report.parked) == (1, 0, 0)  # no delivery attempt spent
    doc = world.model.find("moved")
    assert doc is not None and (doc["version"], doc["balance_minor"]) == (4, 300)  # the whole stream, refolded


def test_a_redelivery_is_checked_against_the_read_model_not_the_memo(world: World) -> None:
    world.model = _CountingModel()
    projector = world.projector()
    world.open("again", deposits=1)
    drain(projector)
    world.model.asked.clear()
    first = min((e for e in _log_entries(world) if e.account_id == "again"), key=lambda e: e.event.version)
    assert projector.process([first]).skipped == 1
    assert world.model.asked == ["again"]


def test_the_memo_is_bounded_and_forgotten_after_an_outage() -> None:
    from projector.memo import Written
    from projector.partitions import Partition
    from projector.projection import Current

    partition = Partition(0, "me|1", written=Written(limit=2))
    for name in ("a", "b", "c"):
        partition.written.put(Current(account.Account(name, 1, 0, None, None)))
    assert [partition.written.get(n) is not None for n in ("a", "b", "c")] == [False, True, True]
    partition.rewind()
    assert partition.written.get("c") is None


class CrashesBetweenDocumentAndTransactions(InMemoryReadModel):
    """Writes the documents of its first batch, then fails before their transactions, as a crash would."""

    crashed = False

    def write(self, writes: Any, checkpoints: Any = (), repairs: Any = ()) -> Any:
        if writes and not self.crashed:
            self.crashed = True
            super().write([replace(w, transactions=[]) for w in writes])
            raise ReadModelUnavailable("crashed between the documents and their transactions")
        return super().write(writes, checkpoints, repairs)


def test_a_crash_between_a_document_and_its_transactions_is_mended_by_the_redelivery(world: World) -> None:
    world.model = CrashesBetweenDocumentAndTransactions(kept=5)
    world.open("acct", deposits=3)
    projector = world.projector(stall_seconds=30)
    with running(projector):
        wait_until(world.matches, 10, "the transactions restored from the stream on redelivery")
    assert world.model.crashed and [t["version"] for t in world.model.transactions("acct")] == [2, 3, 4]
