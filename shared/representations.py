"""The JSON bodies and headers the API returns. Money leaves the service here, as "123.45" strings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.account import DEPOSITED, WITHDRAWN, Account
from shared.consistency import ConsistencyTokens
from shared.events import RecordedEvent
from shared.money import format_minor
from shared.principal import Owner
from shared.queries import AccountRow, Freshness, TransactionRow
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


def command_headers(result: CommandResult, tokens: ConsistencyTokens | None) -> dict[str, str]:
    headers = etag(result.version)
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    if tokens is not None and result.position is not None:
        headers["Consistency-Token"] = tokens.issue(result.position)
    return headers


def freshness_headers(freshness: Freshness, merged: str | None) -> dict[str, str]:
    """How fresh a query's answer is: ``Projection-Lag`` always (seconds), and for an answer that may lack
    writes its tokens covered, ``Preference-Applied: allow-stale`` (RFC 7240: the client's preference was
    applied). ``merged``: the tokens the query was sent, as one."""
    headers = {"Projection-Lag": f"{freshness.lag_seconds:.3f}"}
    if freshness.stale:
        headers["Preference-Applied"] = "allow-stale"
    if merged is not None:
        headers["Consistency-Token"] = merged
    return headers


def account_row_body(row: AccountRow) -> dict[str, Any]:
    return {"id": row.id, "funds": format_minor(row.balance), "version": row.version,
            "opened_at": _iso(row.opened_at), "updated_at": _iso(row.updated_at), "owner": owner_json(row.owner)}


def transaction_body(row: TransactionRow) -> dict[str, Any]:
    return {"version": row.version, "event_id": row.event_id, "type": _KINDS.get(row.type, row.type),
            "amount": format_minor(row.amount), "funds": format_minor(row.balance), "time": _iso(row.at)}


_KINDS = {DEPOSITED: "deposit", WITHDRAWN: "withdrawal"}


def _iso(moment: datetime | None) -> str | None:
    """As the write side writes times: UTC, microseconds, "Z"."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
