"""The projector against a real MongoDB (skipped unless MONGODB_URI is set; see the README).

What the stand-in cannot show: the atomic renameCollection swap, majority write concern on a replica set.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from pymongo import MongoClient

from projector import maintenance
from shared import runtime
from shared.keys import KeySpace
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
    maintenance.rebuild(projector.log, projector.read_model, projector.history, 20, progress=False)
    assert_read_model_matches(client, live_env, real_mongo_uri, real_db)
    assert MongoClient(real_mongo_uri)[real_db].list_collection_names() == ["accountCollection"]
