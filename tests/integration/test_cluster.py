"""What a client sees when a Redis Cluster is partly or wholly out of reach, on real clusters of their own
(the session's cluster, under TEST_REDIS_CLUSTER=1, must stay whole for the other tests)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from devstack.redis_cluster import LocalCluster
from gateway import create_app
from shared import account, runtime
from shared.keys import KeySpace
from shared.redis_client import is_cluster
from shared.stream_codec import decode_entries
from tests.support.apigw import HANDLERS, body_of, call
from tests.support.environment import wired
from tests.support.targets import ids_on_every_master
from tests.support.waiting import wait_until

PARTITIONS = 8


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    # Persistence on: a killed node must come back with its data, as a production node would.
    started = LocalCluster(masters=3, node_timeout_ms=1000,
                           extra_args=("--appendonly", "yes", "--appendfsync", "always", "--save", "")).start()
    try:
        yield started
    finally:
        started.stop()


def _cluster_env(cluster: LocalCluster, seed: int = 0, others: bool = True, **extra: str) -> dict[str, str]:
    nodes = ",".join(n.address for i, n in enumerate(cluster.nodes[: cluster.masters]) if i != seed)
    values = {"REDIS_CLUSTER": "true", "REDIS_TIMEOUT_SECONDS": "0.5", **extra}
    if others:
        values["REDIS_CLUSTER_NODES"] = nodes
    return values


def _every_route(account_id: str) -> dict[str, dict[str, Any]]:
    return {
        "create_account": call("create_account", account_id),
        "deposit": call("deposit", account_id, {"amount": 1}),
        "withdraw": call("withdraw", account_id, {"amount": 1}),
        "get_account": call("get_account", account_id),
        "list_events": call("list_events", account_id),
    }


def test_started_while_its_only_seed_is_down_it_answers_503_then_serves(cluster: LocalCluster) -> None:
    seed = cluster.nodes[0]
    cluster.kill(seed)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    with wired(f"redis://{seed.address}", prefix, PARTITIONS, **_cluster_env(cluster, others=False)):
        for route, response in _every_route("bob").items():
            assert response["statusCode"] == 503, (route, response["body"])
            assert response["headers"]["Retry-After"] == "1"
            assert body_of(response)["code"] == "store-unavailable"
        gateway = create_app().test_client()
        assert gateway.get("/healthz").status_code == 200  # liveness never depends on Redis
        ready = gateway.get("/readyz")
        assert (ready.status_code, ready.get_json()["code"]) == (503, "store-unavailable")

        cluster.restart(seed)
        cluster.wait_ok()
        wait_until(lambda: call("create_account", "bob")["statusCode"] == 201, 30, "the cluster to serve again")
        assert gateway.get("/readyz").status_code == 200
        assert body_of(call("deposit", "bob", {"amount": 5}))["funds"] == "5.00"


def test_a_master_down_stalls_only_its_partitions(cluster: LocalCluster) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    with wired(cluster.url, prefix, PARTITIONS, **_cluster_env(cluster)):
        client: Any = runtime.redis_client()
        keys = KeySpace(prefix, PARTITIONS)
        ids = ids_on_every_master(client, keys)
        assert len(ids) == 3
        for account_id in ids:
            assert call("create_account", account_id)["statusCode"] == 201
        down = ids[0]
        victim = cluster.node_at(client.get_node_from_key(keys.stream(down)).name)
        cluster.kill(victim)

        outage = call("deposit", down, {"amount": 1})
        assert outage["statusCode"] == 503 and outage["headers"]["Retry-After"] == "1", outage["body"]
        for account_id in ids[1:]:  # the other masters' accounts keep working
            assert call("deposit", account_id, {"amount": 1})["statusCode"] == 200
        ready = create_app().test_client().get("/readyz")
        assert ready.status_code == 503
        assert "partitions" in ready.get_json()["detail"]

        cluster.restart(victim)
        cluster.wait_ok()
        wait_until(lambda: call("deposit", down, {"amount": 1})["statusCode"] == 200, 30, "the master to return")
        assert create_app().test_client().get("/readyz").status_code == 200


@dataclass(frozen=True)
class Outcome:
    account_id: str
    request_id: str
    amount: int
    status: int
    retry_after: str | None
    at: float


@pytest.mark.slow
def test_failover_under_load_loses_no_acknowledged_write() -> None:
    """3 masters, the first with a replica: SIGKILL that master under 8 writers. Clients see only 503 with
    Retry-After until the replica is promoted, then writes succeed again; every 2xx is in the streams once."""
    cluster = LocalCluster(masters=3, replicas=1, node_timeout_ms=1000).start()
    prefix = f"t{uuid.uuid4().hex[:8]}"
    try:
        with wired(cluster.url, prefix, PARTITIONS, **_cluster_env(cluster, REDIS_TIMEOUT_SECONDS="1")):
            client: Any = runtime.redis_client()
            assert is_cluster(client)
            keys = KeySpace(prefix, PARTITIONS)
            primary = cluster.nodes[0]
            on_primary = [a for a in (f"fo-{n}" for n in range(200))
                          if client.get_node_from_key(keys.stream(a)).name == primary.address][:6]
            others = ids_on_every_master(client, keys, "other")
            accounts = on_primary + [a for a in others if a not in on_primary]
            for account_id in accounts:
                assert call("create_account", account_id)["statusCode"] == 201

            outcomes: list[Outcome] = []
            lock = threading.Lock()
            stop = threading.Event()

            def writer(seed: int) -> None:
                rng = random.Random(seed)
                while not stop.is_set():
                    account_id = rng.choice(accounts)
                    amount = rng.randint(1, 999)
                    event = _deposit_event(account_id, amount)
                    response = HANDLERS["deposit"](event, None)
                    with lock:
                        outcomes.append(Outcome(account_id, event["requestContext"]["requestId"], amount,
                                                response["statusCode"], response["headers"].get("Retry-After"),
                                                time.monotonic()))

            threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
            for thread in threads:
                thread.start()
            try:
                wait_until(lambda: sum(o.status == 200 for o in outcomes) >= 100, 30, "load before the crash")
                killed_at = time.monotonic()
                cluster.kill(primary)
                try:
                    wait_until(lambda: any(o.status == 200 and o.account_id in on_primary and o.at > killed_at + 0.5
                                           for o in outcomes), 60, "writes to the failed master's slots again")
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n{cluster.describe()}\nclient's slot owner now: "
                                         f"{client.get_node_from_key(keys.stream(on_primary[0])).name}") from None
                recovered = time.monotonic()
                wait_until(lambda: sum(o.at > recovered and o.status == 200 for o in outcomes) >= 100, 30,
                           "load after the failover")
            finally:
                stop.set()
                for thread in threads:
                    thread.join()

            assert {o.status for o in outcomes} <= {200, 503}, {o.status for o in outcomes}
            assert all(o.retry_after == "1" for o in outcomes if o.status == 503)
            assert any(o.status == 503 for o in outcomes), "the failover was never visible: proves nothing"
            _every_acknowledged_write_is_in_the_streams_once(client, keys, accounts, outcomes)
    finally:
        cluster.stop()


def _deposit_event(account_id: str, amount: int) -> dict[str, Any]:
    from tests.support.apigw import make_event

    return make_event("deposit", account_id, {"amount": f"{amount // 100}.{amount % 100:02d}"})


def _every_acknowledged_write_is_in_the_streams_once(client: Any, keys: KeySpace, accounts: list[str],
                                                      outcomes: list[Outcome]) -> None:
    acknowledged = {o.request_id: o for o in outcomes if o.status == 200}
    unknown = {o.request_id for o in outcomes if o.status != 200}
    seen: dict[str, int] = {}
    for account_id in accounts:
        events = decode_entries(client.xrange(keys.stream(account_id)))
        assert [e.version for e in events] == list(range(1, len(events) + 1)), "versions must have no gap"
        for event in events[1:]:
            request_id = event.metadata["causation_id"]
            seen[request_id] = seen.get(request_id, 0) + 1
            assert request_id in acknowledged or request_id in unknown, "an event nobody asked for"
            if request_id in acknowledged:
                assert event.data["amount_minor"] == acknowledged[request_id].amount
        state = account.rebuild(account_id, events)
        assert state.balance == sum(e.data["amount_minor"] for e in events[1:])
    assert all(count == 1 for count in seen.values()), "a request was applied twice"
    missing = [rid for rid in acknowledged if rid not in seen]
    assert not missing, f"{len(missing)} acknowledged writes are not in the streams"
