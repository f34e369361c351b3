"""template.yaml: what SAM makes of it (the auth switch, secrets policies, the layer build method)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode
from samtranslator.translator.transform import transform

ROOT = Path(__file__).resolve().parents[2]


class _NoManagedPolicies:
    def load(self) -> dict[str, str]:
        return {}


def translated(parameters: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    template, errors = decode(str(ROOT / "template.yaml"))
    assert template is not None, errors
    plain: dict[str, Any] = json.loads(json.dumps(template, default=str))
    for resource in plain["Resources"].values():
        for key in ("CodeUri", "ContentUri"):  # sam package would put S3 locations here
            if key in resource.get("Properties", {}):
                resource["Properties"][key] = "s3://bucket/code.zip"
    result: dict[str, Any] = transform(plain, parameters, _NoManagedPolicies())
    return result


def _security(output: dict[str, Any]) -> set[str]:
    [api] = [r for r in output["Resources"].values() if r["Type"] == "AWS::ApiGateway::RestApi"]
    found = set()
    for item in api["Properties"]["Body"]["paths"].values():
        for operation in item.values():
            assert "x-amazon-apigateway-integration" in operation
            found |= {json.dumps(operation.get("security"))}
    return found


def test_api_is_open_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _security(translated({}, monkeypatch)) == {"null"}


def test_iam_auth_is_one_parameter_away(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _security(translated({"ApiAuth": "AWS_IAM"}, monkeypatch)) == {'[{"AWS_IAM": []}]'}


def test_layer_keeps_the_package_folder_and_functions_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    template, _ = decode(str(ROOT / "template.yaml"))
    assert template is not None
    assert template["Resources"]["SharedLayer"]["Metadata"]["BuildMethod"] == "makefile"
    assert template["Globals"]["Function"]["Tracing"] == "Active"
    output = translated({"RedisUrlSecretArn": "arn:aws:secretsmanager:eu-west-1:1:secret:x"}, monkeypatch)
    role = output["Resources"]["DepositFunctionRole"]["Properties"]["Policies"]
    assert "secretsmanager:GetSecretValue" in json.dumps(role)
