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
    assert LEDGER.checkpoints(7) == "{ledger:p7:64}:checkpoints"


def test_every_key_of_an_account_shares_its_partition_log_slot() -> None:
    for account_id in ("alice", "bob", "x.y_z-9"):
        partition = LEDGER.partition_of(account_id)
        slots = {key_slot(key.encode()) for key in (
            LEDGER.stream(account_id), LEDGER.version(account_id), LEDGER.snapshot(account_id),
            LEDGER.idempotency(account_id, "k"), LEDGER.partition_log(partition),
            LEDGER.lease(partition, "projector"), LEDGER.checkpoints(partition))}
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


def test_an_idempotency_key_can_never_shape_a_key_name() -> None:
    """Keys without '{', '}' or ':' stand as they always have (existing records keep working); the others are
    stored as ':' and their SHA-256, which no plain key can be."""
    assert LEDGER.idempotency("alice", "key-1") == "{ledger:p7:64}:idem:alice:key-1"
    for hostile in ("y}:stream:_checkpoint.projector.p7", "x}:stream:ghost", 'w}:stream:{"$gt":""}', "a:b", "{x"):
        key = LEDGER.idempotency("alice", hostile)
        assert key.startswith("{ledger:p7:64}:idem:alice::") and len(key) == len("{ledger:p7:64}:idem:alice::") + 64
        assert LEDGER.stream_account(key) is None
    assert LEDGER.idempotency("alice", "a:b") != LEDGER.idempotency("alice", "a:c")


@pytest.mark.parametrize("key", [
    "{ledger:p7:64}:idem:p1-0:y}:stream:_checkpoint.projector.p7",  # what the old layout let a client write
    "{ledger:p7:64}:stream:_checkpoint.projector.p7",  # not an account id
    '{ledger:p7:64}:stream:{"$gt":""}',
    "{ledger:p7:64}:stream:bob",  # bob lives in partition 0
    "{ledger:p7:65}:stream:alice",  # not partition 7's tag
    "{ledger:p07:64}:stream:alice",
    "{ledger:p99:1}:stream:alice",  # no such partition
    "{ledger-eu:p7:64}:stream:alice",  # another deployment's
    "{ledger:p7:64}:stream:alice:x",
    "{ledger:p7:64}:stream:alice\n",
    b"{ledger:p7:64}:stream:\xff",
])
def test_only_an_accounts_exact_stream_key_names_an_account(key: str | bytes) -> None:
    assert LEDGER.stream_account(key) is None


def test_stream_keys_name_their_accounts() -> None:
    for account_id in ("alice", "bob", "x.y_z-9", "A" * 64):
        assert LEDGER.stream_account(LEDGER.stream(account_id)) == account_id
        assert LEDGER.stream_account(LEDGER.stream(account_id).encode()) == account_id


@pytest.mark.parametrize("partition", [-1, 16, 99])
def test_a_partition_out_of_range_is_refused_at_once(partition: int) -> None:
    """It used to search for ever for a tag that cannot exist (``parked list --partition 99`` spun at 100 %)."""
    with pytest.raises(ValueError, match="partitions are 0 to 15"):
        KeySpace("ledger", 16).partition_log(partition)
