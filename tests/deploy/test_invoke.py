"""The in-process stand-in for `sam local invoke`: handler and environment come from template.yaml."""

from __future__ import annotations

import json

import pytest

from devstack import invoke
from devstack.issuer import LOCAL_AUDIENCE, IssuerServer, LocalIssuer, SigningKey
from shared import runtime
from shared.keys import KeySpace

pytestmark = pytest.mark.usefixtures("live_env", "restored_environ")


def test_invoke_by_logical_id(capsys: pytest.CaptureFixture[str], live_env: KeySpace) -> None:
    assert invoke.main(["CreateAccountFunction", "events/create_account.json"]) == 0
    assert json.loads(capsys.readouterr().out)["statusCode"] == 201
    assert invoke.main(["DepositFunction", "events/deposit.json"]) == 0
    body = json.loads(json.loads(capsys.readouterr().out)["body"])
    assert body["funds"] == "100.00"
    runtime.reset()


def test_environment_is_resolved_from_the_template() -> None:
    _, handler, env = invoke.resolve("DepositFunction", invoke.ROOT / "template.yaml",
                                     {"RedisUrlParameter": "/ledger/redis"})
    assert handler == "app.lambda_handler"
    assert env["REDIS_URL_PARAMETER"] == "/ledger/redis"
    assert "REDIS_URL_SECRET_ARN" not in env
    assert env["LEDGER_PARTITIONS"] == "16"
    assert "ARCHIVE_URL" not in env  # names the stack's bucket, which does not exist locally
    assert env["ARCHIVE_AFTER_EVENTS"] == "50"


def test_unknown_function_is_refused() -> None:
    with pytest.raises(SystemExit, match="not a function"):
        invoke.main(["NoSuchFunction", "events/deposit.json"])


@pytest.mark.parametrize(("arguments", "message"), [
    (["DepositFunction", "events/no-such-file.json"], "cannot read the event file"),
    (["DepositFunction", "README.md"], "is not JSON"),
    (["DepositFunction", "events/deposit.json", "--parameter", "NoEquals"], "NAME=VALUE"),
])
def test_a_bad_invocation_is_one_line_not_a_traceback(arguments: list[str], message: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        invoke.main(arguments)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cluster_mode_reaches_the_functions() -> None:
    _, _, env = invoke.resolve("DepositFunction", invoke.ROOT / "template.yaml",
                               {"RedisCluster": "true", "RedisClusterNodes": "node-2:6379,node-3:6379"})
    assert (env["REDIS_CLUSTER"], env["REDIS_CLUSTER_NODES"]) == ("true", "node-2:6379,node-3:6379")
    _, _, plain = invoke.resolve("DepositFunction", invoke.ROOT / "template.yaml", {})
    assert plain["REDIS_CLUSTER"] == "false" and "REDIS_CLUSTER_NODES" not in plain


def test_the_functions_check_the_token_given_with_token(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    issuer = LocalIssuer("http://127.0.0.1", [SigningKey.generate("ES256")])
    with IssuerServer(issuer) as server:
        issuer.url = f"http://127.0.0.1:{server.port}"
        monkeypatch.delenv("AUTH_MODE")
        monkeypatch.setenv("AUTH_ISSUER", issuer.url)
        monkeypatch.setenv("AUTH_AUDIENCE", LOCAL_AUDIENCE)
        runtime.reset()
        assert invoke.main(["CreateAccountFunction", "events/create_account.json"]) == 0
        assert json.loads(capsys.readouterr().out)["statusCode"] == 401
        token = issuer.token("carol")
        assert invoke.main(["CreateAccountFunction", "events/create_account.json", "--token", token]) == 0
        assert json.loads(capsys.readouterr().out)["statusCode"] == 201
        assert invoke.main(["GetAccountFunction", "events/get_account.json", "--token", token]) == 0
        shown = json.loads(json.loads(capsys.readouterr().out)["body"])
        assert shown["owner"] == {"issuer": issuer.url, "subject": "carol"}
