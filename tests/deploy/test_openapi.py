"""openapi.yaml is valid, describes exactly the template's routes, and the live gateway honours it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate

from devstack.redis_server import free_port
from gateway.routes import ROUTES
from tests.support.targets import RedisTarget
from tests.support.tools import tool

ROOT = Path(__file__).resolve().parents[2]


def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    return loaded


def test_the_spec_is_valid_openapi() -> None:
    validate(spec())


def test_the_spec_and_the_template_describe_the_same_routes() -> None:
    operations = {(method.upper(), path) for path, item in spec()["paths"].items() for method in item
                  if method in {"get", "post", "put", "patch", "delete"}}
    assert operations == {(route.method, route.path) for route in ROUTES}


def test_every_write_documents_its_headers() -> None:
    for path, item in spec()["paths"].items():
        if "post" not in item:
            continue
        names = {p.get("$ref", "").rsplit("/", 1)[-1] for p in item["post"]["parameters"]}
        assert {"IdempotencyKey", "IfMatch"} <= names, path
        assert "ETag" in item["post"]["responses"]["200" if path != "/accounts" else "201"]["headers"]


@pytest.mark.slow
def test_schemathesis_against_the_live_gateway(redis_target: RedisTarget, key_prefix: str,
                                               redis_client: object) -> None:
    st = tool("st") or tool("schemathesis")
    if st is None:
        pytest.fail("schemathesis is not installed; it is part of the dev extra")
    port = free_port()
    env = {**os.environ, **redis_target.env(), "LEDGER_KEY_PREFIX": key_prefix, "LOG_LEVEL": "WARNING",
           "GUNICORN_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "2"}
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", "gateway/gunicorn.conf.py",
                               "gateway:create_app()"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        _wait_for(f"http://127.0.0.1:{port}/healthz")
        result = subprocess.run(
            [st, "run", "openapi.yaml", "--url", f"http://127.0.0.1:{port}", "--checks", "all",
             "--max-examples", "25", "--seed", "1", "--request-timeout", "10"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, result.stdout[-5000:]
        assert " passed" in result.stdout
    finally:
        server.terminate()
        server.wait(10)


def _wait_for(url: str, timeout: float = 20) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
