"""Snapshots bound the events a request reads; every way they can be missing or stale falls back safely."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import redis

from shared import account
from shared.account import Account, Deposit, OpenAccount
from shared.errors import CorruptHistory
from shared.event_store import Appended, AppendOutcome, Conflict, IdempotencyWrite
from shared.events import NewEvent, RecordedEvent
from shared.keys import KeySpace
from shared.principal import ANONYMOUS
from shared.redis_store import RedisEventStore
from shared.service import AccountService, CommandContext
from tests.support.events import new_event


@pytest.fixture
def client(redis_client: redis.Redis) -> redis.Redis:
    """Real Redis only: the contract suite covers snapshots on the fake and fakeredis too."""
    return redis_client


@pytest.fixture
def keys(key_prefix: str) -> KeySpace:
    return KeySpace(key_prefix, 4)


def _after(state: Account, event: NewEvent, version: int) -> Account:
    """The state ``event`` leads to once stored as ``version``."""
    recorded = RecordedEvent(event.account_id, version, event.type, event.data, event.event_id, event.recorded_at,
                             event.schema)
    return account.apply_recorded(state, recorded)


def grow(store: RedisEventStore, account_id: str, count: int) -> Account:
    """Append ``count`` events one at a time, passing the resulting state as the service does."""
    state = Account(account_id)
    for _ in range(count):
        event = new_event(account_id, "AccountOpened" if state.version == 0 else "FundsDeposited", 100)
        after = _after(state, event, state.version + 1)
        keep = after if after.version % 5 == 0 else None  # the service's policy, at interval 5
        assert store.append(account_id, state.version, [event], None, keep) == Appended(after.version)
        state = after
    return state


def test_a_load_reads_the_snapshot_and_what_came_after(client: redis.Redis, keys: KeySpace) -> None:
    store = RedisEventStore(client, keys, 3600)
    final = grow(store, "acc", 23)
    loaded = store.load("acc")
    assert loaded.snapshot is not None and loaded.snapshot.version == 20
    assert [e.version for e in loaded.events] == [21, 22, 23]
    assert account.rebuild("acc", loaded.events, loaded.snapshot) == final
    assert account.rebuild("acc", store.read("acc")) == final  # the full history still says the same
    assert loaded.version == 23


def test_exactly_at_a_snapshot(client: redis.Redis, keys: KeySpace) -> None:
    store = RedisEventStore(client, keys, 3600)
    final = grow(store, "acc", 10)
    loaded = store.load("acc", "some-key")
    assert (loaded.snapshot, loaded.events, loaded.idempotency) == (final, [], None)


def test_a_missing_snapshot_falls_back_to_the_history(client: redis.Redis, keys: KeySpace) -> None:
    store = RedisEventStore(client, keys, 3600)
    final = grow(store, "acc", 13)
    client.delete(keys.snapshot("acc"))
    loaded = store.load("acc")
    assert loaded.snapshot is None
    assert account.rebuild("acc", loaded.events) == final


def test_history_written_without_snapshots_loads_whole(client: redis.Redis, keys: KeySpace) -> None:
    store = RedisEventStore(client, keys, 3600)
    state = Account("acc")
    for version in range(1, 13):
        event = new_event("acc", "AccountOpened" if version == 1 else "FundsDeposited", 100)
        state = _after(state, event, version)
        store.append("acc", version - 1, [event])
    final = state
    assert not client.exists(keys.snapshot("acc"))
    loaded = store.load("acc")
    assert loaded.snapshot is None and len(loaded.events) == 12
    assert account.rebuild("acc", loaded.events) == final


def test_a_batch_crossing_the_interval_leaves_a_snapshot(client: redis.Redis, keys: KeySpace) -> None:
    store = RedisEventStore(client, keys, 3600)
    state = grow(store, "acc", 3)
    batch = [new_event("acc") for _ in range(4)]
    after = account.rebuild("acc", [], state)
    for offset, event in enumerate(batch, start=1):
        after = _after(after, event, state.version + offset)
    store.append("acc", 3, batch, None, after)
    loaded = store.load("acc")
    assert loaded.snapshot == after and loaded.events == []


def test_a_conflicting_append_writes_no_snapshot(client: redis.Redis, keys: KeySpace) -> None:
    store = RedisEventStore(client, keys, 3600)
    state = grow(store, "acc", 4)
    bogus = Account("acc", 999_999, 5, state.opened_at, state.updated_at)
    store.append("acc", 3, [new_event("acc")], None, bogus)  # stale expected version: refused whole
    assert not client.exists(keys.snapshot("acc"))


def test_a_corrupt_snapshot_is_reported(client: redis.Redis, keys: KeySpace) -> None:
    store = RedisEventStore(client, keys, 3600)
    grow(store, "acc", 6)
    client.hset(keys.snapshot("acc"), "state", b"{not json")
    with pytest.raises(CorruptHistory):
        store.load("acc")


def test_the_service_gives_an_old_account_a_snapshot(client: redis.Redis, keys: KeySpace) -> None:
    plain = RedisEventStore(client, keys, 3600)  # written before snapshots existed
    plain.append("acc", 0, [new_event("acc", "AccountOpened")] + [new_event("acc") for _ in range(11)])
    store = RedisEventStore(client, keys, 3600)
    service = AccountService(store, snapshot_interval=5, sleep=lambda _: None)
    result = service.execute("acc", Deposit(100), CommandContext("req", ANONYMOUS))
    loaded = store.load("acc")
    assert loaded.snapshot is not None and loaded.snapshot.version == result.version == 13
    assert loaded.events == []
    assert service.get("acc", ANONYMOUS).balance == 1200


class LosesOneReply(RedisEventStore):
    """Applies the append to version ``at`` but reports a conflict, as a reply lost on the wire would."""

    def __init__(self, client: redis.Redis, keys: KeySpace, at: int) -> None:
        super().__init__(client, keys, 3600)
        self.at = at

    def append(self, account_id: str, expected_version: int, events: Sequence[NewEvent],
               idempotency: IdempotencyWrite | None = None, snapshot: Account | None = None) -> AppendOutcome:
        outcome = super().append(account_id, expected_version, events, idempotency, snapshot)
        if expected_version + 1 == self.at:
            self.at = -1
            return Conflict(expected_version + 1)
        return outcome


def test_a_lost_reply_is_not_applied_twice_even_behind_a_snapshot(client: redis.Redis, keys: KeySpace) -> None:
    store = LosesOneReply(client, keys, at=5)  # version 5 is also where the snapshot is written
    service = AccountService(store, snapshot_interval=5, sleep=lambda _: None)
    service.execute("acc", OpenAccount(), CommandContext("r0", ANONYMOUS))
    for n in range(3):
        service.execute("acc", Deposit(100), CommandContext(f"r{n + 1}", ANONYMOUS))
    result = service.execute("acc", Deposit(7), CommandContext("r4", ANONYMOUS))
    assert (result.version, result.balance) == (5, 307)
    assert [e.version for e in store.read("acc")] == [1, 2, 3, 4, 5]
    assert service.get("acc", ANONYMOUS).balance == 307
