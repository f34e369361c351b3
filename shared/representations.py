"""The JSON bodies and headers the API returns. Money leaves the service here, as "123.45" strings."""

from __future__ import annotations

from typing import Any

from shared.account import Account
from shared.events import RecordedEvent
from shared.money import format_minor
from shared.principal import Owner
from shared.service import CommandResult


def etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


def account_body(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "funds": format_minor(account.balance),
        "version": account.version,
        "opened_at": account.opened_at,
        "updated_at": account.updated_at,
        "owner": owner_json(account.owner),
    }


def owner_json(owner: Owner | None) -> dict[str, str] | None:
    return None if owner is None else {"issuer": owner.issuer, "subject": owner.subject}


def owner_body(result: CommandResult, owner: Owner) -> dict[str, Any]:
    return {"id": result.account_id, "owner": owner_json(owner), "version": result.version}


def created_body(result: CommandResult) -> dict[str, Any]:
    return {"id": result.account_id, "funds": format_minor(result.balance), "version": result.version}


def movement_body(result: CommandResult) -> dict[str, Any]:
    return {
        "id": result.account_id,
        "amount": format_minor(result.amount or 0),
        "funds": format_minor(result.balance),
        "version": result.version,
    }


def command_headers(result: CommandResult) -> dict[str, str]:
    headers = etag(result.version)
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return headers


def event_body(event: RecordedEvent) -> dict[str, Any]:
    data = dict(event.data)
    if "amount_minor" in data:
        data["amount"] = format_minor(data.pop("amount_minor"))
    return {
        "event_id": event.event_id,
        "type": event.type,
        "version": event.version,
        "time": event.recorded_at,
        "schema": event.schema,
        "data": data,
        "metadata": event.metadata,
    }
