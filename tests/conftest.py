"""Test session wiring: a real Redis server over TCP for every test marked ``redis``.

Which server: ``TEST_REDIS_URL`` if set (it must answer); otherwise the local default
``redis://127.0.0.1:6379`` (database 15) if it answers; otherwise a throwaway ``redis-server`` started on a
free port for this session. With ``TEST_REDIS_CLUSTER=1`` every Redis test runs a second time on a real
3-master Redis Cluster started for the session (test ids end in ``[cluster]``). If no server can be had,
Redis tests are skipped with the reason, except when ``CI=true``, where they fail: CI must never pass by
silently skipping them.

Every test gets its own key prefix and its keys are deleted afterwards, so the suite can share a server.

Tiers, by marker: ``redis`` (a real Redis: everything under ``tests/integration`` and whatever asks for a
Redis fixture), ``mongo`` (the MongoDB stand-in), ``real_mongo`` (a real MongoDB). ``make unit`` runs the
rest with ``LEDGER_TESTS_OFFLINE=1``, under which asking for a server fails the test instead of starting
one, so a test that needs a server but lacks its marker cannot hide in the fast tier.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pymongo import MongoClient

from devstack.mongo_standin import MongoStandIn
from devstack.redis_cluster import LocalCluster
from devstack.redis_server import RedisProcess, answers
from shared import runtime
from shared.keys import KeySpace
from tests.support.targets import RedisTarget, delete_keys

LOCAL_DEFAULT_URL = "redis://127.0.0.1:6379/15"


def _no_authentication_unless_asked() -> None:
    """The service refuses to start without authentication settings. Tests that are not about
    authentication run, as the README says they may, with AUTH_MODE=none, and the processes they start
    inherit it; the tests about authentication (tests/integration/test_authorization.py and the others that
    start an issuer) set their own AUTH_* variables, so whatever a developer's shell holds cannot leak in."""
    for name in [n for n in os.environ if n.startswith("AUTH_")]:
        del os.environ[name]
    os.environ["AUTH_MODE"] = "none"


_no_authentication_unless_asked()
#: The service refuses to start without a key for its consistency tokens; the tests' own, never a deployment's.
os.environ["CONSISTENCY_TOKEN_SECRET"] = "tests-only-consistency-token-key-0123456789"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _offline() -> bool:
    return os.environ.get("LEDGER_TESTS_OFFLINE", "").lower() in {"1", "true", "yes"}


def _refuse_servers_offline(what: str) -> None:
    if _offline():
        pytest.fail(f"LEDGER_TESTS_OFFLINE is set but this test asks for {what}: give it the right marker")


def _topologies() -> list[str]:
    """Every Redis test runs on a single node, and again on a real 3-master cluster with TEST_REDIS_CLUSTER=1."""
    cluster = os.environ.get("TEST_REDIS_CLUSTER", "").lower() in {"1", "true", "yes"}
    return ["standalone", "cluster"] if cluster else ["standalone"]


@pytest.fixture(scope="session", params=_topologies())
def redis_target(request: pytest.FixtureRequest) -> Iterator[RedisTarget]:
    _refuse_servers_offline("a Redis server")
    if request.param == "cluster":
        yield from _cluster_target()
    else:
        yield from _standalone_target()


def _standalone_target() -> Iterator[RedisTarget]:
    explicit = os.environ.get("TEST_REDIS_URL")
    if explicit:
        if not answers(explicit):
            pytest.fail(f"TEST_REDIS_URL={explicit} does not answer PING")
        yield RedisTarget("standalone", explicit)
        return
    if answers(LOCAL_DEFAULT_URL):
        yield RedisTarget("standalone", LOCAL_DEFAULT_URL)
        return
    try:
        server = RedisProcess().start()
    except (FileNotFoundError, RuntimeError) as exc:
        if _in_ci():
            pytest.fail(f"CI=true and no Redis server could be had: {exc}")
        pytest.skip(f"no Redis server: {exc}")
    try:
        yield RedisTarget("standalone", server.url)
    finally:
        server.stop()


def _cluster_target() -> Iterator[RedisTarget]:
    try:
        cluster = LocalCluster(masters=3).start()
    except (FileNotFoundError, RuntimeError, subprocess.SubprocessError) as exc:
        if _in_ci():
            pytest.fail(f"CI=true and no Redis Cluster could be started: {exc}")
        pytest.skip(f"no Redis Cluster: {exc}")
    try:
        yield RedisTarget("cluster", cluster.url, cluster.nodes_setting)
    finally:
        cluster.stop()


@pytest.fixture
def key_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_client(redis_target: RedisTarget, key_prefix: str) -> Iterator[redis.Redis]:
    client = redis_target.client()
    try:
        yield client
    finally:
        delete_keys(client, KeySpace(key_prefix, 1).every_key())
        client.close()


@pytest.fixture
def keyspace(key_prefix: str) -> KeySpace:
    return KeySpace(key_prefix, 8)


@pytest.fixture
def live_env(monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis, redis_target: RedisTarget,
             key_prefix: str) -> Iterator[KeySpace]:
    """Point the handlers' per-process wiring at the test Redis and this test's key prefix."""
    monkeypatch.delenv("REDIS_CLUSTER_NODES", raising=False)
    for name, value in redis_target.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LEDGER_KEY_PREFIX", key_prefix)
    monkeypatch.setenv("LEDGER_PARTITIONS", "8")
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    runtime.reset()
    try:
        yield KeySpace(key_prefix, 8)
    finally:
        runtime.reset()


@pytest.fixture(scope="session")
def mongo_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoStandIn]:
    """The nx-27017 MongoDB stand-in, one server for the session (see DESIGN/README for its limits)."""
    _refuse_servers_offline("the MongoDB stand-in")
    server = MongoStandIn(tmp_path_factory.mktemp("nx-27017")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mongo_db(mongo_standin: MongoStandIn) -> Iterator[str]:
    """A database name of this test's own on the stand-in, dropped afterwards."""
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    client: MongoClient[dict[str, object]] = MongoClient(mongo_standin.uri)
    client.drop_database(name)
    client.close()


@pytest.fixture(scope="session")
def real_mongo_uri() -> str:
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        pytest.skip("real MongoDB tests need MONGODB_URI (for example: docker compose up -d mongo; "
                    "MONGODB_URI=mongodb://localhost:27017 make test)")
    return uri


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Markers by directory and by the fixtures a test asks for, so a tier cannot leak."""
    integration = Path(__file__).parent / "integration"
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.path.is_relative_to(integration) or fixtures & {"redis_target", "redis_client", "live_env"}:
            item.add_marker(pytest.mark.redis)
        if "mongo_standin" in fixtures:
            item.add_marker(pytest.mark.mongo)
        if "real_mongo_uri" in fixtures:
            item.add_marker(pytest.mark.real_mongo)


@pytest.fixture
def restored_environ() -> Iterator[None]:
    """For code that changes os.environ as it would in a process of its own (``devstack.invoke`` adds the
    template's variables): the environment as it was afterwards, and the per-process wiring rebuilt."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    runtime.reset()
