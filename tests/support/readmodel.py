"""Helpers for projector tests: wiring an in-process projector and comparing the read model to the streams."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import redis
from pymongo import MongoClient

from projector.consumer import PartitionConsumer
from projector.read_model import ReadModel, connect_mongo
from projector.worker import Projector
from shared import account
from shared.config import ProjectorSettings
from shared.keys import KeySpace
from shared.money import format_minor
from shared.stream_codec import decode_entries

COLLECTION = "accountCollection"


def settings(mongo_uri: str, database: str, **overrides: Any) -> ProjectorSettings:
    base = ProjectorSettings(mongodb_uri=mongo_uri, mongodb_database=database, consumer="test-consumer",
                             batch_size=100, block_ms=50, claim_idle_ms=200, max_deliveries=3, health_port=0,
                             mongodb_timeout_ms=1000)
    return replace(base, **overrides)


def make_projector(client: redis.Redis, keys: KeySpace, config: ProjectorSettings) -> Projector:
    consumer = PartitionConsumer(client, keys, config.group, config.consumer)
    model = ReadModel(connect_mongo(config), config.mongodb_database, config.mongodb_collection, config.timestamps_kept)
    return Projector(consumer, model, config)


def drain(projector: Projector, quiet_steps: int = 3, timeout: float = 60.0) -> None:
    """Step until ``quiet_steps`` consecutive steps find nothing to do."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < quiet_steps:
        assert time.monotonic() < deadline, "projector did not drain"
        report = projector.step()
        quiet = quiet + 1 if report.entries == 0 else 0


def expected_from_streams(client: redis.Redis, keys: KeySpace) -> dict[str, tuple[int, int]]:
    """(balance, version) per account, rebuilt from the account streams (the source of truth)."""
    result = {}
    for key in client.scan_iter(match=keys.pattern("stream"), count=1000):
        events = decode_entries(client.xrange(key))
        state = account.rebuild(events[0].account_id, events)
        result[state.id] = (state.balance, state.version)
    return result


def read_model(mongo_uri: str, database: str, collection: str = COLLECTION) -> dict[str, dict[str, Any]]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    try:
        return {doc["_id"]: doc for doc in client[database][collection].find({})}
    finally:
        client.close()


def assert_read_model_matches(client: redis.Redis, keys: KeySpace, mongo_uri: str, database: str,
                              collection: str = COLLECTION) -> dict[str, dict[str, Any]]:
    expected = expected_from_streams(client, keys)
    docs = read_model(mongo_uri, database, collection)
    assert set(docs) == set(expected)
    for account_id, (balance, version) in expected.items():
        doc = docs[account_id]
        assert (doc["balance_minor"], doc["version"]) == (balance, version), account_id
        assert doc["balance"] == format_minor(balance)
        assert len(doc["timestamps"]) == len(set(doc["timestamps"])), "an entry id recorded twice"
    return docs


def projector_process(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "projector"], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def group_drained(client: redis.Redis, keys: KeySpace, group: str) -> bool:
    for partition in range(keys.partitions):
        log = keys.partition_log(partition)
        if not client.exists(log):
            continue
        groups = {g["name"].decode(): g for g in client.xinfo_groups(log)}
        info = groups.get(group)
        if info is None or info["pending"] or info.get("lag"):
            return False
    return True
