"""Who is calling, and which accounts they reach. Pure: no I/O (``auth.py`` turns a bearer token into a
``Principal``; the service asks ``authorize`` before it replays, decides or reads anything).

Two questions, kept apart:

* **What** a caller may do: the token's scopes. ``accounts:read`` for the GET routes, ``accounts:write`` for
  the others, checked once per request by ``http.serve`` from the method, so no route can forget it.
* **Which** accounts: its own (the owner recorded in the account's history), every account with
  ``accounts:admin``, or exactly one with a delegated token, whose ``acct`` claim names it (the way Plaid's
  processor tokens and Stripe's restricted keys narrow access). A delegated token is narrowed even when it
  also carries ``accounts:admin``.

A caller that does not reach an account is told exactly what a caller asking for a missing one is told, so
account ids cannot be probed.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from shared.errors import AccountAlreadyExists, AccountNotFound, InsufficientScope

READ = "accounts:read"
WRITE = "accounts:write"
ADMIN = "accounts:admin"
ALL_SCOPES = frozenset({READ, WRITE, ADMIN})


class Owner(NamedTuple):
    """An account's owner: a subject of an issuer (subjects are unique only within their issuer)."""

    issuer: str
    subject: str

    def to_json(self) -> dict[str, str]:
        return {"iss": self.issuer, "sub": self.subject}


class Principal(NamedTuple):
    """The caller of one request, as its verified token says. Made once per token (``of``) and reused for
    every request that brings the same token, so what requests ask of it is kept ready, not computed."""

    #: Its issuer and subject: what an account it opens records as the owner.
    owner: Owner
    scopes: frozenset[str]
    #: A delegated token's ``acct`` claim: the one account it may touch.
    account: str | None = None
    #: What the audit trail records of it (issuer, subject, and the token's client_id and jti if any); None
    #: only for ``AUTH_MODE=none``, where nobody is asked who they are.
    actor: dict[str, str] | None = None

    @classmethod
    def of(cls, issuer: str, subject: str, scopes: frozenset[str], client_id: str | None = None,
           token_id: str | None = None, account: str | None = None) -> Principal:
        actor = {"iss": issuer, "sub": subject}
        if client_id:
            actor["client_id"] = client_id
        if token_id:
            actor["jti"] = token_id
        return cls(Owner(issuer, subject), scopes, account, actor)

    @property
    def issuer(self) -> str:
        return self.owner.issuer

    @property
    def subject(self) -> str:
        return self.owner.subject

    @property
    def client_id(self) -> str | None:
        return None if self.actor is None else self.actor.get("client_id")

    @property
    def token_id(self) -> str | None:
        return None if self.actor is None else self.actor.get("jti")

    @property
    def authenticated(self) -> bool:
        return self.actor is not None

    @property
    def is_admin(self) -> bool:
        """Reaches every account: ``accounts:admin`` on a token that is not narrowed to one account."""
        return ADMIN in self.scopes and self.account is None

    def reaches(self, account_id: str, owner: Owner | None) -> bool:
        if self.account is not None:
            return account_id == self.account
        if ADMIN in self.scopes:
            return True
        return owner is not None and owner == self.owner


#: ``AUTH_MODE=none``: every request acts as this, with every scope and every account (today's behaviour,
#: for tests and benchmarks that are not about authentication; the service refuses to start this way unless
#: told to explicitly).
ANONYMOUS = Principal(Owner("", ""), ALL_SCOPES)
#: What a request holds before ``serve`` has authenticated it: no scope, no account.
NOBODY = Principal(Owner("", ""), frozenset())


class Authenticator(Protocol):
    """Turns a request's ``Authorization`` header into its caller (``auth.py`` holds the implementations)."""

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller, or ``AuthenticationError`` (401) or ``AuthUnavailable`` (503)."""
        ...


#: The scope a request needs, by its method: reading is GET (and HEAD); every other method writes.
SCOPE_BY_METHOD = {"GET": READ, "HEAD": READ}


def require_scope(principal: Principal, scope: str) -> None:
    if scope not in principal.scopes:
        raise InsufficientScope(f"this request needs a token with the scope {scope}", scope)


def require_admin(principal: Principal, what: str) -> None:
    if not principal.is_admin:
        raise InsufficientScope(f"{what} needs a token with the scope {ADMIN} that is not limited to one account",
                                ADMIN)


def owner_for(principal: Principal) -> Owner | None:
    """Who owns an account this caller opens (nobody when nobody was asked)."""
    return principal.owner if principal.authenticated else None


def authorize(principal: Principal, account_id: str, owner: Owner | None, exists: bool, opening: bool = False) -> None:
    """Raise what a caller who may not touch this account is told: the answer for a missing account (or, when
    opening one, for a taken id), so the answer says nothing about who owns it or what it holds."""
    if opening:
        if principal.account is not None:
            raise InsufficientScope("a token limited to one account (its acct claim) cannot open accounts", WRITE)
        if exists and not principal.reaches(account_id, owner):
            raise AccountAlreadyExists(f"account {account_id} already exists")
        return
    if not exists or not principal.reaches(account_id, owner):
        raise AccountNotFound(f"account {account_id} does not exist")
