"""PUT /accounts/{id}/owner {"subject": ..., "issuer": ...} -> 200: an administrator gives the account an owner.

For accounts opened before owners existed (only administrators reach those), and to hand an account over.
``issuer`` defaults to the administrator's own. Assigning the owner it already has changes nothing.
"""

from __future__ import annotations

from typing import Any

from shared import api, runtime, validation
from shared.account import AssignOwner
from shared.api import Dependencies
from shared.http import ApiRequest, ProxyResponse, json_response, serve
from shared.principal import Owner, require_admin
from shared.representations import command_headers, owner_body


def handle(request: ApiRequest, deps: Dependencies) -> ProxyResponse:
    require_admin(request.principal, "assigning an owner")
    account_id = api.path_account_id(request)
    subject, issuer = api.body_fields(request, deps.settings, "subject", optional=("issuer",))
    owner = Owner(validation.identity_text(issuer if issuer is not None else request.principal.issuer, "issuer"),
                  validation.identity_text(subject, "subject"))
    result = deps.service.execute(account_id, AssignOwner(owner), api.command_context(request, deps.settings))
    return json_response(200, owner_body(result, owner), command_headers(result, deps.tokens))


def lambda_handler(event: dict[str, Any], context: object) -> ProxyResponse:
    return serve(event, handle, runtime.dependencies)
