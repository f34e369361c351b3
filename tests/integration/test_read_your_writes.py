"""The query side against real Redis, the MongoDB stand-in and an in-process projector: a query sent with the
consistency tokens of its writes is answered only once the read model has them; without the projector it is a
503 with Retry-After, or a marked stale answer; a parked write is a 409 at once; and under concurrent clients
with the projector delayed and restarted at random, no answer ever lacks the client's own write."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from pymongo import MongoClient

from devstack.mongo_standin import MongoStandIn
from projector.runner import Runner
from shared import runtime
from shared.keys import KeySpace
from shared.redis_store import RedisEventStore
from tests.support.apigw import call
from tests.support.events import new_event
from tests.support.readmodel import ProjectorProcess, make_projector, process_env, settings
from tests.support.targets import RedisTarget
from tests.support.waiting import wait_until

pytestmark = pytest.mark.mongo


class Projector:
    """An in-process projector replica on a thread, stoppable and restartable."""

    def __init__(self, client: redis.Redis, keys: KeySpace, uri: str, database: str, **overrides: Any) -> None:
        self._args = (client, keys, settings(uri, database, **overrides))
        self.runner: Runner | None = None
        self._thread: threading.Thread | None = None
        self.delay = 0.0

    def start(self) -> None:
        runner = make_projector(*self._args)
        write = runner.read_model.write

        def slowed(*args: Any, **kwargs: Any) -> Any:
            if self.delay:
                time.sleep(self.delay)
            return write(*args, **kwargs)

        runner.read_model.write = slowed  # type: ignore[method-assign]
        self.runner, self._thread = runner, threading.Thread(target=runner.run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self.runner is not None and self._thread is not None:
            self.runner.stop()
            self._thread.join(30)
        self.runner = self._thread = None


@pytest.fixture
def wired(live_env: KeySpace, monkeypatch: pytest.MonkeyPatch, mongo_standin: MongoStandIn,
          mongo_db: str) -> Iterator[KeySpace]:
    monkeypatch.setenv("MONGODB_URI", mongo_standin.uri)
    monkeypatch.setenv("MONGODB_DATABASE", mongo_db)
    monkeypatch.setenv("QUERY_WAIT_SECONDS", "3")
    runtime.reset()
    yield live_env


@pytest.fixture
def projector(wired: KeySpace, mongo_standin: MongoStandIn, mongo_db: str) -> Iterator[Projector]:
    replica = Projector(runtime.redis_client(), wired, mongo_standin.uri, mongo_db)
    try:
        yield replica
    finally:
        replica.stop()


def _token(response: dict[str, Any]) -> str:
    token = response["headers"].get("Consistency-Token")
    assert token, response
    return str(token)


def _body(response: dict[str, Any]) -> Any:
    return json.loads(response["body"])


def _with(token: str | list[str], **headers: str) -> dict[str, Any]:
    tokens = [token] if isinstance(token, str) else token
    return {"headers": {"Consistency-Token": ", ".join(tokens), **headers}}


def test_a_query_with_the_tokens_of_its_writes_sees_them(projector: Projector) -> None:
    projector.start()
    opened = call("create_account", "rw-1")
    paid = call("deposit", "rw-1", {"amount": "12.50"})
    taken = call("withdraw", "rw-1", {"amount": "2.25"})
    tokens = [_token(opened), _token(paid), _token(taken)]
    statement = call("statement", "rw-1", query={}, **_with(tokens))
    assert statement["statusCode"] == 200, statement
    body = _body(statement)
    assert [(t["type"], t["amount"], t["funds"]) for t in body["transactions"]] == [
        ("deposit", "12.50", "12.50"), ("withdrawal", "2.25", "10.25")]
    assert (body["opening_funds"], body["closing_funds"]) == ("0.00", "10.25")
    assert float(statement["headers"]["Projection-Lag"]) >= 0 and "Preference-Applied" not in statement["headers"]
    listed = call("list_accounts", query={}, **_with(tokens[-1]))
    assert listed["statusCode"] == 200
    assert {a["id"]: a["funds"] for a in _body(listed)["accounts"]}["rw-1"] == "10.25"


def test_statements_and_listings_page_through_everything_once(projector: Projector) -> None:
    projector.start()
    tokens = [_token(call("create_account", f"page-{n}")) for n in range(3)]
    for cents in range(1, 8):
        tokens.append(_token(call("deposit", "page-1", {"amount": f"0.{cents:02d}"})))
    seen, cursor, pages = [], None, 0
    while True:
        page = call("statement", "page-1", query={"limit": "2", **({"cursor": cursor} if cursor else {})},
                    **_with(tokens))
        assert page["statusCode"] == 200, page
        body = _body(page)
        seen += [(t["version"], t["funds"]) for t in body["transactions"]]
        pages, cursor = pages + 1, body["next_cursor"]
        if cursor is None:
            break
    assert pages == 4 and [v for v, _ in seen] == list(range(2, 9))
    assert seen[-1][1] == "0.28" and body["closing_funds"] == "0.28"
    ids, cursor = [], None
    while True:
        page = _body(call("list_accounts", query={"limit": "1", **({"cursor": cursor} if cursor else {})},
                          **_with(tokens)))
        ids += [a["id"] for a in page["accounts"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert [i for i in ids if i.startswith("page-")] == ["page-0", "page-1", "page-2"]
    rich = _body(call("list_accounts", query={"min_funds": "0.10"}, **_with(tokens)))["accounts"]
    assert [a["id"] for a in rich] == ["page-1"]


def test_without_the_projector_the_query_is_a_503_or_marked_stale_and_then_it_is_reached(
        projector: Projector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUERY_WAIT_SECONDS", "0.3")
    runtime.reset()
    token = _token(call("create_account", "rw-2"))
    behind = call("statement", "rw-2", query={}, **_with(token))
    assert behind["statusCode"] == 503 and _body(behind)["code"] == "projection-behind"
    assert int(behind["headers"]["Retry-After"]) >= 1
    stale = call("list_accounts", query={}, **_with(token, Prefer="allow-stale"))
    assert stale["statusCode"] == 200 and stale["headers"]["Preference-Applied"] == "allow-stale"
    assert "rw-2" not in {a["id"] for a in _body(stale)["accounts"]}
    projector.start()
    wait_until(lambda: call("statement", "rw-2", query={}, **_with(token))["statusCode"] == 200, 20,
               "the projector never applied the write")


def test_a_query_waits_for_the_projector_rather_than_polling(projector: Projector) -> None:
    projector.start()
    call("create_account", "rw-3")
    projector.delay = 0.4  # every write to the read model takes this long now
    token = _token(call("deposit", "rw-3", {"amount": "1.00"}))
    started = time.monotonic()
    answered = call("statement", "rw-3", query={}, **_with(token))
    assert answered["statusCode"] == 200 and len(_body(answered)["transactions"]) == 1
    assert time.monotonic() - started < 3  # woken by the settlement, well inside QUERY_WAIT_SECONDS


def test_a_reprojection_that_catches_up_wakes_the_waiting_query(projector: Projector,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A wiped read model is re-projected from the log, which moves the checkpoint without settling anything:
    the projector announces it, so a query waiting on it is answered then, not when its wait runs out."""
    monkeypatch.setenv("QUERY_WAIT_SECONDS", "8")
    monkeypatch.setenv("REDIS_TIMEOUT_SECONDS", "30")  # one blocking read may then last the whole wait
    runtime.reset()
    projector.start()
    call("create_account", "rw-6")
    token = _token(call("deposit", "rw-6", {"amount": "3.00"}))
    assert call("statement", "rw-6", query={}, **_with(token))["statusCode"] == 200
    projector.stop()
    MongoClient(os.environ["MONGODB_URI"]).drop_database(os.environ["MONGODB_DATABASE"])
    projector.start()
    started = time.monotonic()
    answer = call("statement", "rw-6", query={}, **_with(token))
    assert answer["statusCode"] == 200 and len(_body(answer)["transactions"]) == 1, answer
    assert time.monotonic() - started < 6, "the query waited out its time: nothing announced the re-projection"


def test_a_changed_or_foreign_token_is_a_400(wired: KeySpace) -> None:
    token = _token(call("create_account", "rw-4"))
    for bad in (token[:-2] + "xx", "v1.abc.def", token.replace("v1.", "v9.")):
        answer = call("statement", "rw-4", query={}, **_with(bad))
        assert answer["statusCode"] == 400 and _body(answer)["code"] == "invalid-consistency-token", bad


def test_a_parked_write_the_token_covers_is_a_409_at_once(projector: Projector, wired: KeySpace) -> None:
    projector._args = (*projector._args[:2], settings(*_mongo(), max_deliveries=1))
    projector.start()
    call("create_account", "rw-5")
    store = RedisEventStore(runtime.redis_client(), wired, 86_400)
    poison = store.append("rw-5", 1, [new_event("rw-5", "FundsFrozen")])
    assert poison.position is not None  # type: ignore[union-attr]
    token = runtime.tokens().issue(poison.position)  # type: ignore[union-attr]

    def parked() -> bool:
        return bool(call("statement", "rw-5", query={}, **_with(token))["statusCode"] == 409)

    wait_until(parked, 20, "the poison event was never parked")
    started = time.monotonic()
    answer = call("statement", "rw-5", query={}, **_with(token))
    assert _body(answer)["code"] == "projection-parked" and time.monotonic() - started < 1


def _mongo() -> tuple[str, str]:
    return os.environ["MONGODB_URI"], os.environ["MONGODB_DATABASE"]


class Tally:
    """What the clients of the concurrency test saw."""

    def __init__(self) -> None:
        self.outcomes = {"reached": 0, "behind": 0, "refused": 0}
        self.wrong: list[str] = []
        self._lock = threading.Lock()

    def client(self, n: int, ids: list[str], operations: int) -> None:
        rng = random.Random(n)
        for _ in range(operations):
            account_id = rng.choice(ids)
            route = "deposit" if rng.random() < 0.7 else "withdraw"
            # The statement since just before the write (the service's clock is this machine's, and an event's
            # time is never earlier than its write), as a client checking its latest movement would ask.
            since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
            wrote = call(route, account_id, {"amount": f"{rng.randint(1, 300)}.00"})
            if wrote["statusCode"] != 200:
                with self._lock:
                    self.outcomes["refused"] += 1  # insufficient funds: nothing written, no token
                continue
            version = _body(wrote)["version"]
            answer = call("statement", account_id, query={"from": since, "limit": "1000"}, **_with(_token(wrote)))
            with self._lock:
                self._judge(account_id, version, answer)

    def _judge(self, account_id: str, version: int, answer: dict[str, Any]) -> None:
        if answer["statusCode"] == 200:
            self.outcomes["reached"] += 1
            versions = {t["version"] for t in _body(answer)["transactions"]}
            if version not in versions or "Preference-Applied" in answer["headers"]:
                self.wrong.append(f"{account_id} v{version}: a 200 without the client's own write")
        elif answer["statusCode"] == 503 and answer["headers"].get("Retry-After"):
            self.outcomes["behind"] += 1
        else:
            self.wrong.append(f"{account_id} v{version}: {answer['statusCode']} {answer['body'][:200]}")


class KilledReplica:
    """A second replica as a real ``python -m projector`` process, SIGKILLed at random: whatever it held
    pending has to be taken over by the other replica once its leases lapse."""

    def __init__(self, keys: KeySpace, target: RedisTarget, uri: str, database: str) -> None:
        self.env = process_env(keys, target, uri, database, PROJECTOR_LEASE_TTL_SECONDS="2", LOG_LEVEL="WARNING")
        self.kills, self._serial = 0, 0
        self.process: ProjectorProcess | None = None

    def start(self) -> None:
        self._serial += 1
        self.process = ProjectorProcess({**self.env, "PROJECTOR_NAME": f"killed-{self._serial}"})

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.kills += 1
            self.process = None


_OPERATIONS = int(os.environ.get("RYW_OPERATIONS", "2000"))


@pytest.mark.slow
@pytest.mark.timeout(120 + _OPERATIONS // 5)  # 2,000 took 62-120 s here, 10,000 took 14 min
def test_no_answer_ever_lacks_the_clients_own_write(projector: Projector, monkeypatch: pytest.MonkeyPatch,
                                                    wired: KeySpace, redis_target: RedisTarget) -> None:
    """Concurrent clients, each write followed by a statement query with its token, while one projector
    replica is slowed and restarted and the other SIGKILLed and restarted at random: every 200 holds the
    client's write, every 503 carries Retry-After."""
    operations, clients, accounts = _OPERATIONS, 8, 40
    monkeypatch.setenv("QUERY_WAIT_SECONDS", "1")
    runtime.reset()
    projector.start()
    other = KilledReplica(wired, redis_target, *_mongo())
    other.start()
    ids = [f"ryw-{n}" for n in range(accounts)]
    for account_id in ids:
        assert call("create_account", account_id)["statusCode"] == 201
    tally = Tally()
    done = threading.Event()
    def chaos() -> None:
        rng = random.Random(99)
        while not done.wait(rng.uniform(0.2, 0.6)):
            choice = rng.random()
            if choice < 0.4:
                projector.delay = rng.choice([0.0, 0.05, 0.2, 1.5])
            elif choice < 0.7:
                projector.stop()
                done.wait(rng.uniform(0.0, 1.5))
                projector.start()
            elif choice < 0.85:
                other.kill()
                done.wait(rng.uniform(0.0, 1.5))
                other.start()

    threads = [threading.Thread(target=tally.client, args=(n, ids, operations // clients), daemon=True)
               for n in range(clients)]
    agitator = threading.Thread(target=chaos, daemon=True)
    agitator.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    agitator.join()
    other.kill()
    assert other.kills > 1, "the chaos never SIGKILLed the process replica"
    assert tally.wrong == [], tally.wrong[:5]
    assert tally.outcomes["reached"] > 0 and sum(tally.outcomes.values()) == operations // clients * clients
    print(f"read-your-writes: {tally.outcomes}, process replica SIGKILLed {other.kills - 1} times")
