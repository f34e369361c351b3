"""The key layout is frozen: a change here re-homes every account (new partitions, new keys, lost history)."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from shared.keys import CLUSTER_SLOTS, KeySpace, slot_of

LEDGER = KeySpace("ledger", 16)


@pytest.mark.parametrize(("account_id", "partition"), [
    ("alice", 7), ("bob", 0), ("carol", 3), ("acct-0", 3), ("Z9", 9),
])
def test_partitions_of_known_ids_never_move(account_id: str, partition: int) -> None:
    assert LEDGER.partition_of(account_id) == partition


def test_keys_of_a_known_account_never_change() -> None:
    assert LEDGER.stream("alice") == "{ledger:p7:64}:stream:alice"
    assert LEDGER.version("alice") == "{ledger:p7:64}:version:alice"
    assert LEDGER.snapshot("alice") == "{ledger:p7:64}:snapshot:alice"
    assert LEDGER.idempotency("alice", "key-1") == "{ledger:p7:64}:idem:alice:key-1"
    assert LEDGER.partition_log(7) == "{ledger:p7:64}:log"
    assert LEDGER.stream("bob") == "{ledger:p0:28}:stream:bob"
    assert LEDGER.partition_log(15) == "{ledger:p15:62}:log"


def test_every_key_of_an_account_shares_its_partition_log_slot() -> None:
    for account_id in ("alice", "bob", "x.y_z-9"):
        partition = LEDGER.partition_of(account_id)
        slots = {key_slot(key.encode()) for key in (
            LEDGER.stream(account_id), LEDGER.version(account_id), LEDGER.snapshot(account_id),
            LEDGER.idempotency(account_id, "k"), LEDGER.partition_log(partition),
            LEDGER.partition_key(partition, "lease"))}
        assert slots == {LEDGER.slot(partition)}


def test_our_slot_function_is_redis_cluster_s() -> None:
    for tag in ("ledger:p7:64", "a", "{}", "x" * 100):
        assert slot_of(tag) == key_slot(tag.encode())


def _per_master(keys: KeySpace, masters: int) -> list[int]:
    """Partitions per master when ``masters`` masters split the slots evenly (redis-cli's default)."""
    bounds = [m * CLUSTER_SLOTS // masters for m in range(masters + 1)]
    counts = [0] * masters
    for partition in range(keys.partitions):
        slot = keys.slot(partition)
        counts[next(m for m in range(masters) if bounds[m] <= slot < bounds[m + 1])] += 1
    return counts


def test_sixteen_partitions_spread_5_6_5_over_three_masters() -> None:
    assert _per_master(LEDGER, 3) == [5, 6, 5]


@pytest.mark.parametrize("partitions", [1, 3, 16, 64, 256])
@pytest.mark.parametrize("masters", [2, 3, 5, 7])
def test_partitions_spread_evenly_over_any_master_count(partitions: int, masters: int) -> None:
    counts = _per_master(KeySpace("ledger", partitions), masters)
    assert sum(counts) == partitions
    assert max(counts) - min(counts) <= 1, counts


def test_two_prefixes_on_one_cluster_use_different_slots() -> None:
    other = KeySpace("ledger-eu", 16)
    assert all(LEDGER.slot(p) != other.slot(p) for p in range(16))
    assert LEDGER.pattern("stream") == "{ledger:p*}:stream:*"
