"""GET /accounts/{id}/events?after=<version>&limit=<n> -> 200 with one page of the account's events."""

from __future__ import annotations

from typing import Any

from shared import api, runtime, validation
from shared.api import Dependencies
from shared.http import ApiRequest, ProxyResponse, json_response, serve
from shared.representations import event_body


def handle(request: ApiRequest, deps: Dependencies) -> ProxyResponse:
    account_id = api.path_account_id(request)
    after, limit = validation.page(request.query, request.query_repeats)
    events = deps.service.events(account_id, after, limit, request.principal)
    next_after = events[-1].version if len(events) == limit else None
    body = {"id": account_id, "events": [event_body(e) for e in events], "next_after": next_after}
    return json_response(200, body)


def lambda_handler(event: dict[str, Any], context: object) -> ProxyResponse:
    return serve(event, handle, runtime.dependencies)
