"""Who reaches which account (shared/principal.py, enforced by the service): owners, administrators,
delegated tokens, strangers, accounts from before owners existed; the audit trail; and that nothing a
stranger is told (status, body, replayed answer) differs from what a missing account answers."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from shared.account import AssignOwner, Deposit, OpenAccount, Withdraw
from shared.errors import (
    AccountAlreadyExists,
    AccountNotFound,
    IdempotencyKeyReused,
    InsufficientScope,
    InvalidToken,
    MissingToken,
    PreconditionFailed,
)
from shared.preconditions import IfMatch
from shared.principal import ADMIN, ANONYMOUS, READ, WRITE, Owner, Principal
from shared.service import AccountService, CommandContext
from tests.fakes import InMemoryEventStore
from tests.support.apigw import Api, body_of
from tests.support.memory import memory_dependencies

ISSUER = "https://issuer.test"
ALICE = Principal.of(ISSUER, "alice", frozenset({READ, WRITE}), token_id="t-1")
BOB = Principal.of(ISSUER, "bob", frozenset({READ, WRITE}))
MALLORY_ELSEWHERE = Principal.of("https://other-issuer.test", "alice", frozenset({READ, WRITE}))
ADMINISTRATOR = Principal.of(ISSUER, "ops", frozenset({READ, WRITE, ADMIN}), client_id="console")
DELEGATED = Principal.of(ISSUER, "processor", frozenset({READ, WRITE}), account="acc")
DELEGATED_ELSEWHERE = Principal.of(ISSUER, "processor", frozenset({READ, WRITE}), account="other")
NARROWED_ADMIN = Principal.of(ISSUER, "ops", frozenset({READ, WRITE, ADMIN}), account="other")


@pytest.fixture
def store() -> InMemoryEventStore:
    return InMemoryEventStore()


@pytest.fixture
def service(store: InMemoryEventStore) -> AccountService:
    return AccountService(store, snapshot_interval=2, sleep=lambda _: None)


def ctx(actor: Principal, key: str | None = None, if_match: IfMatch | None = None) -> CommandContext:
    return CommandContext("req", actor, idempotency_key=key, if_match=if_match)


def opened(service: AccountService, owner: Principal = ALICE, funds: int = 1000) -> None:
    service.execute("acc", OpenAccount(owner.owner), ctx(owner, "open"))
    service.execute("acc", Deposit(funds), ctx(owner, "fund"))


def test_the_opener_owns_the_account_and_every_event_names_its_actor(service: AccountService,
                                                                     store: InMemoryEventStore) -> None:
    opened(service)
    assert service.get("acc", ALICE).owner == Owner(ISSUER, "alice")
    assert store.streams["acc"][0].data == {"owner": {"iss": ISSUER, "sub": "alice"}}
    actors = [event.metadata["actor"] for event in store.streams["acc"]]
    assert actors == [{"iss": ISSUER, "sub": "alice", "jti": "t-1"}] * 2


@pytest.mark.parametrize("caller", [ALICE, ADMINISTRATOR, DELEGATED], ids=["owner", "admin", "delegated"])
def test_who_reaches_an_account(service: AccountService, caller: Principal) -> None:
    opened(service)
    assert service.get("acc", caller).balance == 1000
    assert service.execute("acc", Withdraw(1), ctx(caller)).balance == 999
    assert [e.version for e in service.events("acc", 0, 10, caller)] == [1, 2, 3]


@pytest.mark.parametrize("caller", [BOB, MALLORY_ELSEWHERE, DELEGATED_ELSEWHERE, NARROWED_ADMIN],
                         ids=["stranger", "same subject, other issuer", "delegated elsewhere", "narrowed admin"])
def test_who_does_not_is_told_the_account_does_not_exist(service: AccountService, store: InMemoryEventStore,
                                                        caller: Principal) -> None:
    opened(service)
    missing: list[str] = []
    for account_id in ("acc", "nope"):
        with pytest.raises(AccountNotFound) as got:
            service.get(account_id, caller)
        missing.append(got.value.detail.replace(f" {account_id} ", " ID "))
        with pytest.raises(AccountNotFound):
            service.events(account_id, 0, 10, caller)
        for command in (Deposit(5), Withdraw(5)):
            with pytest.raises(AccountNotFound):
                service.execute(account_id, command, ctx(caller))
        with pytest.raises(PreconditionFailed, match="does not exist"):  # If-Match: as for a missing account
            service.execute(account_id, Deposit(5), ctx(caller, if_match=IfMatch(any_version=True)))
    assert missing[0] == missing[1]
    assert len(store.streams["acc"]) == 2


def test_a_stranger_never_gets_the_owners_replayed_answer(service: AccountService) -> None:
    opened(service)
    with pytest.raises(AccountNotFound):  # the owner's key "fund", same body: still a stranger's 404
        service.execute("acc", Deposit(1000), ctx(BOB, "fund"))
    with pytest.raises(AccountAlreadyExists):  # the owner's key "open": a taken id, not the owner's 201
        service.execute("acc", OpenAccount(BOB.owner), ctx(BOB, "open"))


def test_another_caller_reusing_a_key_is_refused_not_replayed(service: AccountService) -> None:
    opened(service)
    assert service.execute("acc", Deposit(1000), ctx(ALICE, "fund")).replayed
    with pytest.raises(IdempotencyKeyReused):
        service.execute("acc", Deposit(1000), ctx(ADMINISTRATOR, "fund"))


def test_a_delegated_token_cannot_open_accounts(service: AccountService) -> None:
    with pytest.raises(InsufficientScope, match="acct"):
        service.execute("its-own", OpenAccount(DELEGATED.owner), ctx(DELEGATED))


def test_accounts_from_before_owners_are_for_administrators_until_one_is_assigned(
        service: AccountService, store: InMemoryEventStore) -> None:
    service.execute("acc", OpenAccount(), ctx(ANONYMOUS))  # as AUTH_MODE=none opened it
    with pytest.raises(AccountNotFound):
        service.get("acc", ALICE)
    assert service.get("acc", ADMINISTRATOR).owner is None
    assigned = service.execute("acc", AssignOwner(ALICE.owner), ctx(ADMINISTRATOR))
    assert assigned.version == 2
    assert service.get("acc", ALICE).owner == ALICE.owner
    again = service.execute("acc", AssignOwner(ALICE.owner), ctx(ADMINISTRATOR))
    assert again.version == 2 and len(store.streams["acc"]) == 2  # the same owner again: nothing appended
    handed_over = service.execute("acc", AssignOwner(BOB.owner), ctx(ADMINISTRATOR))
    assert handed_over.version == 3
    with pytest.raises(AccountNotFound):
        service.get("acc", ALICE)
    assert store.streams["acc"][-1].metadata["actor"] == {"iss": ISSUER, "sub": "ops", "client_id": "console"}


def test_the_owner_survives_snapshots(service: AccountService, store: InMemoryEventStore) -> None:
    opened(service)
    for _ in range(5):
        service.execute("acc", Deposit(1), ctx(ALICE))
    assert store.snapshots["acc"].owner == ALICE.owner
    with pytest.raises(AccountNotFound):
        service.execute("acc", Deposit(1), ctx(BOB))


class Tokens:
    """An authenticator that knows a few bearer tokens by name, for the routes below."""

    principals: ClassVar[dict[str, Principal]] = {"alice": ALICE, "bob": BOB, "ops": ADMINISTRATOR,
                                                   "reader": ALICE._replace(scopes=frozenset({READ}))}

    def authenticate(self, authorization: str | None) -> Principal:
        if authorization is None:
            raise MissingToken("send a bearer token")
        principal = self.principals.get(authorization.removeprefix("Bearer "))
        if principal is None:
            raise InvalidToken("the token is not valid")
        return principal


@pytest.fixture
def api(store: InMemoryEventStore) -> Api:
    dependencies = memory_dependencies(store, authenticator=Tokens())
    return Api(lambda: dependencies)


def as_(name: str) -> dict[str, Any]:
    return {"headers": {"Authorization": f"Bearer {name}"}}


def test_serve_asks_for_the_scope_of_the_method(api: Api) -> None:
    assert api.call("create_account", "acc", **as_("alice"))["statusCode"] == 201
    read_only = api.call("deposit", "acc", {"amount": 1}, **as_("reader"))
    assert (read_only["statusCode"], body_of(read_only)["code"]) == (403, "insufficient-scope")
    assert read_only["headers"]["WWW-Authenticate"] == 'Bearer error="insufficient_scope", scope="accounts:write"'
    assert api.call("get_account", "acc", **as_("reader"))["statusCode"] == 200


def test_serve_refuses_before_anything_else_runs(api: Api, store: InMemoryEventStore) -> None:
    missing = api.call("create_account", raw_body="{not json")
    assert (missing["statusCode"], missing["headers"]["WWW-Authenticate"]) == (401, "Bearer")
    assert body_of(missing)["code"] == "unauthenticated"
    refused = api.call("create_account", "acc", headers={"Authorization": "Bearer nonsense"})
    assert (refused["statusCode"], refused["headers"]["WWW-Authenticate"]) == (401, 'Bearer error="invalid_token"')
    assert body_of(refused)["code"] == "invalid-token"
    assert store.streams == {}


def test_a_strangers_answer_is_a_missing_accounts_answer(api: Api) -> None:
    api.call("create_account", "acc", **as_("alice"))
    for route, body in (("get_account", None), ("list_events", None), ("deposit", {"amount": 1}),
                        ("withdraw", {"amount": 1})):
        foreign = api.call(route, "acc", body, **as_("bob"))
        missing = api.call(route, "nope", body, **as_("bob"))
        shown = body_of(foreign)
        expected = body_of(missing)
        for answer in (shown, expected):
            answer.pop("request_id")
            answer["instance"] = answer["instance"].replace("/acc", "/ID").replace("/nope", "/ID")
            answer["detail"] = answer["detail"].replace(" acc ", " ID ").replace(" nope ", " ID ")
        assert (foreign["statusCode"], shown) == (missing["statusCode"], expected) == (404, expected), route


def test_assigning_an_owner_is_for_administrators(api: Api) -> None:
    api.call("create_account", "acc", **as_("alice"))
    denied = api.call("assign_owner", "acc", {"subject": "bob"}, **as_("alice"))
    assert (denied["statusCode"], body_of(denied)["code"]) == (403, "insufficient-scope")
    given = api.call("assign_owner", "acc", {"subject": "bob"}, **as_("ops"))
    assert body_of(given) == {"id": "acc", "owner": {"issuer": ISSUER, "subject": "bob"}, "version": 2}
    assert body_of(api.call("get_account", "acc", **as_("bob")))["owner"] == {"issuer": ISSUER, "subject": "bob"}
    assert api.call("get_account", "acc", **as_("alice"))["statusCode"] == 404
    bad = api.call("assign_owner", "acc", {"subject": "has space"}, **as_("ops"))
    assert (bad["statusCode"], body_of(bad)["code"]) == (400, "invalid-field")
