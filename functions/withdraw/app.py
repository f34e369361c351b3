"""POST /accounts/{id}/withdrawals {"amount": ...} -> 200 with the new balance."""

from __future__ import annotations

from typing import Any

from shared import api, runtime
from shared.account import Withdraw
from shared.api import Dependencies
from shared.http import ApiRequest, ProxyResponse, json_response, serve
from shared.money import parse_amount
from shared.representations import command_headers, movement_body


def handle(request: ApiRequest, deps: Dependencies) -> ProxyResponse:
    account_id = api.path_account_id(request)
    (amount,) = api.body_fields(request, deps.settings, "amount")
    result = deps.service.execute(account_id, Withdraw(parse_amount(amount)), api.command_context(request))
    return json_response(200, movement_body(result), command_headers(result))


def lambda_handler(event: dict[str, Any], context: object) -> ProxyResponse:
    return serve(event, handle, runtime.dependencies)
