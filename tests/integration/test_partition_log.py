"""The partition logs receive every event exactly once, in the same order as each account's stream."""

from __future__ import annotations

import json
import random
import threading
from collections import defaultdict
from typing import Any

import pytest

from shared import runtime
from shared.keys import KeySpace
from shared.stream_codec import FIELDS, decode_entries
from tests.support.apigw import call


def test_every_event_reaches_its_partition_log_once_in_order(live_env: KeySpace) -> None:
    accounts = [f"acct-{i}" for i in range(24)]
    for account_id in accounts:
        call("create_account", account_id)

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(30):
            account_id = rng.choice(accounts[:6])  # a few hot accounts, so writers collide
            route = rng.choice(["deposit", "deposit", "withdraw"])
            call(route, account_id, {"amount": rng.randint(1, 20)})

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    client = runtime.redis_client()
    logged: dict[str, list[str]] = defaultdict(list)
    total = 0
    for partition in range(live_env.partitions):
        entries = client.xrange(live_env.partition_log(partition)) or []
        total += len(entries)
        for event in decode_entries(entries):
            assert live_env.partition_of(event.account_id) == partition
            logged[event.account_id].append(event.event_id)
    streamed = 0
    for account_id in accounts:
        events = decode_entries(client.xrange(live_env.stream(account_id)))
        streamed += len(events)
        assert logged[account_id] == [e.event_id for e in events], account_id
    assert total == streamed
    assert len({live_env.partition_of(a) for a in accounts}) > 1



@pytest.mark.parametrize("idempotency_key", [None, "key-1"])
def test_entries_carry_every_field_by_name_in_order(live_env: KeySpace, idempotency_key: str | None) -> None:
    """The append script pairs the values it is sent with the names of ``FIELDS``: ``redis-cli XRANGE``
    shows them in that order, the version first, the same in the account stream and the partition log.
    (Decoding falls back to reading by name, so only the raw entry shows a misplaced field.)"""
    call("create_account", "acct-fields")
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    call("deposit", "acct-fields", {"amount": "2.50"}, headers=headers)
    client = runtime.redis_client()
    streamed: Any = client.xrange(live_env.stream("acct-fields"), "2-0", "2-0")
    logged: Any = client.xrange(live_env.partition_log(live_env.partition_of("acct-fields")))
    for _, fields in (streamed[0], logged[-1]):  # redis-py keeps the entry's order in the dict
        assert [name.decode() for name in fields] == list(FIELDS)
        entry = {name.decode(): value.decode() for name, value in fields.items()}
        assert (entry["version"], entry["type"], entry["account_id"], entry["schema"]) == \
            ("2", "FundsDeposited", "acct-fields", "1")
        assert json.loads(entry["data"]) == {"amount_minor": 250}
        assert json.loads(entry["meta"]).get("idempotency_key") == idempotency_key
    if idempotency_key:
        key = live_env.account("acct-fields").idempotency(idempotency_key)
        record = client.get(key)  # the request's SHA-256 (32 bytes), then balance:version:amount
        assert isinstance(record, bytes) and len(record) == 32 + len(b"250:2:250") and record.endswith(b"250:2:250")
        assert 0 < client.ttl(key) <= 86400


pytestmark = pytest.mark.usefixtures("live_env")
