"""template.yaml: what SAM makes of it (the JWT authorizer on every route, secrets policies, the layer build)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode
from samtranslator.translator.transform import transform

from gateway.routes import ROUTES
from projector import emf_reporter
from projector.settings import ProjectorSettings, load_projector_settings
from shared.config import load_settings

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


AUTH = {"AuthIssuer": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_EXAMPLE", "AuthAudience": "client-1"}


def _api(output: dict[str, Any]) -> dict[str, Any]:
    [api] = [r for r in output["Resources"].values() if r["Type"] == "AWS::ApiGatewayV2::Api"]
    body: dict[str, Any] = api["Properties"]["Body"]
    return body


def test_every_route_sits_behind_the_jwt_authorizer_with_its_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    body = _api(translated(AUTH, monkeypatch))
    scopes = {}
    for path, item in body["paths"].items():
        for method, operation in item.items():
            assert operation["x-amazon-apigateway-integration"]["payloadFormatVersion"] == "1.0"
            [requirement] = operation["security"]
            [(authorizer, [scope])] = requirement.items()
            assert authorizer == "OidcAuthorizer"
            scopes[method.upper(), path] = scope["Fn::Sub"]
    assert scopes == {(r.method, r.path): "${AuthScopePrefix}" + ("accounts:admin" if r.path.endswith("/owner") else
                                                                  "accounts:read" if r.method == "GET" else
                                                                  "accounts:write")
                      for r in ROUTES}
    authorizer = body["components"]["securitySchemes"]["OidcAuthorizer"]["x-amazon-apigateway-authorizer"]
    assert authorizer["type"] == "jwt"
    assert authorizer["jwtConfiguration"] == {"issuer": {"Ref": "AuthIssuer"}, "audience": [{"Ref": "AuthAudience"}]}
    assert authorizer["identitySource"] == "$request.header.Authorization"


def test_the_functions_verify_tokens_of_the_same_issuer_themselves() -> None:
    template, _ = decode(str(ROOT / "template.yaml"))
    assert template is not None
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["AUTH_ISSUER"] == {"Ref": "AuthIssuer"}
    assert variables["AUTH_AUDIENCE"] == {"Ref": "AuthAudience"}
    assert "AUTH_MODE" not in variables  # no way to deploy without authentication
    parameters = template["Parameters"]
    assert "Default" not in parameters["AuthIssuer"] and "Default" not in parameters["AuthAudience"]


def test_layer_keeps_the_package_folder_and_functions_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    template, _ = decode(str(ROOT / "template.yaml"))
    assert template is not None
    assert template["Resources"]["SharedLayer"]["Metadata"]["BuildMethod"] == "makefile"
    assert template["Globals"]["Function"]["Tracing"] == "Active"
    output = translated({**AUTH, "RedisUrlSecretArn": "arn:aws:secretsmanager:eu-west-1:1:secret:x"}, monkeypatch)
    role = output["Resources"]["DepositFunctionRole"]["Properties"]["Policies"]
    assert "secretsmanager:GetSecretValue" in json.dumps(role)


PROJECTOR = {**AUTH, "ProjectorImage": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/ledgerstream-projector:1",
             "ProjectorSubnetIds": "subnet-0a,subnet-0b", "ProjectorSecurityGroupIds": "sg-0a",
             "MongoDbUriSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:mongo-uri-AbCdEf"}


def _resource(output: dict[str, Any], kind: str) -> dict[str, Any]:
    [found] = [r for r in output["Resources"].values() if r["Type"] == kind]
    properties: dict[str, Any] = found["Properties"]
    return properties


def test_the_projector_runs_on_fargate_with_the_functions_redis_and_its_own_secret(
        monkeypatch: pytest.MonkeyPatch) -> None:
    output = translated(PROJECTOR, monkeypatch)
    [container] = _resource(output, "AWS::ECS::TaskDefinition")["ContainerDefinitions"]
    env = {item["Name"]: item["Value"] for item in container["Environment"] if "Name" in item}
    functions = output["Resources"]["DepositFunction"]["Properties"]["Environment"]["Variables"]
    for name in ("REDIS_URL", "REDIS_CLUSTER", "LEDGER_PARTITIONS", "METRICS_NAMESPACE"):
        assert env[name] == functions[name], name  # one event store, one namespace, for API and projector
    assert env["MONGODB_URI_SECRET_ARN"] == {"Ref": "MongoDbUriSecretArn"}
    assert env["METRICS_FORMAT"] == "EMF"
    health = " ".join(container["HealthCheck"]["Command"])
    assert f"127.0.0.1:{ProjectorSettings().health_port}/healthz" in health
    assert container["PortMappings"] == [{"ContainerPort": ProjectorSettings().health_port, "Protocol": "tcp"}]
    # The settings the task is given are ones the projector reads and accepts.
    plain = {name: value for name, value in env.items() if isinstance(value, str)}
    load_settings(plain)
    load_projector_settings({**plain, "MONGODB_URI": "mongodb://mongo:27017"})
    role = output["Resources"]["ProjectorTaskRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    assert role[0]["Action"] == "secretsmanager:GetSecretValue"
    assert {"Ref": "MongoDbUriSecretArn"} in role[0]["Resource"]
    service = _resource(output, "AWS::ECS::Service")
    assert service["LaunchType"] == "FARGATE"
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"


def test_the_archive_bucket_is_written_by_the_projector_alone_and_read_by_every_function(
        monkeypatch: pytest.MonkeyPatch) -> None:
    output = translated(PROJECTOR, monkeypatch)
    resources = output["Resources"]
    bucket = resources["ArchiveBucket"]
    assert bucket["DeletionPolicy"] == "Retain"
    assert bucket["Properties"]["VersioningConfiguration"] == {"Status": "Enabled"}
    assert all(bucket["Properties"]["PublicAccessBlockConfiguration"].values())
    [container] = _resource(output, "AWS::ECS::TaskDefinition")["ContainerDefinitions"]
    env = {item["Name"]: item["Value"] for item in container["Environment"] if "Name" in item}
    functions = [r for r in resources.values() if r["Type"] == "AWS::Lambda::Function"]
    assert functions
    for function in functions:
        variables = function["Properties"]["Environment"]["Variables"]
        assert variables["ARCHIVE_URL"] == env["ARCHIVE_URL"]  # one archive for every reader and the writer
        assert variables["ARCHIVE_AFTER_EVENTS"] == env["ARCHIVE_AFTER_EVENTS"]
    writers = [name for name, r in resources.items() if r["Type"] == "AWS::IAM::Role"
               and "s3:PutObject" in json.dumps(r["Properties"].get("Policies", []))]
    assert writers == ["ProjectorTaskRole"]
    readers = [name for name, r in resources.items() if r["Type"] == "AWS::IAM::Role"
               and "s3:GetObject" in json.dumps(r["Properties"].get("Policies", []))]
    assert len(readers) == len(functions) + 1


def test_the_lag_alarm_watches_what_the_projector_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    output = translated(PROJECTOR, monkeypatch)
    alarm = _resource(output, "AWS::CloudWatch::Alarm")
    [container] = _resource(output, "AWS::ECS::TaskDefinition")["ContainerDefinitions"]
    env = {item["Name"]: item["Value"] for item in container["Environment"] if "Name" in item}
    assert alarm["MetricName"] == emf_reporter.LAG_SECONDS
    assert alarm["Namespace"] == env["METRICS_NAMESPACE"]
    assert (alarm["Statistic"], alarm["TreatMissingData"]) == ("Maximum", "breaching")
    assert alarm["Threshold"] == {"Ref": "ProjectionLagAlarmSeconds"}
