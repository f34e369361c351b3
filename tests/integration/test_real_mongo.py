"""The projector against a real MongoDB (skipped unless MONGODB_URI is set; see the README).

What the stand-in cannot show: the atomic renameCollection swap, majority write concern on a replica set, and
the query plans (its ``explain`` reports SQLite's).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from pymongo import MongoClient, monitoring

from projector import maintenance
from projector.partition_log import stream_accounts
from shared import runtime
from shared.keys import KeySpace
from shared.mongo_queries import MongoQueries
from shared.principal import Owner
from tests.support.apigw import call
from tests.support.readmodel import assert_read_model_matches, drain, make_projector, settings


@pytest.fixture
def real_db(real_mongo_uri: str) -> Iterator[str]:
    name = f"ledgerstream_test_{uuid.uuid4().hex[:8]}"
    yield name
    MongoClient(real_mongo_uri).drop_database(name)


def test_projection_and_rebuild_on_real_mongodb(live_env: KeySpace, real_mongo_uri: str,
                                                       real_db: str) -> None:
    client: redis.Redis = runtime.redis_client()
    for i in range(10):
        call("create_account", f"acct-{i}")
        call("deposit", f"acct-{i}", {"amount": i + 1})
    projector = make_projector(client, live_env, settings(real_mongo_uri, real_db))
    drain(projector)
    assert_read_model_matches(client, live_env, real_mongo_uri, real_db)
    maintenance.rebuild(projector.log, projector.read_model, projector.history, stream_accounts(client, live_env),
                        20, progress=False)
    assert_read_model_matches(client, live_env, real_mongo_uri, real_db)
    assert MongoClient(real_mongo_uri)[real_db].list_collection_names() == ["accountCollection"]


class FindCommands(monitoring.CommandListener):
    """Every ``find`` command a client sends, to be explained afterwards exactly as it was sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.sent.append({k: v for k, v in event.command.items() if k not in {"lsid", "$db", "$clusterTime",
                                                                                     "readConcern"}})

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def _stages(plan: Any) -> list[str]:
    """Every stage name in an explain plan, whichever engine (classic or SBE) wrote it."""
    if isinstance(plan, list):
        return [stage for item in plan for stage in _stages(item)]
    if not isinstance(plan, dict):
        return []
    found = [plan["stage"]] if isinstance(plan.get("stage"), str) else []
    return found + [stage for key, value in plan.items() if key != "rejectedPlans" for stage in _stages(value)]


def test_every_query_the_api_serves_is_served_by_an_index(live_env: KeySpace, real_mongo_uri: str,
                                                          real_db: str) -> None:
    """The queries of ``GET /accounts`` and the statement, as ``MongoQueries`` sends them, explained on the
    indexes the projector creates at start: no collection scan."""
    client: redis.Redis = runtime.redis_client()
    for i in range(20):
        call("create_account", f"acct-{i}")
        call("deposit", f"acct-{i}", {"amount": i + 1})
    drain(make_projector(client, live_env, settings(real_mongo_uri, real_db)))
    listener = FindCommands()
    mongo: MongoClient[dict[str, Any]] = MongoClient(real_mongo_uri, event_listeners=[listener], tz_aware=True)
    queries = MongoQueries(mongo, real_db, "accountCollection", "projector")
    now = datetime.now(UTC)
    queries.checkpoints(range(live_env.partitions))
    queries.account("acct-3")
    queries.accounts(None, None, None, None, None, 50)
    queries.accounts(None, None, 100, 900, "acct-1", 50)
    queries.accounts(Owner("https://issuer.example", "someone"), None, None, None, None, 50)
    queries.accounts(None, "acct-4", None, None, None, 1)
    queries.transactions("acct-5", None, None, None, 100)
    queries.transactions("acct-5", now - timedelta(days=1), now + timedelta(days=1), (now, 1), 100)
    queries.balance_before("acct-5", now)
    queries.balance_before("acct-5", None)
    assert len(listener.sent) == 10
    for command in listener.sent:
        explained = mongo[real_db].command("explain", command, verbosity="queryPlanner")
        stages = _stages(explained["queryPlanner"]["winningPlan"])
        assert "COLLSCAN" not in stages and any("IXSCAN" in s or "IDHACK" in s for s in stages), (command, stages)
    mongo.close()
