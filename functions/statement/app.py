"""GET /accounts/{id}/statement?from=&to= -> 200 with the account's transactions in ``[from, to)``, each with
the balance after it, and the opening and closing balances; from the read model, one page at a time
(``limit``, ``cursor``). A query with a ``Consistency-Token`` is answered only once the read model has every
write the token covers."""

from __future__ import annotations

from typing import Any

from shared import api, runtime, validation
from shared.api import Dependencies
from shared.errors import InvalidQuery
from shared.http import ApiRequest, ProxyResponse, json_response, serve
from shared.money import format_minor
from shared.representations import freshness_headers, transaction_body

_PARAMETERS = ("from", "to", "limit", "cursor")


def handle(request: ApiRequest, deps: Dependencies) -> ProxyResponse:
    account_id = api.path_account_id(request)
    query = validation.query(request.query, request.query_repeats, _PARAMETERS)
    start, end = validation.moment(query, "from"), validation.moment(query, "to")
    if start is not None and end is not None and start >= end:
        raise InvalidQuery("from must be earlier than to")
    limit, after = validation.limit(query), validation.statement_cursor(query)
    consistency, merged = api.consistency(request, deps)
    statement, freshness = deps.queries.statement(account_id, request.principal, start, end, after, limit,
                                                  consistency)
    last = statement.rows[-1] if statement.more else None
    body = {
        "id": account_id,
        "from": query.get("from"),
        "to": query.get("to"),
        "opening_funds": format_minor(statement.opening),
        "closing_funds": format_minor(statement.closing),
        "transactions": [transaction_body(row) for row in statement.rows],
        "next_cursor": None if last is None else validation.statement_cursor_of(last.at, last.version),
    }
    return json_response(200, body, freshness_headers(freshness, merged))


def lambda_handler(event: dict[str, Any], context: object) -> ProxyResponse:
    return serve(event, handle, runtime.dependencies)
