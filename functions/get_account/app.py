"""GET /accounts/{id} -> 200 with the account rebuilt from its stream (strongly consistent)."""

from __future__ import annotations

from typing import Any

from shared import api, runtime
from shared.api import Dependencies
from shared.http import ApiRequest, ProxyResponse, json_response, serve
from shared.representations import account_body, etag


def handle(request: ApiRequest, deps: Dependencies) -> ProxyResponse:
    account_id = api.path_account_id(request)
    account = deps.service.get(account_id, request.principal)
    return json_response(200, account_body(account), etag(account.version))


def lambda_handler(event: dict[str, Any], context: object) -> ProxyResponse:
    return serve(event, handle, runtime.dependencies)
