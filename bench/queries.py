"""10. The query side: how long a query carrying its write's consistency token waits at 300 writes/s (against
the projector's end-to-end lag in the same run), and queries/s of ``GET /accounts`` and the statement against
``GET /accounts/{id}``, which is served from Redis. Projector replicas are real processes; the handlers are
called in process, as in benchmark 1, so what is compared is the service's own work."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson
from pymongo import MongoClient

from bench.common import Result, percentile, redis_server, report, seed_accounts
from bench.projector_load import LagWatcher, mongo_standin, projector_env, start_replicas, stop_replicas
from functions.deposit.app import lambda_handler as deposit
from functions.get_account.app import lambda_handler as get_account
from functions.list_accounts.app import lambda_handler as list_accounts
from functions.statement.app import lambda_handler as statement
from shared import runtime
from shared.keys import KeySpace
from shared.read_model_layout import transactions_name
from tests.support.apigw import make_event
from tests.support.environment import wired
from tests.support.readmodel import COLLECTION, assert_read_model_matches, group_drained, read_model
from tests.support.targets import RedisTarget
from tests.support.waiting import wait_until

Handler = Callable[[dict[str, Any], object], dict[str, Any]]


class _Clients:
    """``count`` client threads sharing ``rate`` writes/s; each write is followed at once by a statement query
    carrying its token, timed from the write's answer to the query's. No two clients write one account, so
    each knows the version its write makes and can check that the answer holds it."""

    def __init__(self, ids: list[str], count: int, rate: int, watcher: LagWatcher) -> None:
        self.ids, self.count, self.rate, self.watcher = ids, count, rate, watcher
        self.waits: list[float] = []
        self.behind = 0
        self._lock = threading.Lock()

    def run(self, seconds: int) -> float:
        """Writes/s achieved."""
        per_client = self.rate * seconds // self.count
        started = time.perf_counter() + 0.2
        threads = [threading.Thread(target=self._client, args=(n, per_client, started)) for n in range(self.count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return per_client * self.count / (time.perf_counter() - started)

    def _client(self, n: int, writes: int, started: float) -> None:
        mine = self.ids[n::self.count]
        versions = dict.fromkeys(mine, 2)  # seeded: opened and one deposit
        for k in range(writes):
            pause = started + (k * self.count + n) / self.rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            account_id = mine[k % len(mine)]
            versions[account_id] += 1
            self.watcher.expect(account_id, versions[account_id])  # before the append, as in 7b
            wrote = deposit(make_event("deposit", account_id, {"amount": "1.00"}), None)
            assert wrote["statusCode"] == 200, wrote
            asked = time.perf_counter()
            answer = statement(make_event("statement", account_id, query={"limit": "1000"}, headers={
                "Consistency-Token": wrote["headers"]["Consistency-Token"]}), None)
            waited = time.perf_counter() - asked
            with self._lock:
                if answer["statusCode"] == 503:
                    self.behind += 1
                    continue
                assert answer["statusCode"] == 200, answer
                seen = {t["version"] for t in orjson.loads(answer["body"])["transactions"]}
                assert versions[account_id] in seen, f"{account_id}: a 200 without the client's own write"
                self.waits.append(waited)


def _index_the_stand_in_can_use(uri: str, database: str) -> None:
    """The stand-in (SQLite under a MongoDB wire protocol) uses single-field indexes only: its plan for the
    statement's query on the compound ``by_account_time`` index is a scan of every transaction. A real
    MongoDB serves it from that index (``test_real_mongo.py`` shows the plans); this index, on the stand-in
    only, lets the figures here show the service's work rather than SQLite's scans."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    client[database][transactions_name(COLLECTION)].create_index("account_id", name="standin_by_account")
    client.close()


def read_your_writes_wait(rate: int = 300, seconds: int = 15, accounts: int = 200, clients: int = 6) -> Result:
    """Clients writing at ``rate`` writes/s in all, each write followed by a statement query with its token;
    the projector's lag (append to document visible) is watched in the same run, as in 7b."""
    lags: list[float] = []
    with redis_server() as server, mongo_standin() as mongo, wired(
            server.url, "ryw", 16, MONGODB_URI=mongo.uri, MONGODB_DATABASE="ryw", QUERY_WAIT_SECONDS="5"):
        client = runtime.redis_client()
        keys = KeySpace("ryw", 16)
        ids = [f"acct-{i}" for i in range(accounts)]
        seed_accounts(client, keys, ids, 2)
        env = projector_env(RedisTarget("standalone", server.url), keys, mongo, "ryw", "projector", "q")
        replicas = start_replicas(3, env)
        try:
            wait_until(lambda: len(read_model(mongo.uri, "ryw")) == accounts, 60, "the seeded accounts")
            _index_the_stand_in_can_use(mongo.uri, "ryw")
            watcher = LagWatcher(mongo.uri, "ryw", lags)
            watcher.start()
            writers = _Clients(ids, clients, rate, watcher)
            achieved = writers.run(seconds)
            wait_until(lambda: len(lags) >= rate * seconds // clients * clients, 60, "every deposit's document")
            watcher.stop()
            wait_until(partial(group_drained, client, keys, "projector"), 60, "the projector to drain")
            assert_read_model_matches(client, keys, mongo.uri, "ryw")
        finally:
            stop_replicas(replicas)
    wait_p50, wait_p99 = percentile(writers.waits, 0.5) * 1000, percentile(writers.waits, 0.99) * 1000
    lag_p50, lag_p99 = percentile(lags, 0.5) * 1000, percentile(lags, 0.99) * 1000
    # "The projector's lag plus a little": the wait includes the query itself, which the lag does not (the lag
    # includes the write, which the wait does not); half the lag again leaves room for the query at this load.
    ratio = wait_p99 / lag_p99
    return report(Result(
        f"10a. read-your-writes wait at {rate} writes/s, 3 replicas, standalone",
        f"p50 {wait_p50:.1f} ms, p99 {wait_p99:.1f} ms (write answered → statement with its token answered)",
        f"the projector's lag in the same run: p50 {lag_p50:.1f} ms, p99 {lag_p99:.1f} ms", ratio,
        "p99 ≤ 1.5 x the lag's p99, no 503", ratio <= 1.5 and writers.behind == 0,
        [f"{len(writers.waits):,} writes at {achieved:.0f}/s from {clients} client threads, each followed by "
         f"its query; {writers.behind} answered 503 projection-behind (QUERY_WAIT_SECONDS=5)",
         "correctness: every answer held the client's own write; the read model equals the streams"]))


def query_throughput(accounts: int = 1_000, events_each: int = 20, rounds: int = 30, block: int = 50) -> list[Result]:
    """Single-threaded queries/s in alternating blocks: ``GET /accounts/{id}`` (Redis), a statement of one
    account's whole history (``events_each`` - 1 transactions) and a page of 50 accounts (MongoDB stand-in)."""
    with redis_server() as server, mongo_standin() as mongo, wired(
            server.url, "qps", 16, MONGODB_URI=mongo.uri, MONGODB_DATABASE="qps"):
        client = runtime.redis_client()
        keys = KeySpace("qps", 16)
        ids = [f"acct-{i:04d}" for i in range(accounts)]
        seed_accounts(client, keys, ids, events_each)
        env = projector_env(RedisTarget("standalone", server.url), keys, mongo, "qps", "projector", "q")
        replicas = start_replicas(1, env)
        try:
            wait_until(partial(group_drained, client, keys, "projector"), 300, "the projector to drain")
        finally:
            stop_replicas(replicas)
        assert_read_model_matches(client, keys, mongo.uri, "qps")
        _index_the_stand_in_can_use(mongo.uri, "qps")
        kinds: dict[str, tuple[Handler, Callable[[int], dict[str, Any]]]] = {
            "GET /accounts/{id}": (get_account, lambda i: make_event("get_account", ids[i % accounts])),
            "statement": (statement, lambda i: make_event("statement", ids[i % accounts], query={})),
            "GET /accounts": (list_accounts, lambda i: make_event("list_accounts", query={"limit": "50"})),
        }
        spent = dict.fromkeys(kinds, 0.0)
        counts = dict.fromkeys(kinds, 0)
        for r in range(rounds + 1):  # the first round warms connections and code paths, and is not counted
            for name, (handler, event_of) in kinds.items():
                events = [event_of(r * block + i) for i in range(block)]
                began = time.perf_counter()
                for event in events:
                    answer = handler(event, None)
                    assert answer["statusCode"] == 200, answer
                if r:
                    spent[name] += time.perf_counter() - began
                    counts[name] += block
        _check_answers(ids, events_each)
        floor_ms = _stand_in_round_trip_ms(mongo.uri, "qps", ids)
    per_second = {name: counts[name] / spent[name] for name in kinds}
    base = per_second["GET /accounts/{id}"]
    results = []
    for name, what in (("statement", f"a statement of {events_each - 1} transactions"),
                       ("GET /accounts", "the first page of 50 accounts")):
        ratio = per_second[name] / base
        results.append(report(Result(
            f"10b. {name} queries/s against GET /accounts/{{id}}",
            f"{per_second[name]:,.0f} queries/s, one thread ({what}, MongoDB stand-in)",
            f"GET /accounts/{{id}} from Redis, same run: {base:,.0f}/s", ratio,
            "reported (the stand-in sets it)", True,
            [f"{counts[name]:,} queries of each kind in alternating blocks of {block}",
             f"{1000 / per_second[name]:.1f} ms per query; one find_one by _id costs the stand-in {floor_ms:.1f} ms "
             "in the same run, and a query makes 3 or 4 MongoDB round trips (checkpoints, the account, its "
             "transactions or the page, a balance): the stand-in, a single Python process over SQLite, sets "
             "this ratio, not the service",
             "correctness: every answer was a 200, and the answers sampled equal the streams"])))
    return results


def _stand_in_round_trip_ms(uri: str, database: str, ids: list[str], count: int = 500) -> float:
    """The cheapest query there is (a document by _id), as the stand-in serves it."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    collection = client[database][COLLECTION]
    collection.find_one({"_id": ids[0]})
    began = time.perf_counter()
    for n in range(count):
        assert collection.find_one({"_id": ids[n % len(ids)]}) is not None
    spent = time.perf_counter() - began
    client.close()
    return spent / count * 1000


def _check_answers(ids: list[str], events_each: int) -> None:
    """A fast wrong answer is a failed benchmark."""
    for account_id in ids[:: max(1, len(ids) // 50)]:
        one = orjson.loads(get_account(make_event("get_account", account_id), None)["body"])
        rows = orjson.loads(statement(make_event("statement", account_id, query={}), None)["body"])
        assert len(rows["transactions"]) == events_each - 1, account_id
        assert rows["closing_funds"] == one["funds"], (account_id, rows["closing_funds"], one["funds"])
    listed = orjson.loads(list_accounts(make_event("list_accounts", query={"limit": "1000"}), None)["body"])
    assert len(listed["accounts"]) == len(ids)
