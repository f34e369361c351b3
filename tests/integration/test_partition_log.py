"""The partition logs receive every event exactly once, in the same order as each account's stream."""

from __future__ import annotations

import random
import threading
from collections import defaultdict

import pytest

from shared import runtime
from shared.keys import KeySpace
from shared.stream_codec import decode_entries
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


pytestmark = pytest.mark.usefixtures("live_env")
