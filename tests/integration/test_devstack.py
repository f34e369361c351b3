"""`make run`'s own checks, against real servers: the durability of a Redis it reuses, free ports after a
restart, a read model of its own for the cluster topology, and `devstack.invoke` writing where `make run` does."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis

from devstack import invoke
from devstack.__main__ import CLUSTER_DATABASE, cluster_environment, redis_for_run
from devstack.process import port_in_use
from devstack.redis_server import RedisProcess, durability
from devstack.settings import DevSettings
from shared import runtime
from shared.keys import KeySpace


@pytest.fixture
def plain_redis() -> Iterator[RedisProcess]:
    server = RedisProcess().start()  # appendonly no, no snapshots: this machine's own Redis is like it
    yield server
    server.stop()


def test_a_reused_redis_without_make_runs_durability_is_named_in_a_warning(
        plain_redis: RedisProcess, capsys: pytest.CaptureFixture[str]) -> None:
    assert durability(plain_redis.url) == "appendonly no, RDB snapshots off"
    url = redis_for_run({}, replace(DevSettings(), redis_port=plain_redis.port), [])
    assert url == plain_redis.url
    err = capsys.readouterr().err
    assert "WARNING" in err and "appendonly no, RDB snapshots off" in err and "appendfsync always" in err


def test_a_durable_redis_is_reused_without_a_warning() -> None:
    server = RedisProcess().start(extra_args=("--appendonly", "yes", "--appendfsync", "always"))
    try:
        assert durability(server.url) is None
        redis.Redis.from_url(server.url).config_set("appendfsync", "everysec")
        assert durability(server.url) == "appendonly yes, appendfsync everysec, RDB snapshots off"
    finally:
        server.stop()


def test_a_port_left_in_time_wait_by_a_stopped_server_is_free() -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    assert port_in_use(port)  # listening
    served.close()  # the server closes first, as gunicorn does on Ctrl-C: its side goes to TIME-WAIT
    assert client.recv(1) == b""
    client.close()
    listener.close()
    assert not port_in_use(port)


def test_the_cluster_topology_keeps_a_read_model_of_its_own() -> None:
    env: dict[str, str] = {}
    addresses = cluster_environment(env, [7000, 7001, 7002])
    assert env["MONGODB_DATABASE"] == CLUSTER_DATABASE != "accountDB"
    assert env["REDIS_URL"] == "redis://127.0.0.1:7000" and addresses[1:] == ["127.0.0.1:7001", "127.0.0.1:7002"]
    chosen = {"MONGODB_DATABASE": "mine"}
    cluster_environment(chosen, [7000, 7001, 7002])
    assert chosen["MONGODB_DATABASE"] == "mine"


def test_invoke_writes_to_the_redis_make_run_uses(plain_redis: RedisProcess, restored_environ: None,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("REDIS_URL", "REDIS_CLUSTER", "REDIS_CLUSTER_NODES"):
        monkeypatch.delenv(name, raising=False)
    keys = KeySpace(f"test-invoke-{plain_redis.port}", 16)
    monkeypatch.setenv("LEDGER_KEY_PREFIX", keys.prefix)
    monkeypatch.setenv("DEV_REDIS_PORT", str(plain_redis.port))
    runtime.reset()
    assert invoke.main(["CreateAccountFunction", "events/create_account.json"]) == 0
    assert json.loads(capsys.readouterr().out)["statusCode"] == 201
    created = json.loads((invoke.ROOT / "events/create_account.json").read_text())
    account_id = json.loads(created["body"])["id"]
    assert redis.Redis.from_url(plain_redis.url).exists(keys.stream(account_id))
