"""Many writers on one account, through the real handlers and a real Redis server.

Every successful response must be reflected exactly once in the stream, versions must run 1..n with no gap
or duplicate, the balance must never go below zero at any version, and it must equal the sum of the
successful operations.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from shared import runtime
from shared.account import DEPOSITED, OPENED, WITHDRAWN
from shared.keys import KeySpace
from shared.stream_codec import decode_entries
from tests.support.apigw import HANDLERS, body_of, call, make_event
from tests.support.targets import ids_on_every_master

pytestmark = pytest.mark.usefixtures("live_env")

INITIAL = 5_00  # minor units: small, so withdrawals often hit the insufficient-funds rule


@dataclass(frozen=True)
class Outcome:
    request_id: str
    kind: str
    amount: int
    status: int
    body: dict[str, Any]


def one_request(account_id: str, rng: random.Random) -> Outcome:
    kind = "deposit" if rng.random() < 0.5 else "withdraw"
    amount = rng.randint(1, 300)
    event = make_event(kind, account_id, {"amount": f"{amount // 100}.{amount % 100:02d}"})
    response = HANDLERS[kind](event, None)
    return Outcome(event["requestContext"]["requestId"], kind, amount, response["statusCode"], body_of(response))


def hammer_with_threads(account_id: str, writers: int, per_writer: int) -> list[Outcome]:
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    barrier = threading.Barrier(writers)

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        for _ in range(per_writer):
            outcome = one_request(account_id, rng)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def _process_writer(args: tuple[str, int, int]) -> list[Outcome]:
    account_id, seed, count = args
    runtime.reset()  # a forked child must not share its parent's sockets
    rng = random.Random(seed)
    return [one_request(account_id, rng) for _ in range(count)]


def hammer_with_processes(account_id: str, writers: int, per_writer: int) -> list[Outcome]:
    with multiprocessing.get_context("fork").Pool(writers) as pool:
        batches = pool.map(_process_writer, [(account_id, seed, per_writer) for seed in range(writers)])
    return [outcome for batch in batches for outcome in batch]


def check_history(keys: KeySpace, account_id: str, outcomes: list[Outcome]) -> None:
    client = runtime.redis_client()
    events = decode_entries(client.xrange(keys.stream(account_id)))
    assert [e.version for e in events] == list(range(1, len(events) + 1))
    assert int(client.get(keys.version(account_id)) or 0) == len(events)

    by_request = {e.metadata["causation_id"]: e for e in events[2:]}
    assert len(by_request) == len(events) - 2, "one request produced two events"
    successes = [o for o in outcomes if o.status == 200]
    failures = [o for o in outcomes if o.status != 200]
    assert {o.status for o in failures} <= {409, 422}, {o.status for o in failures}
    assert all(o.body["code"] in {"insufficient-funds", "version-conflict"} for o in failures)
    assert sorted(by_request) == sorted(o.request_id for o in successes), "events and successes differ"
    for outcome in successes:
        event = by_request[outcome.request_id]
        assert event.type == (DEPOSITED if outcome.kind == "deposit" else WITHDRAWN)
        assert event.data["amount_minor"] == outcome.amount
        assert outcome.body["version"] == event.version

    balance = 0
    for event in events:
        if event.type == OPENED:
            continue
        balance += event.data["amount_minor"] if event.type == DEPOSITED else -event.data["amount_minor"]
        assert balance >= 0, f"negative balance at version {event.version}"
    expected = INITIAL + sum(o.amount if o.kind == "deposit" else -o.amount for o in successes)
    assert balance == expected
    assert body_of(call("get_account", account_id))["funds"] == f"{balance // 100}.{balance % 100:02d}"
    # The balance each success reported is the balance at its version.
    running: dict[int, int] = {}
    total = 0
    for event in events[1:]:
        total += event.data["amount_minor"] if event.type == DEPOSITED else -event.data["amount_minor"]
        running[event.version] = total
    for outcome in successes:
        assert outcome.body["funds"] == _fmt(running[outcome.body["version"]])


def _fmt(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"


def _open(account_id: str) -> None:
    assert call("create_account", account_id)["statusCode"] == 201
    assert call("deposit", account_id, {"amount": "5.00"})["statusCode"] == 200


@pytest.mark.parametrize("hammer", [hammer_with_threads, hammer_with_processes], ids=["threads", "processes"])
def test_concurrent_writers_on_one_account(live_env: KeySpace,
                                           hammer: Callable[[str, int, int], list[Outcome]]) -> None:
    for hot in ids_on_every_master(runtime.redis_client(), live_env, "hot"):
        _open(hot)
        outcomes = hammer(hot, 16, 25)
        assert len(outcomes) == 400
        assert sum(o.status == 200 for o in outcomes) > 100, "suspiciously few successes"
        check_history(live_env, hot, outcomes)


def _create_concurrently(account_id: str, count: int) -> list[int]:
    barrier = threading.Barrier(count)
    statuses: list[int] = []

    def creator() -> None:
        barrier.wait()
        statuses.append(call("create_account", account_id)["statusCode"])

    threads = [threading.Thread(target=creator) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_concurrent_creates_admit_exactly_one(live_env: KeySpace) -> None:
    for fresh in ids_on_every_master(runtime.redis_client(), live_env, "fresh"):
        assert sorted(_create_concurrently(fresh, 16)) == [201] + [409] * 15
        assert body_of(call("get_account", fresh))["version"] == 1
