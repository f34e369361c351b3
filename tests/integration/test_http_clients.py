"""32 HTTP clients against the gateway under gunicorn, on a single node and on the 3-master cluster: every
guarantee holds over real sockets. Each client deposits and withdraws on shared accounts (on every master),
sends every write with an Idempotency-Key and its own X-Correlation-Id, and sends some of them twice."""

from __future__ import annotations

import http.client
import json
import random
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from shared import account
from shared.keys import KeySpace
from shared.stream_codec import decode_entries
from tests.support.gateway import live_gateway
from tests.support.targets import RedisTarget, ids_on_every_master

CLIENTS = 32
OPERATIONS_EACH = 30
PARTITIONS = 16


@dataclass(frozen=True)
class Sent:
    account_id: str
    correlation_id: str
    kind: str  # "deposits" or "withdrawals"
    amount_minor: int
    status: int
    body: dict[str, Any]
    replay: tuple[int, dict[str, Any]] | None  # the answer to the same request sent again, when it was


def _post(connection: http.client.HTTPConnection, path: str, body: dict[str, Any],
          headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json", **headers})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def _client(base: str, accounts: list[str], seed: int, sent: list[Sent], lock: threading.Lock) -> None:
    rng = random.Random(seed)
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        for _ in range(OPERATIONS_EACH):
            account_id, kind = rng.choice(accounts), rng.choice(("deposits", "deposits", "withdrawals"))
            amount_minor = rng.randint(1, 20_000)
            correlation_id = str(uuid.uuid4())
            headers = {"Idempotency-Key": correlation_id, "X-Correlation-Id": correlation_id}
            body = {"amount": f"{amount_minor // 100}.{amount_minor % 100:02d}"}
            status, answer = _post(connection, f"/accounts/{account_id}/{kind}", body, headers)
            replay = _post(connection, f"/accounts/{account_id}/{kind}", body, headers) if rng.random() < 0.1 else None
            with lock:
                sent.append(Sent(account_id, correlation_id, kind, amount_minor, status, answer, replay))
    finally:
        connection.close()


def test_32_clients_over_http_keep_every_guarantee(redis_target: RedisTarget, key_prefix: str,
                                                   redis_client: redis.Redis) -> None:
    keys = KeySpace(key_prefix, PARTITIONS)
    accounts = ids_on_every_master(redis_client, keys, "http") + [f"http-extra-{n}" for n in range(5)]
    sent: list[Sent] = []
    lock = threading.Lock()
    with live_gateway({**redis_target.env(), "LEDGER_KEY_PREFIX": key_prefix,
                       "LEDGER_PARTITIONS": str(PARTITIONS)}) as base:
        host, port = base.removeprefix("http://").split(":")
        opener = http.client.HTTPConnection(host, int(port), timeout=30)
        for account_id in accounts:
            status, _ = _post(opener, "/accounts", {"id": account_id}, {"Idempotency-Key": f"open-{account_id}"})
            assert status == 201
        opener.close()
        clients = [threading.Thread(target=_client, args=(base, accounts, n, sent, lock)) for n in range(CLIENTS)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()

    assert len(sent) == CLIENTS * OPERATIONS_EACH
    statuses = {s.status for s in sent}
    assert statuses <= {200, 422}, f"only successes and refused withdrawals are correct answers: {statuses}"
    refused = [s for s in sent if s.status == 422]
    assert all(s.kind == "withdrawals" and s.body["code"] == "insufficient-funds" for s in refused)
    for s in sent:
        if s.replay is not None and s.status == 200:
            assert s.replay == (s.status, s.body), "a retry of a success with the same key gets the same answer"
    # A refused withdrawal wrote nothing and is not recorded, so its retry decides again and may succeed.
    succeeded = {s.correlation_id: s for s in sent if s.status == 200 or (s.replay is not None and s.replay[0] == 200)}
    recorded: dict[str, int] = {}
    for account_id in accounts:
        events = decode_entries(redis_client.xrange(keys.stream(account_id)))
        assert [e.version for e in events] == list(range(1, len(events) + 1)), f"{account_id}: versions have a gap"
        balance = 0
        for event in events[1:]:
            correlation_id = event.metadata["correlation_id"]
            recorded[correlation_id] = recorded.get(correlation_id, 0) + 1
            assert correlation_id in succeeded, f"{account_id}: an event no 2xx answered for"
            assert event.data["amount_minor"] == succeeded[correlation_id].amount_minor
            balance += event.data["amount_minor"] * (1 if event.type == "FundsDeposited" else -1)
            assert balance >= 0, f"{account_id} went negative at version {event.version}"
        assert account.rebuild(account_id, events).balance == balance
        answers = [s.body if s.status == 200 else s.replay[1] for s in succeeded.values()  # type: ignore[index]
                   if s.account_id == account_id]
        if answers:
            last = max(answers, key=lambda body: body["version"])
            assert last["version"] == len(events) and last["funds"] == f"{balance // 100}.{balance % 100:02d}"
    assert recorded.keys() == succeeded.keys(), "every 2xx is in the streams, and nothing else is"
    assert set(recorded.values()) == {1}, "no write is applied twice"
