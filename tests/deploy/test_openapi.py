"""openapi.yaml is valid, describes exactly the template's routes, and the live gateway honours it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate

from devstack.issuer import LOCAL_AUDIENCE, IssuerServer, LocalIssuer, SigningKey
from devstack.mongo_standin import MongoStandIn
from gateway.routes import ROUTES
from tests.support.gateway import live_gateway
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
def test_schemathesis_against_the_live_gateway(redis_target: RedisTarget, key_prefix: str, redis_client: object,
                                               mongo_standin: MongoStandIn, mongo_db: str) -> None:
    st = tool("st") or tool("schemathesis")
    if st is None:
        pytest.fail("schemathesis is not installed; it is part of the dev extra")
    issuer = LocalIssuer("http://127.0.0.1", [SigningKey.generate("ES256")])
    with IssuerServer(issuer) as server:
        issuer.url = f"http://127.0.0.1:{server.port}"
        settings = {**redis_target.env(), "LEDGER_KEY_PREFIX": key_prefix, "AUTH_MODE": "jwt",
                    "AUTH_ISSUER": issuer.url, "AUTH_AUDIENCE": LOCAL_AUDIENCE,
                    # The query routes read the read model (empty here: they answer from what it has).
                    "MONGODB_URI": mongo_standin.uri, "MONGODB_DATABASE": mongo_db, "QUERY_WAIT_SECONDS": "0.2"}
        # An administrator's token, so every route can be exercised; schemathesis's ignored_auth check also
        # sends each request without it and expects a 401.
        token = issuer.token("schemathesis", ("accounts:read", "accounts:write", "accounts:admin"))
        with live_gateway(settings) as base:
            result = subprocess.run(
                [st, "run", "openapi.yaml", "--url", base, "--checks", "all", "-H", f"Authorization: Bearer {token}",
                 "--max-examples", "25", "--seed", "1", "--request-timeout", "10"],
                cwd=ROOT, env={**os.environ, **settings}, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-5000:]
    assert " passed" in result.stdout
