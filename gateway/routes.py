"""The route table of the HTTP gateway. ``tests/unit/test_template_routes.py`` pins it to template.yaml,
so the gateway and API Gateway can never disagree about which handler serves which path."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GatewayRoute:
    method: str
    path: str  # API Gateway syntax: /accounts/{id}
    function: str  # the function's logical id in template.yaml
    module: str  # the handler module: its `handle` serves the route, as its lambda_handler does on Lambda

    @property
    def flask_rule(self) -> str:
        return self.path.replace("{", "<").replace("}", ">")


ROUTES: tuple[GatewayRoute, ...] = (
    GatewayRoute("POST", "/accounts", "CreateAccountFunction", "functions.create_account.app"),
    GatewayRoute("GET", "/accounts", "ListAccountsFunction", "functions.list_accounts.app"),
    GatewayRoute("GET", "/accounts/{id}", "GetAccountFunction", "functions.get_account.app"),
    GatewayRoute("POST", "/accounts/{id}/deposits", "DepositFunction", "functions.deposit.app"),
    GatewayRoute("POST", "/accounts/{id}/withdrawals", "WithdrawFunction", "functions.withdraw.app"),
    GatewayRoute("GET", "/accounts/{id}/events", "ListEventsFunction", "functions.list_events.app"),
    GatewayRoute("GET", "/accounts/{id}/statement", "StatementFunction", "functions.statement.app"),
    GatewayRoute("PUT", "/accounts/{id}/owner", "AssignOwnerFunction", "functions.assign_owner.app"),
)
