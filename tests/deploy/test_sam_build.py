"""`sam build`, then every handler imported from the build output the way Lambda lays it out, serving a
request against a real Redis with a bearer token of a local issuer. This catches a layer that works in tests
and breaks in Lambda (the token check needs PyJWT and cryptography from the layer)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.issuer import LOCAL_AUDIENCE, IssuerServer, LocalIssuer, SigningKey
from devstack.mongo_standin import MongoStandIn
from tests.support.apigw import make_event
from tests.support.targets import RedisTarget
from tests.support.tools import tool

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = {
    "CreateAccountFunction": "create_account",
    "DepositFunction": "deposit",
    "WithdrawFunction": "withdraw",
    "GetAccountFunction": "get_account",
    "ListEventsFunction": "list_events",
    "AssignOwnerFunction": "assign_owner",
    "ListAccountsFunction": "list_accounts",
    "StatementFunction": "statement",
}
# Lambda: the function's code is the working directory (/var/task) and layers are under /opt/python.
# -I -S: no user site, no site-packages, so only the build output can satisfy an import.
INVOKE = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import app
event = json.load(sys.stdin)
print(json.dumps(app.lambda_handler(event, None)))
"""


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sam = tool("sam")
    if sam is None:
        pytest.fail("sam (aws-sam-cli) is not installed; it is part of the dev extra")
    build = tmp_path_factory.mktemp("sam") / "build"
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "PYTHON": sys.executable,
           "LAYER_PYTHON_VERSION": f"{sys.version_info.major}.{sys.version_info.minor}"}
    subprocess.run([sam, "build", "--template-file", str(ROOT / "template.yaml"), "--build-dir", str(build)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    return build


def invoke(build: Path, function: str, event: dict[str, object], env: dict[str, str]) -> dict[str, object]:
    layer = build / "SharedLayer" / "python"
    out = subprocess.run([sys.executable, "-I", "-S", "-c", INVOKE, str(build / function), str(layer)],
                         input=json.dumps(event), capture_output=True, text=True, env=env,
                         cwd=build / function, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    *logged, last = out.stdout.strip().splitlines()
    # With the template's METRICS_FORMAT=EMF, the function's metrics are log lines before the response.
    names = {metric["Name"] for line in logged if line.startswith('{"_aws"')
             for metric in json.loads(line)["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert "ledger_http_requests_total" in names, out.stdout
    response: dict[str, object] = json.loads(last)
    return response


@pytest.mark.slow
def test_the_build_output_serves_every_route(build_dir: Path, redis_target: RedisTarget, key_prefix: str,
                                             redis_client: object, mongo_standin: MongoStandIn,
                                             mongo_db: str) -> None:
    layer = build_dir / "SharedLayer" / "python"
    assert (layer / "shared" / "append.lua").exists(), "the layer must keep the shared/ package folder"
    assert not (layer / "event_store.py").exists()
    issuer = LocalIssuer("http://127.0.0.1", [SigningKey.generate("ES256")])
    with IssuerServer(issuer) as server:
        issuer.url = f"http://127.0.0.1:{server.port}"
        env = {**redis_target.env(), "LEDGER_KEY_PREFIX": key_prefix, "LOG_LEVEL": "WARNING", "PATH": "/usr/bin",
               "AUTH_ISSUER": issuer.url, "AUTH_AUDIENCE": LOCAL_AUDIENCE, "METRICS_FORMAT": "EMF",
               "CONSISTENCY_TOKEN_SECRET": os.environ["CONSISTENCY_TOKEN_SECRET"],
               # The query functions read the read model (pymongo from the layer); empty here, nothing projected.
               "MONGODB_URI": mongo_standin.uri, "MONGODB_DATABASE": mongo_db, "QUERY_WAIT_SECONDS": "0"}
        owner = {"Authorization": f"Bearer {issuer.token('carol')}"}
        admin = {"Authorization": f"Bearer {issuer.token('ops', ('accounts:write', 'accounts:admin'))}"}
        calls = [("CreateAccountFunction", make_event("create_account", "lambda-acct", headers=owner), 201),
                 ("DepositFunction", make_event("deposit", "lambda-acct", {"amount": "12.50"}, headers=owner), 200),
                 ("WithdrawFunction", make_event("withdraw", "lambda-acct", {"amount": "2.50"}, headers=owner), 200),
                 ("GetAccountFunction", make_event("get_account", "lambda-acct", headers=owner), 200),
                 ("ListEventsFunction", make_event("list_events", "lambda-acct", headers=owner), 200),
                 ("AssignOwnerFunction", make_event("assign_owner", "lambda-acct", {"subject": "carol"},
                                                    headers=admin), 200),
                 ("ListAccountsFunction", make_event("list_accounts", headers=owner), 200),
                 # Not projected (no projector runs here): the read model does not have it yet.
                 ("StatementFunction", make_event("statement", "lambda-acct", headers=owner), 404),
                 ("GetAccountFunction", make_event("get_account", "lambda-acct"), 401)]
        for function, event, status in calls:
            response = invoke(build_dir, function, event, env)
            assert response["statusCode"] == status, (function, response)
        final = invoke(build_dir, "GetAccountFunction", make_event("get_account", "lambda-acct", headers=owner), env)
    assert json.loads(str(final["body"]))["funds"] == "10.00"
