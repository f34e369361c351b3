"""What every route shares: its dependencies, and the request-to-command helpers that keep handlers short."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shared import validation
from shared.account import Deposit, Withdraw
from shared.config import ConfigError, Settings
from shared.consistency import ConsistencyTokens, LogPosition
from shared.errors import IdempotencyKeyRequired
from shared.http import ApiRequest, ProxyResponse, json_response
from shared.metrics import NO_METRICS, Metrics
from shared.money import parse_amount
from shared.principal import Authenticator
from shared.queries import Consistency, QueryService
from shared.representations import command_headers, movement_body
from shared.service import AccountService, CommandContext


@dataclass(frozen=True, slots=True)
class Dependencies:
    """What a route needs, handed in by its ``lambda_handler``: built once per process by ``runtime.py``,
    or by a test around an in-memory store.

    The service is built when a route first asks for it, after the request was validated: a request that
    is wrong gets its 400 even while Redis is unreachable (building the client connects to it)."""

    settings: Settings
    service_provider: Callable[[], AccountService]
    authenticator: Authenticator
    metrics: Metrics = NO_METRICS
    #: Signs the consistency token every write answers with (``runtime`` always gives one; a test may not).
    tokens: ConsistencyTokens | None = None
    #: The read model's queries, built on the first query (it connects to MongoDB).
    queries_provider: Callable[[], QueryService] | None = None

    @property
    def service(self) -> AccountService:
        return self.service_provider()

    @property
    def queries(self) -> QueryService:
        if self.queries_provider is None:
            raise ConfigError("this process serves no queries: no read model is configured")
        return self.queries_provider()


def body_fields(request: ApiRequest, settings: Settings, *names: str, optional: tuple[str, ...] = ()) -> list[object]:
    body = request.json_object(settings.max_body_bytes)
    return validation.fields(body, names, optional)


def path_account_id(request: ApiRequest) -> str:
    return validation.account_id(request.path_parameters.get("id"))


def command_context(request: ApiRequest, settings: Settings) -> CommandContext:
    key = validation.idempotency_key(request.header("idempotency-key"))
    if key is None and settings.require_idempotency_key:
        raise IdempotencyKeyRequired(
            "send an Idempotency-Key header (any unique string, a UUID say) with every POST: if the answer is "
            "lost, retrying with the same key is safe, and without one nothing can tell a retry from a new request")
    return CommandContext(
        request_id=request.request_id,
        actor=request.principal,
        correlation_id=validation.correlation_id(request.header("x-correlation-id")),
        idempotency_key=key,
        if_match=validation.if_match(request.header("if-match")),
    )


def move_money(request: ApiRequest, deps: Dependencies, command: type[Deposit] | type[Withdraw]) -> ProxyResponse:
    """A deposit or a withdrawal: ``{"amount": ...}`` on ``/accounts/{id}/...`` -> 200 with the new balance."""
    account_id = path_account_id(request)
    (amount,) = body_fields(request, deps.settings, "amount")
    decided, context = command(parse_amount(amount)), command_context(request, deps.settings)
    result = deps.service.execute(account_id, decided, context)  # only now, with the request valid
    return json_response(200, movement_body(result), command_headers(result, deps.tokens))


def consistency(request: ApiRequest, deps: Dependencies) -> tuple[Consistency, str | None]:
    """What a query asks of the read model's freshness (its ``Consistency-Token`` headers, merged, and
    ``Prefer: allow-stale``), and the merged token to answer with (None when it sent none)."""
    wanted: dict[int, LogPosition] = {}
    merged = None
    values = request.header_values("consistency-token")
    if values:
        if deps.tokens is None:
            raise ConfigError("consistency tokens cannot be read: no key is configured")
        wanted = deps.tokens.read(values)
        merged = deps.tokens.issue(wanted) if wanted else None
    preferences = (item.split(";")[0].strip() for value in request.header_values("prefer")
                   for item in value.lower().split(","))
    return Consistency(wanted, allow_stale="allow-stale" in preferences), merged
