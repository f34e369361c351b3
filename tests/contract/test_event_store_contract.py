"""One contract for every ``EventStore`` implementation (pyeventsourcing's recorder test-case idea).

Each subclass at the bottom supplies a store; every test here runs on each of them: the in-memory fake,
fakeredis, and a real Redis server over TCP.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator

import fakeredis
import pytest
import redis

from shared.account import Account
from shared.event_store import (
    Appended,
    Conflict,
    Duplicate,
    EventStore,
    IdempotencyRecord,
    IdempotencyWrite,
)
from shared.events import Metadata, NewEvent, RecordedEvent
from shared.keys import KeySpace
from shared.principal import Owner
from shared.redis_store import RedisEventStore
from shared.stream_codec import decode_entries
from tests.fakes import InMemoryEventStore
from tests.support.events import history, new_event
from tests.support.targets import RedisTarget
from tests.support.waiting import wait_until

TTL_SECONDS = 1


def fp(name: str) -> str:
    """A fingerprint as the service makes them: a SHA-256 in hex."""
    return hashlib.sha256(name.encode()).hexdigest()


def remember(key: str, fingerprint: str = fp("fp-1"), result: str = '{"r":1}') -> IdempotencyWrite:
    return IdempotencyWrite(key, IdempotencyRecord(fingerprint, result))


class EventStoreContract:
    """Each store under test remembers idempotency keys for ``TTL_SECONDS``."""

    @pytest.fixture
    def store(self) -> Iterator[EventStore]:
        raise NotImplementedError

    def partition_log(self, store: EventStore, account_id: str) -> list[RecordedEvent]:
        """Every event the store copied to the partition log of ``account_id``'s partition, in order."""
        raise NotImplementedError

    def let_time_pass(self, store: EventStore, seconds: float, done: Callable[[], bool]) -> None:
        """Let ``seconds`` pass for ``store`` (until ``done()``, or fail): a real store waits, a fake's clock moves."""
        raise NotImplementedError

    def test_unknown_account_has_no_events(self, store: EventStore) -> None:
        loaded = store.load("nobody")
        assert loaded.events == []
        assert loaded.version == 0
        assert loaded.idempotency is None
        assert store.read("nobody") == []

    def test_append_then_load_round_trips_every_field(self, store: EventStore) -> None:
        opened = new_event("acc-1", "AccountOpened")
        deposited = NewEvent(
            type="FundsDeposited", account_id="acc-1", data={"amount_minor": 12345}, event_id="e-2",
            recorded_at="2026-11-28T12:00:01.000000Z",
            metadata=Metadata(correlation_id="c", causation_id="r", idempotency_key="k-1"),
        )
        assert store.append("acc-1", 0, [opened]) == Appended(1)
        assert store.append("acc-1", 1, [deposited]) == Appended(2)
        events = store.load("acc-1").events
        assert [e.version for e in events] == [1, 2]
        last = events[1]
        assert (last.account_id, last.type, last.data, last.event_id, last.recorded_at, last.schema) == (
            "acc-1", "FundsDeposited", {"amount_minor": 12345}, "e-2", "2026-11-28T12:00:01.000000Z", 1)
        assert last.metadata == {"correlation_id": "c", "causation_id": "r", "idempotency_key": "k-1"}
        assert events[0].event_id == opened.event_id

    def test_wrong_expected_version_conflicts_and_writes_nothing(self, store: EventStore) -> None:
        store.append("acc-1", 0, [new_event("acc-1", "AccountOpened")])
        assert store.append("acc-1", 0, [new_event("acc-1")]) == Conflict(1)
        assert store.append("acc-1", 2, [new_event("acc-1")]) == Conflict(1)
        assert store.append("acc-2", 1, [new_event("acc-2")]) == Conflict(0)
        assert [e.version for e in store.load("acc-1").events] == [1]
        assert store.load("acc-2").events == []
        assert len(self.partition_log(store, "acc-1")) == 1

    def test_several_events_in_one_append_get_consecutive_versions(self, store: EventStore) -> None:
        batch = [new_event("acc-1", "AccountOpened"), new_event("acc-1", amount=1), new_event("acc-1", amount=2)]
        assert store.append("acc-1", 0, batch) == Appended(3)
        assert [(e.version, e.event_id) for e in store.load("acc-1").events] == [
            (i + 1, event.event_id) for i, event in enumerate(batch)]

    def test_empty_append_is_refused(self, store: EventStore) -> None:
        with pytest.raises(ValueError, match="at least one"):
            store.append("acc-1", 0, [])

    def test_read_pages_by_version(self, store: EventStore) -> None:
        store.append("acc-1", 0, [new_event("acc-1", "AccountOpened")] + [new_event("acc-1") for _ in range(9)])
        assert [e.version for e in store.read("acc-1")] == list(range(1, 11))
        assert [e.version for e in store.read("acc-1", 3, 4)] == [4, 5, 6, 7]
        assert [e.version for e in store.read("acc-1", 8, 100)] == [9, 10]
        assert store.read("acc-1", 10, 5) == []

    def test_idempotency_record_is_stored_with_the_events(self, store: EventStore) -> None:
        assert store.append("acc-1", 0, [new_event("acc-1", "AccountOpened")], remember("key-1")) == Appended(1)
        assert store.load("acc-1", "key-1").idempotency == IdempotencyRecord(fp("fp-1"), '{"r":1}')
        assert store.load("acc-1", "key-2").idempotency is None
        assert store.load("acc-1").idempotency is None

    def test_used_idempotency_key_appends_nothing_even_at_the_right_version(self, store: EventStore) -> None:
        store.append("acc-1", 0, [new_event("acc-1", "AccountOpened")], remember("key-1"))
        again = store.append("acc-1", 1, [new_event("acc-1")], remember("key-1", fp("fp-other"), "{}"))
        assert again == Duplicate(IdempotencyRecord(fp("fp-1"), '{"r":1}'))
        stale = store.append("acc-1", 0, [new_event("acc-1")], remember("key-1"))
        assert stale == Duplicate(IdempotencyRecord(fp("fp-1"), '{"r":1}'))  # checked before the version
        assert [e.version for e in store.load("acc-1").events] == [1]
        assert len(self.partition_log(store, "acc-1")) == 1

    def test_any_visible_key_is_remembered_structural_characters_included(self, store: EventStore) -> None:
        hostile = "y}:stream:_checkpoint.projector.p7"
        store.append("acc-1", 0, [new_event("acc-1", "AccountOpened")], remember(hostile))
        assert store.load("acc-1", hostile).idempotency == IdempotencyRecord(fp("fp-1"), '{"r":1}')
        assert store.load("acc-1", "y}:stream:_checkpoint.projector.p8").idempotency is None
        assert store.append("acc-1", 1, [new_event("acc-1")], remember(hostile, fp("fp-2"))) == Duplicate(
            IdempotencyRecord(fp("fp-1"), '{"r":1}'))

    def test_idempotency_keys_are_scoped_to_the_account(self, store: EventStore) -> None:
        store.append("acc-1", 0, [new_event("acc-1", "AccountOpened")], remember("same"))
        assert store.append("acc-2", 0, [new_event("acc-2", "AccountOpened")], remember("same")) == Appended(1)

    def test_conflict_does_not_record_the_idempotency_key(self, store: EventStore) -> None:
        store.append("acc-1", 0, [new_event("acc-1", "AccountOpened")])
        assert store.append("acc-1", 0, [new_event("acc-1")], remember("key-1")) == Conflict(1)
        assert store.load("acc-1", "key-1").idempotency is None

    def test_accounts_are_independent(self, store: EventStore) -> None:
        for account_id in ("a", "b.c", "d_e-f", "Z9"):
            store.append(account_id, 0, [new_event(account_id, "AccountOpened")])
            store.append(account_id, 1, [new_event(account_id)])
        for account_id in ("a", "b.c", "d_e-f", "Z9"):
            events = store.load(account_id).events
            assert [(e.account_id, e.version) for e in events] == [(account_id, 1), (account_id, 2)]

    def test_partition_log_gets_every_event_once_in_stream_order(self, store: EventStore) -> None:
        store.append("acc-1", 0, [new_event("acc-1", "AccountOpened")])
        store.append("acc-1", 1, [new_event("acc-1"), new_event("acc-1")])
        store.append("acc-1", 1, [new_event("acc-1")])  # conflict: must not reach the log
        logged = [e for e in self.partition_log(store, "acc-1") if e.account_id == "acc-1"]
        assert [e.event_id for e in logged] == [e.event_id for e in store.load("acc-1").events]

    def test_concurrent_appends_at_the_same_version_admit_exactly_one(self, store: EventStore) -> None:
        store.append("acc-1", 0, [new_event("acc-1", "AccountOpened")])
        barrier = threading.Barrier(16)
        outcomes: list[tuple[object, str]] = []

        def writer() -> None:
            event = new_event("acc-1")
            barrier.wait()
            outcomes.append((store.append("acc-1", 1, [event]), event.event_id))

        threads = [threading.Thread(target=writer) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [event_id for outcome, event_id in outcomes if outcome == Appended(2)]
        assert len(winners) == 1
        assert sum(1 for outcome, _ in outcomes if outcome == Conflict(2)) == 15
        assert [e.event_id for e in store.load("acc-1").events][1:] == winners


    def test_a_snapshot_is_stored_with_its_events_and_loads_with_what_came_after(self, store: EventStore) -> None:
        events = history("acc-1", 5)
        at_four = Account("acc-1", 300, 4, events[0].recorded_at, events[3].recorded_at)
        assert store.append("acc-1", 0, events[:4], snapshot=at_four) == Appended(4)
        assert store.append("acc-1", 4, events[4:]) == Appended(5)
        loaded = store.load("acc-1")
        assert loaded.snapshot == at_four
        assert [e.version for e in loaded.events] == [5]
        assert loaded.version == 5
        assert [e.version for e in store.read("acc-1")] == [1, 2, 3, 4, 5]  # the history stays whole

    def test_a_newer_snapshot_replaces_the_older(self, store: EventStore) -> None:
        events = history("acc-1", 3)
        store.append("acc-1", 0, events[:2], snapshot=Account("acc-1", 100, 2))
        store.append("acc-1", 2, events[2:], snapshot=Account("acc-1", 200, 3))
        loaded = store.load("acc-1")
        assert (loaded.snapshot, loaded.events) == (Account("acc-1", 200, 3), [])

    def test_a_snapshot_keeps_the_owner(self, store: EventStore) -> None:
        alice = Owner("https://issuer.test", "alice")
        store.append("acc-1", 0, history("acc-1", 2), snapshot=Account("acc-1", 100, 2, owner=alice))
        assert store.load("acc-1").snapshot == Account("acc-1", 100, 2, owner=alice)
        store.append("acc-1", 2, [new_event("acc-1")], snapshot=Account("acc-1", 200, 3))
        assert store.load("acc-1").snapshot == Account("acc-1", 200, 3)  # and that nobody owns it

    def test_a_conflicting_append_stores_no_snapshot(self, store: EventStore) -> None:
        store.append("acc-1", 0, history("acc-1", 1))
        assert store.append("acc-1", 0, [new_event("acc-1")], snapshot=Account("acc-1", 100, 1)) == Conflict(1)
        assert store.load("acc-1").snapshot is None

    def test_idempotency_records_expire_after_the_ttl(self, store: EventStore) -> None:
        store.append("acc-1", 0, [new_event("acc-1", "AccountOpened")], remember("key-1"))
        assert store.load("acc-1", "key-1").idempotency is not None
        self.let_time_pass(store, TTL_SECONDS, lambda: store.load("acc-1", "key-1").idempotency is None)
        # Forgotten: the key may be used again, and nothing else was lost with it.
        assert store.append("acc-1", 1, [new_event("acc-1")], remember("key-1")) == Appended(2)
        assert [e.version for e in store.load("acc-1").events] == [1, 2]


class TestInMemoryEventStore(EventStoreContract):
    now = 0.0

    @pytest.fixture
    def store(self) -> Iterator[EventStore]:
        yield InMemoryEventStore(TTL_SECONDS, clock=lambda: self.now)

    def let_time_pass(self, store: EventStore, seconds: float, done: Callable[[], bool]) -> None:
        self.now += seconds
        assert done()

    def partition_log(self, store: EventStore, account_id: str) -> list[RecordedEvent]:
        assert isinstance(store, InMemoryEventStore)
        return list(store.log)


class RedisContract(EventStoreContract):
    keys = KeySpace("contract", 4)

    def partition_log(self, store: EventStore, account_id: str) -> list[RecordedEvent]:
        assert isinstance(store, RedisEventStore)
        log_key = self.keys.partition_log(self.keys.partition_of(account_id))
        return decode_entries(self.client.xrange(log_key))

    def let_time_pass(self, store: EventStore, seconds: float, done: Callable[[], bool]) -> None:
        wait_until(done, seconds + 5, "the idempotency record to expire")

    client: redis.Redis


    def test_a_snapshot_from_before_owners_is_not_used(self, store: EventStore) -> None:
        """It cannot say who owns the account: the load folds the whole stream instead."""
        events = history("acc-1", 3)
        store.append("acc-1", 0, events, snapshot=Account("acc-1", 200, 3))
        key = self.keys.snapshot("acc-1")
        self.client.hset(key, "state", b'{"version":3,"balance":200,"opened_at":null,"updated_at":null}')
        loaded = store.load("acc-1")
        assert loaded.snapshot is None
        assert [e.event_id for e in loaded.events] == [e.event_id for e in events]

    def test_a_flushed_script_cache_is_loaded_again(self, store: EventStore) -> None:
        """A restarted or newly promoted Redis has no scripts: the next call loads them and carries on."""
        assert store.append("flushed", 0, [new_event("flushed", "AccountOpened")]) == Appended(1)
        self.client.script_flush()
        assert [e.version for e in store.load("flushed").events] == [1]
        self.client.script_flush()
        assert store.append("flushed", 1, [new_event("flushed")]) == Appended(2)


class TestFakeRedisEventStore(RedisContract):
    @pytest.fixture
    def store(self) -> Iterator[EventStore]:
        self.client = fakeredis.FakeRedis()
        yield RedisEventStore(self.client, self.keys, TTL_SECONDS)
        self.client.close()


class TestRealRedisEventStore(RedisContract):
    @pytest.fixture
    def store(self, redis_client: redis.Redis, redis_target: RedisTarget, keyspace: KeySpace) -> Iterator[EventStore]:
        self.client = redis_client
        self.keys = keyspace
        # As the service runs it: on a single node, one kept connection (the script runner's direct path).
        store_client = redis_client if redis_target.cluster else redis_target.client(single_connection_client=True)
        yield RedisEventStore(store_client, keyspace, TTL_SECONDS)
        if store_client is not redis_client:
            store_client.close()
