"""9. What Redis keeps per write (``INFO memory``'s ``used_memory``, before and after, on a server of its own):
bytes per event through the append script (its account-stream entry and its partition-log entry, the
version key shared by the account's events), the same once the projector's trim has emptied the logs behind
its checkpoint, and bytes per idempotency record: the same keyed deposits
through the append script, less the same deposits without keys; compared, in the same run, with records
written as they were before 2026-12-05 (a hash of the fingerprint in hex and the result as JSON, with an
EXPIRE) under the same key names."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import redis

from bench.common import Result, redis_server, report, seed_accounts
from projector.trimming import LogTrimmer
from shared.event_store import Appended, IdempotencyRecord, IdempotencyWrite
from shared.keys import KeySpace
from shared.redis_store import RedisEventStore
from shared.service import CommandResult
from tests.support.events import new_event

ACCOUNTS = 1_000
EVENTS_EACH = 100
KEYED = 20_000
TTL_SECONDS = 86_400


def _used(client: redis.Redis) -> int:
    info: Any = client.info("memory")
    return int(info["used_memory"])


def _deposits(client: redis.Redis, keys: KeySpace, keyed: bool) -> int:
    """``KEYED`` deposits over ``ACCOUNTS`` opened accounts, each with an idempotency key when ``keyed``;
    the bytes Redis holds afterwards, less those before."""
    client.flushall()
    ids = [f"acct-{n:06d}" for n in range(ACCOUNTS)]
    seed_accounts(client, keys, ids, 1)
    store = RedisEventStore(client, keys, TTL_SECONDS)
    before = _used(client)
    for n in range(KEYED):
        account_id = ids[n % ACCOUNTS]
        version = 1 + n // ACCOUNTS
        idempotency = None
        if keyed:
            result = CommandResult(account_id, 100 * version, version + 1, 100)
            idempotency = IdempotencyWrite(f"3f1c9a52-2b1e-4c8e-9d1a-{n:012d}", IdempotencyRecord(
                hashlib.sha256(f"{account_id}/{n}".encode()).hexdigest(), result.to_record()))
        assert store.append(account_id, version, [new_event(account_id)], idempotency) == Appended(version + 1)
    return _used(client) - before


def _legacy_records(client: redis.Redis, keys: KeySpace) -> int:
    """The same records as the code before 2026-12-05 wrote them."""
    client.flushall()
    before = _used(client)
    pipe = client.pipeline(transaction=False)
    for n in range(KEYED):
        account_id = f"acct-{n % ACCOUNTS:06d}"
        version = 1 + n // ACCOUNTS
        key = keys.idempotency(account_id, f"3f1c9a52-2b1e-4c8e-9d1a-{n:012d}")
        pipe.hset(key, mapping={
            "fingerprint": hashlib.sha256(f"{account_id}/{n}".encode()).hexdigest(),
            "result": orjson.dumps({"account_id": account_id, "amount": 100, "balance": 100 * version,
                                    "version": version + 1})})
        pipe.expire(key, TTL_SECONDS)
    pipe.execute()
    return _used(client) - before


def _trimmed(client: redis.Redis, keys: KeySpace) -> int:
    """used_memory after every partition log was trimmed as a projector does once its read model has them."""
    trimmer = LogTrimmer(client, keys, "projector")
    for partition in range(keys.partitions):
        log = keys.partition_log(partition)
        last: Any = client.xrevrange(log, count=1)
        client.xgroup_create(log, "projector", id="$")
        client.set(keys.lease(partition, "projector"), "bench|1")
        done = trimmer.trim("bench|1", partition, last[0][0].decode())
        assert done.floor is not None and client.xlen(log) == 1, done
        client.delete(keys.lease(partition, "projector"))
    return _used(client)


def record_size() -> list[Result]:
    keys = KeySpace("b9", 16)
    with redis_server("--maxmemory-policy", "noeviction") as server:
        client = redis.Redis.from_url(server.url)
        client.flushall()
        before = _used(client)
        seed_accounts(client, keys, [f"acct-{n:06d}" for n in range(ACCOUNTS)], EVENTS_EACH)
        per_event = (_used(client) - before) / (ACCOUNTS * EVENTS_EACH)
        kept = (_trimmed(client, keys) - before) / (ACCOUNTS * EVENTS_EACH)
        plain = _deposits(client, keys, keyed=False)
        keyed = _deposits(client, keys, keyed=True)
        per_record = (keyed - plain) / KEYED
        legacy = _legacy_records(client, keys) / KEYED
    return [
        report(Result("9. Redis bytes per event (account stream + partition log)", f"{per_event:,.0f} bytes",
                      "reported", 1.0, "reported", True,
                      [f"{ACCOUNTS * EVENTS_EACH:,} events through the append script ({ACCOUNTS:,} accounts x "
                       f"{EVENTS_EACH}); used_memory before and after"])),
        report(Result("9. Redis bytes per event once a projector has trimmed the partition logs",
                      f"{kept:,.0f} bytes", f"{per_event:,.0f} bytes before the trim", kept / per_event, "< 0.75",
                      kept / per_event < 0.75,
                      ["the same events after the trim script a projector runs behind its checkpoint (one group, "
                       "its checkpoint at each log's last entry): the account streams hold the events, each log "
                       "keeps only its checkpoint's entry"])),
        report(Result("9. Redis bytes per idempotency record", f"{per_record:,.0f} bytes (one string with a TTL)",
                      f"{legacy:,.0f} bytes as written before 2026-12-05 (a hash with an EXPIRE)",
                      per_record / legacy, "< 1", per_record < legacy,
                      [f"{KEYED:,} keyed deposits less the same without keys; the old layout written directly under "
                       "the same key names"])),
    ]
