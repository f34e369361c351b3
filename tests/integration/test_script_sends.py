"""What "sent" means for a script call, on the connections the service really uses (a kept connection on a
single node, pooled ones on a cluster): the outcome a client is told (503 store-unavailable = nothing was
applied, vs outcome-unknown) rests on it."""

from __future__ import annotations

from typing import Any

import pytest

from devstack.redis_server import free_port
from shared import runtime
from shared.keys import KeySpace
from shared.redis_client import UNAVAILABLE_ERRORS, ScriptRunner, SendingScripts, is_cluster
from shared.redis_store import LOAD_LUA


def test_a_script_call_that_reaches_redis_counts_as_sent(live_env: KeySpace) -> None:
    runner = ScriptRunner(runtime.redis_client())
    load = runner.register(LOAD_LUA)
    keys = live_env.account("alice")
    with SendingScripts() as sent:
        assert not sent()
        state, entries, record = runner(load, [keys.stream, keys.snapshot], [])
        assert (state, entries, record) == (None, [], None)
        assert sent()


def test_a_plain_command_is_not_a_script_send(live_env: KeySpace) -> None:
    runner = ScriptRunner(runtime.redis_client())
    with SendingScripts() as sent:
        assert runner.raw("XRANGE", live_env.stream("alice"), "-", "+") == []
        assert not sent()


def test_a_script_call_that_cannot_connect_was_not_sent(live_env: KeySpace) -> None:
    client = runtime.redis_client()
    if is_cluster(client):
        pytest.skip("the kept connection, whose reconnect is tested here, exists on a single node only")
    runner = ScriptRunner(client)
    load = runner.register(LOAD_LUA)
    keys = live_env.account("alice")
    connection: Any = client.connection
    assert connection is not None
    connection.disconnect()
    connection.port = free_port()  # the next connect, and its one retry, find nobody listening
    with SendingScripts() as sent:
        with pytest.raises(UNAVAILABLE_ERRORS):
            runner(load, [keys.stream, keys.snapshot], [])
        assert not sent()
