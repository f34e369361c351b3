"""Redis and MongoDB credentials from Secrets Manager or SSM Parameter Store, against moto."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from projector.settings import load_projector_settings
from shared.config import ConfigError, load_settings


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {"AWS_DEFAULT_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield


@pytest.mark.usefixtures("aws")
def test_redis_url_from_secrets_manager_plain_and_json() -> None:
    client = boto3.client("secretsmanager")
    plain = client.create_secret(Name="plain", SecretString="rediss://:s3cret@cache:6380/0")["ARN"]
    wrapped = client.create_secret(Name="wrapped", SecretString=json.dumps({"url": "redis://cache:6379/1"}))["ARN"]
    assert load_settings({"REDIS_URL_SECRET_ARN": plain}).redis_url == "rediss://:s3cret@cache:6380/0"
    assert load_settings({"REDIS_URL_SECRET_ARN": wrapped}).redis_url == "redis://cache:6379/1"


@pytest.mark.usefixtures("aws")
def test_redis_url_and_password_from_parameter_store() -> None:
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name="/ledger/redis-url", Value="redis://cache:6379/0", Type="SecureString")
    ssm.put_parameter(Name="/ledger/redis-password", Value='{"password": "hunter2"}', Type="SecureString")
    settings = load_settings({"REDIS_URL_PARAMETER": "/ledger/redis-url",
                              "REDIS_PASSWORD_PARAMETER": "/ledger/redis-password"})
    assert (settings.redis_url, settings.redis_password) == ("redis://cache:6379/0", "hunter2")
    assert "hunter2" not in repr(settings)


@pytest.mark.usefixtures("aws")
def test_mongodb_uri_for_the_projector() -> None:
    arn = boto3.client("secretsmanager").create_secret(
        Name="mongo", SecretString=json.dumps({"uri": "mongodb://user:pw@db:27017"}))["ARN"]
    assert load_projector_settings({"MONGODB_URI_SECRET_ARN": arn}).mongodb_uri == "mongodb://user:pw@db:27017"


@pytest.mark.usefixtures("aws")
def test_errors_name_the_variable_not_the_value() -> None:
    with pytest.raises(ConfigError, match="REDIS_URL_SECRET_ARN"):
        load_settings({"REDIS_URL_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:missing"})
    boto3.client("ssm").put_parameter(Name="bad", Value="http://user:topsecret@x", Type="SecureString")
    with pytest.raises(ConfigError, match="REDIS_URL") as caught:
        load_settings({"REDIS_URL_PARAMETER": "bad"})
    assert "topsecret" not in str(caught.value)
    with pytest.raises(ConfigError, match="only one"):
        load_settings({"REDIS_URL_PARAMETER": "a", "REDIS_URL_SECRET_ARN": "b"})


def test_handlers_do_not_import_boto3_flask_or_pymongo() -> None:
    code = ("import sys, functions.create_account.app, functions.deposit.app, functions.withdraw.app, "
            "functions.get_account.app, functions.list_events.app; "
            "print(sorted(m for m in ('boto3', 'flask', 'pymongo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
