"""POST /accounts/{id}/withdrawals {"amount": ...} -> 200 with the new balance."""

from __future__ import annotations

from typing import Any

from shared import api, runtime
from shared.account import Withdraw
from shared.api import Dependencies
from shared.http import ApiRequest, ProxyResponse, serve


def handle(request: ApiRequest, deps: Dependencies) -> ProxyResponse:
    return api.move_money(request, deps, Withdraw)


def lambda_handler(event: dict[str, Any], context: object) -> ProxyResponse:
    return serve(event, handle, runtime.dependencies)
