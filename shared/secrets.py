"""Fetch a setting from AWS Secrets Manager or SSM Parameter Store (credentials stay out of plain env vars).

boto3 is imported only when a ``*_SECRET_ARN`` / ``*_PARAMETER`` variable asks for it, so handlers that do
not use secrets keep it out of their cold start. ``config.py`` calls this once per process.
"""

from __future__ import annotations

import json


class SecretError(RuntimeError):
    """The secret or parameter could not be read; the message names what was asked for, not its value."""


def from_secrets_manager(secret_id: str, json_keys: tuple[str, ...]) -> str:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        value = boto3.client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"]
    except (BotoCoreError, ClientError, KeyError) as exc:
        raise SecretError(f"cannot read secret {secret_id}: {type(exc).__name__}") from exc
    return _unwrap(str(value), json_keys, secret_id)


def from_parameter_store(name: str, json_keys: tuple[str, ...]) -> str:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        value = boto3.client("ssm").get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    except (BotoCoreError, ClientError, KeyError) as exc:
        raise SecretError(f"cannot read parameter {name}: {type(exc).__name__}") from exc
    return _unwrap(str(value), json_keys, name)


def _unwrap(value: str, json_keys: tuple[str, ...], source: str) -> str:
    """A secret is either the plain value or a JSON object holding it under one of ``json_keys``."""
    if not value.lstrip().startswith("{"):
        return value.strip()
    try:
        document = json.loads(value)
    except ValueError:
        raise SecretError(f"{source} looks like JSON but does not parse") from None
    for key in json_keys:
        if isinstance(document.get(key), str):
            return str(document[key])
    raise SecretError(f"{source} is a JSON object without any of the keys {', '.join(json_keys)}")
