"""POST /accounts {"id": ...} -> 201 with the new account, owned by the caller."""

from __future__ import annotations

from typing import Any

from shared import api, runtime, validation
from shared.account import OpenAccount
from shared.api import Dependencies
from shared.http import ApiRequest, ProxyResponse, json_response, serve
from shared.principal import owner_for
from shared.representations import command_headers, created_body


def handle(request: ApiRequest, deps: Dependencies) -> ProxyResponse:
    (raw_id,) = api.body_fields(request, deps.settings, "id")
    account_id = validation.account_id(raw_id)
    context = api.command_context(request, deps.settings)
    result = deps.service.execute(account_id, OpenAccount(owner_for(request.principal)), context)
    headers = {**command_headers(result, deps.tokens), "Location": f"/accounts/{account_id}"}
    return json_response(201, created_body(result), headers)


def lambda_handler(event: dict[str, Any], context: object) -> ProxyResponse:
    return serve(event, handle, runtime.dependencies)
