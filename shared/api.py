"""Request-to-command helpers shared by the route handlers, so each handler stays a few lines."""

from __future__ import annotations

from shared import runtime, validation
from shared.http import ApiRequest
from shared.service import CommandContext


def body_fields(request: ApiRequest, *names: str) -> list[object]:
    body = request.json_object(runtime.settings().max_body_bytes)
    return validation.fields(body, names)


def path_account_id(request: ApiRequest) -> str:
    return validation.account_id(request.path_parameters.get("id"))


def command_context(request: ApiRequest) -> CommandContext:
    return CommandContext(
        request_id=request.request_id,
        correlation_id=validation.correlation_id(request.header("x-correlation-id")),
        idempotency_key=validation.idempotency_key(request.header("idempotency-key")),
        if_match=validation.if_match(request.header("if-match")),
    )
