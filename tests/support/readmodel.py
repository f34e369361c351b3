"""Projector helpers shared by tests and benchmarks: wiring an in-process projector, stepping it until it is
done, and comparing the read model with the account streams (the source of truth)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import redis
from pymongo import MongoClient
from pymongo.collection import Collection

from projector.read_model import ReadModel
from projector.runner import Runner
from projector.settings import ProjectorSettings
from projector.statements import transactions
from projector.wiring import assemble
from shared import account
from shared.keys import KeySpace
from shared.money import format_minor
from shared.read_model_layout import transactions_name
from shared.stream_codec import decode_entries
from tests.support.targets import RedisTarget

COLLECTION = "accountCollection"


def settings(mongo_uri: str, database: str, **overrides: Any) -> ProjectorSettings:
    base = ProjectorSettings(mongodb_uri=mongo_uri, mongodb_database=database, name="test", batch_size=100,
                             lease_ttl_seconds=2.0, max_deliveries=3, health_port=0, check_interval_seconds=1.0,
                             stall_seconds=5.0, mongodb_timeout_seconds=1.0)
    return replace(base, **overrides)


def make_projector(client: redis.Redis, keys: KeySpace, config: ProjectorSettings, owner: str | None = None,
                   model: ReadModel | None = None) -> Runner:
    """A projector in process, on MongoDB at ``config``'s address unless ``model`` is given (the fake). On a
    pool of its own: its fetcher's threads block in reads, which one kept connection would serialise."""
    if getattr(client, "connection", None) is not None:  # the service's client keeps one connection
        client = redis.Redis(connection_pool=client.connection_pool)
    return assemble(client, keys, config, owner=owner, model=model, block_ms=100).runner()


def drain(projector: Runner, quiet_steps: int = 3, timeout: float = 60.0) -> None:
    """Step until the projector owns partitions and ``quiet_steps`` steps in a row find nothing to do."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < quiet_steps:
        assert time.monotonic() < deadline, "projector did not drain"
        report = projector.step()
        busy = report.entries or any(p.retries.held or p.progress.reproject or p.reading.cursor
                                     for p in projector.partitions.values())
        quiet = 0 if busy or not projector.partitions else quiet + 1


def expected_from_streams(client: redis.Redis, keys: KeySpace) -> dict[str, tuple[int, int]]:
    """(balance, version) per account, rebuilt from the account streams (the source of truth)."""
    result = {}
    for key in client.scan_iter(match=keys.pattern("stream"), count=1000):
        if keys.stream_account(key) is None:  # not an account's stream (a planted key, say)
            continue
        events = decode_entries(client.xrange(key))
        state = account.rebuild(events[0].account_id, events)
        result[state.id] = (state.balance, state.version)
    return result


def read_model(mongo_uri: str, database: str, collection: str = COLLECTION) -> dict[str, dict[str, Any]]:
    """The account documents (checkpoints left out)."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    try:
        return {doc["_id"]: doc for doc in client[database][collection].find({"kind": {"$exists": False}})}
    finally:
        client.close()


def assert_read_model_matches(client: redis.Redis, keys: KeySpace, mongo_uri: str, database: str,
                              collection: str = COLLECTION) -> dict[str, dict[str, Any]]:
    docs = assert_documents_match(client, keys, read_model(mongo_uri, database, collection))
    mongo: MongoClient[dict[str, Any]]
    with MongoClient(mongo_uri) as mongo:
        stored: Collection[dict[str, Any]] = mongo[database][transactions_name(collection)]
        assert_transactions_match(client, keys, lambda a: list(stored.find({"account_id": a}).sort("version", 1)))
    return docs


def assert_documents_match(client: redis.Redis, keys: KeySpace, docs: dict[str, dict[str, Any]]
                           ) -> dict[str, dict[str, Any]]:
    """Every account document says what its stream says (balance, version, its latest event ids)."""
    expected = expected_from_streams(client, keys)
    assert set(docs) == set(expected)
    for account_id, (balance, version) in expected.items():
        doc = docs[account_id]
        assert (doc["balance_minor"], doc["version"]) == (balance, version), account_id
        assert doc["balance"] == format_minor(balance)
        assert len(doc["timestamps"]) == len(set(doc["timestamps"])), "an entry id recorded twice"
        events = decode_entries(client.xrange(keys.stream(account_id)))
        kept = doc["event_ids"]
        assert kept == [e.event_id for e in events][-len(kept):], f"{account_id}: other events than its stream"
    return docs


def assert_transactions_match(client: redis.Redis, keys: KeySpace,
                              transactions_of: Callable[[str], list[dict[str, Any]]]) -> None:
    """Every account's transactions in the read model are its stream's deposits and withdrawals, each with the
    balance after it."""
    for account_id in expected_from_streams(client, keys):
        events = decode_entries(client.xrange(keys.stream(account_id)))
        want = [(t.version, t.event_id, t.amount_minor, t.balance_minor) for t in transactions(account_id, events)]
        have = [(d["version"], d["event_id"], d["amount_minor"], d["balance_minor"])
                for d in transactions_of(account_id)]
        assert have == want, f"{account_id}: its transactions differ from its stream's"


def group_drained(client: redis.Redis, keys: KeySpace, group: str) -> bool:
    """Every entry of every partition log delivered to the group and acknowledged: nothing pending, and the
    group's last delivered entry is the log's last."""
    for partition in range(keys.partitions):
        log = keys.partition_log(partition)
        if not client.exists(log):
            continue
        groups = {g["name"].decode(): g for g in client.xinfo_groups(log)}
        info = groups.get(group)
        last: Any = client.xrevrange(log, count=1)
        # Not XINFO's "lag": once a log has been trimmed, Redis may no longer count it right.
        if info is None or info["pending"] or (last and info["last-delivered-id"] != last[0][0]):
            return False
    return True


def process_env(keys: KeySpace, target: RedisTarget, mongo_uri: str, database: str, **extra: str) -> dict[str, str]:
    """The environment of a ``python -m projector`` child on ``target`` and this key space (no health port)."""
    return {**target.env(), "LEDGER_KEY_PREFIX": keys.prefix, "LEDGER_PARTITIONS": str(keys.partitions),
            "MONGODB_URI": mongo_uri, "MONGODB_DATABASE": database, "PROJECTOR_HEALTH_PORT": "0", **extra}


class ProjectorProcess:
    """``python -m projector`` as a child process, its JSON log lines collected as they come (an unread pipe
    would fill up and block the child)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "projector"], env={**os.environ, **env},
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.raw.append(line)
            with contextlib.suppress(ValueError):
                self.lines.append({**json.loads(line), "_seen": time.monotonic()})

    def logged(self, message_part: str) -> list[dict[str, Any]]:
        return [line for line in list(self.lines) if message_part in str(line.get("message", ""))]

    def terminate(self, timeout: float = 15.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(5)
