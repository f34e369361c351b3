"""Build API Gateway proxy events from the sample events in ``events/`` and call handlers with them."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from functions.assign_owner import app as assign_owner
from functions.create_account import app as create_account
from functions.deposit import app as deposit
from functions.get_account import app as get_account
from functions.list_accounts import app as list_accounts
from functions.list_events import app as list_events
from functions.statement import app as statement
from functions.withdraw import app as withdraw
from shared.api import Dependencies
from shared.http import serve

EVENTS_DIR = Path(__file__).resolve().parents[2] / "events"
ROUTES = {
    "create_account": create_account,
    "deposit": deposit,
    "withdraw": withdraw,
    "get_account": get_account,
    "list_events": list_events,
    "assign_owner": assign_owner,
    "list_accounts": list_accounts,
    "statement": statement,
}
#: Each route's Lambda entry point, wired to this process's real dependencies (``shared.runtime``).
HANDLERS: dict[str, Callable[[dict[str, Any], object], dict[str, Any]]] = {
    name: module.lambda_handler for name, module in ROUTES.items()}


@cache
def _sample(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS_DIR / f"{name}.json").read_text())
    return loaded


def sample(name: str) -> dict[str, Any]:
    return copy.deepcopy(_sample(name))


def make_event(name: str, account_id: str | None = None, body: object = None, *, raw_body: str | None = None,
               headers: dict[str, str] | None = None, query: dict[str, str] | None = None,
               drop_headers: tuple[str, ...] = ("Idempotency-Key",)) -> dict[str, Any]:
    """A sample event for route ``name`` with its account id, body, headers and query replaced.

    The samples carry an Idempotency-Key; it is dropped unless ``headers`` brings one, so tests opt in.
    """
    event = sample(name)
    if account_id is not None:
        if event["pathParameters"]:
            sample_id = event["pathParameters"]["id"]
            event["pathParameters"]["id"] = account_id
            event["path"] = event["path"].replace(f"/{sample_id}", f"/{account_id}")
        elif body is None and raw_body is None:
            body = {"id": account_id}
    if raw_body is not None:
        event["body"] = raw_body
    elif body is not None:
        event["body"] = json.dumps(body)
    merged = {k: v for k, v in event["headers"].items() if k not in drop_headers}
    merged.update(headers or {})
    event["headers"] = merged
    event["multiValueHeaders"] = {k: [v] for k, v in merged.items()}
    if query is not None:
        event["queryStringParameters"] = query or None
    event["requestContext"]["requestId"] = str(uuid.uuid4())
    return event


def call(name: str, account_id: str | None = None, body: object = None, **options: Any) -> dict[str, Any]:
    return HANDLERS[name](make_event(name, account_id, body, **options), None)


def body_of(response: dict[str, Any]) -> Any:
    return json.loads(response["body"])


class Api:
    """Calls routes as their lambda_handlers do, but on the given dependencies (an in-memory store, say)."""

    def __init__(self, dependencies: Callable[[], Dependencies]) -> None:
        self.dependencies = dependencies

    def send(self, name: str, event: dict[str, Any]) -> dict[str, Any]:
        response: dict[str, Any] = serve(event, ROUTES[name].handle, self.dependencies)
        return response

    def call(self, name: str, account_id: str | None = None, body: object = None, **options: Any) -> dict[str, Any]:
        return self.send(name, make_event(name, account_id, body, **options))
