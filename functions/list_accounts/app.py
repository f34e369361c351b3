"""GET /accounts -> 200 with one page of the caller's accounts, from the read model.

Query: ``min_funds`` / ``max_funds`` (decimal strings), ``limit``, ``cursor`` (from ``next_cursor``); an
administrator may add ``owner`` (a subject) and ``owner_issuer`` (default: its own issuer). A query with a
``Consistency-Token`` is answered only once the read model has every write the token covers.
"""

from __future__ import annotations

from typing import Any

from shared import api, runtime, validation
from shared.api import Dependencies
from shared.http import ApiRequest, ProxyResponse, json_response, serve
from shared.money import parse_funds
from shared.principal import Owner, require_admin
from shared.representations import account_row_body, freshness_headers

_PARAMETERS = ("min_funds", "max_funds", "owner", "owner_issuer", "limit", "cursor")


def handle(request: ApiRequest, deps: Dependencies) -> ProxyResponse:
    query = validation.query(request.query, request.query_repeats, _PARAMETERS)
    owner = None
    if "owner" in query or "owner_issuer" in query:
        require_admin(request.principal, "listing another owner's accounts")
        owner = Owner(validation.identity_text(query.get("owner_issuer", request.principal.issuer), "owner_issuer"),
                      validation.identity_text(query.get("owner"), "owner"))
    low, high = (parse_funds(query[name], name) if name in query else None for name in ("min_funds", "max_funds"))
    limit, after = validation.limit(query), validation.account_cursor(query)
    consistency, merged = api.consistency(request, deps)
    page, freshness = deps.queries.accounts(request.principal, owner, low, high, after, limit, consistency)
    body = {"accounts": [account_row_body(row) for row in page.rows],
            "next_cursor": validation.encode_cursor(page.rows[-1].id) if page.more else None}
    return json_response(200, body, freshness_headers(freshness, merged))


def lambda_handler(event: dict[str, Any], context: object) -> ProxyResponse:
    return serve(event, handle, runtime.dependencies)
