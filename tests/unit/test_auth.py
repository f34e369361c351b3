"""Bearer-token authentication (shared/auth.py) with the issuer's keys handed in: every check a token must
pass, the forgeries it must refuse, the verified-token cache, and what reaches the log. No network here;
tests/integration/test_authorization.py drives the same code against a local issuer over HTTP."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from jwt import PyJWK

from devstack.issuer import LOCAL_AUDIENCE, LocalIssuer, SigningKey
from shared import runtime
from shared.auth import JwtAuthenticator, OpenAccess
from shared.config import AuthSettings
from shared.errors import AuthUnavailable, InvalidToken, MissingToken
from shared.principal import ANONYMOUS
from tests.support import apigw
from tests.support.tokens import READ_WRITE, forgeries, hostile_headers

ISSUER = "https://issuer.test"
AUDIENCE = LOCAL_AUDIENCE


class PublishedKeys:
    """The issuer's key set, as if fetched: counts lookups, and can play an unreachable issuer."""

    def __init__(self, issuer: LocalIssuer) -> None:
        self.issuer = issuer
        self.lookups = 0
        self.down = False

    def key(self, kid: str) -> PyJWK:
        self.lookups += 1
        for key in self.issuer.keys:
            if key.kid == kid:
                return PyJWK(key.public_jwk)
        if self.down:
            raise AuthUnavailable("the identity provider cannot be reached")
        raise InvalidToken("the token is signed with a key its issuer does not publish")


@pytest.fixture(params=["RS256", "ES256"])
def issuer(request: pytest.FixtureRequest) -> LocalIssuer:
    return LocalIssuer(ISSUER, [SigningKey.generate(request.param)])


@pytest.fixture
def keys(issuer: LocalIssuer) -> PublishedKeys:
    return PublishedKeys(issuer)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(keys: PublishedKeys, clock: Clock) -> JwtAuthenticator:
    return JwtAuthenticator(AuthSettings(issuer=ISSUER, audience=AUDIENCE), keys, clock)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_a_good_token_names_its_caller(issuer: LocalIssuer, auth: JwtAuthenticator) -> None:
    claims = issuer.claims("alice", READ_WRITE, AUDIENCE)
    principal = auth.authenticate(bearer(issuer.sign(claims)))
    assert (principal.issuer, principal.subject, principal.scopes) == (ISSUER, "alice", frozenset(READ_WRITE))
    assert principal.token_id == claims["jti"] and principal.account is None and principal.authenticated
    assert principal.actor == {"iss": ISSUER, "sub": "alice", "jti": claims["jti"]}


def test_the_scheme_is_case_insensitive_and_the_audience_may_be_a_list(issuer: LocalIssuer,
                                                                       auth: JwtAuthenticator) -> None:
    claims = {**issuer.claims("alice", READ_WRITE, AUDIENCE), "aud": ["other-api", AUDIENCE]}
    assert auth.authenticate(f"bearer {issuer.sign(claims)}").subject == "alice"


@pytest.mark.parametrize("name", ["expired", "not yet valid", "wrong issuer", "wrong audience", "alg none",
                                  "HS256 with the public key", "tampered payload", "unknown kid"])
def test_forgeries_are_refused(issuer: LocalIssuer, auth: JwtAuthenticator, name: str) -> None:
    with pytest.raises(InvalidToken):
        auth.authenticate(bearer(forgeries(issuer, "alice")[name]()))


def test_leeway_accepts_small_clock_skew(issuer: LocalIssuer, auth: JwtAuthenticator, clock: Clock) -> None:
    now = int(clock.now)
    early = {**issuer.claims("alice", READ_WRITE, AUDIENCE), "nbf": now + 10, "iat": now + 10}
    assert auth.authenticate(bearer(issuer.sign(early))).subject == "alice"


@pytest.mark.parametrize(("name", "header"), sorted(hostile_headers().items()))
def test_hostile_headers_are_401(auth: JwtAuthenticator, name: str, header: str) -> None:
    with pytest.raises((InvalidToken, MissingToken)):
        auth.authenticate(header)


def test_no_header_asks_for_a_token(auth: JwtAuthenticator) -> None:
    with pytest.raises(MissingToken):
        auth.authenticate(None)


def test_a_token_without_kid_or_sub_is_refused(issuer: LocalIssuer, auth: JwtAuthenticator) -> None:
    claims = issuer.claims("alice", READ_WRITE, AUDIENCE)
    key = issuer.signing_key
    no_kid = jwt.encode(claims, key.private, algorithm=key.algorithm)
    with pytest.raises(InvalidToken, match="kid"):
        auth.authenticate(bearer(no_kid))
    no_sub = {k: v for k, v in claims.items() if k != "sub"}
    with pytest.raises(InvalidToken, match="sub"):
        auth.authenticate(bearer(issuer.sign(no_sub)))


def test_cognito_access_tokens_carry_client_id_instead_of_aud(issuer: LocalIssuer, auth: JwtAuthenticator) -> None:
    claims = {k: v for k, v in issuer.claims("alice", READ_WRITE, AUDIENCE).items() if k != "aud"}
    cognito = {**claims, "client_id": AUDIENCE, "token_use": "access"}
    assert auth.authenticate(bearer(issuer.sign(cognito))).client_id == AUDIENCE
    with pytest.raises(InvalidToken, match="client_id"):
        auth.authenticate(bearer(issuer.sign({**cognito, "client_id": "another-client"})))
    with pytest.raises(InvalidToken, match="token_use"):
        auth.authenticate(bearer(issuer.sign({**cognito, "token_use": "id"})))
    # client_id counts only when aud is absent: a token for another audience is not rescued by it
    with pytest.raises(InvalidToken, match="audience"):
        auth.authenticate(bearer(issuer.sign({**cognito, "aud": "another-api"})))


def test_scopes_from_scp_lists_and_a_provider_prefix(issuer: LocalIssuer, keys: PublishedKeys) -> None:
    plain = JwtAuthenticator(AuthSettings(issuer=ISSUER, audience=AUDIENCE), keys)
    claims = issuer.claims("alice", (), AUDIENCE)
    scp = {**claims, "scp": ["accounts:read", "accounts:admin"]}
    assert plain.authenticate(bearer(issuer.sign(scp))).scopes == {"accounts:read", "accounts:admin"}
    prefixed = JwtAuthenticator(AuthSettings(issuer=ISSUER, audience=AUDIENCE, scope_prefix="ledger/"), keys)
    cognito = {**claims, "scope": "ledger/accounts:read accounts:write other/accounts:admin"}
    assert prefixed.authenticate(bearer(issuer.sign(cognito))).scopes == {"accounts:read"}


def test_a_delegated_token_names_one_well_formed_account(issuer: LocalIssuer, auth: JwtAuthenticator) -> None:
    claims = issuer.claims("processor", READ_WRITE, AUDIENCE, account="acct-7")
    assert auth.authenticate(bearer(issuer.sign(claims))).account == "acct-7"
    with pytest.raises(InvalidToken, match="acct"):
        auth.authenticate(bearer(issuer.sign({**claims, "acct": "{ledger:p1:0}:stream:x"})))


def test_claims_that_reach_the_audit_trail_are_bounded(issuer: LocalIssuer, auth: JwtAuthenticator) -> None:
    for name, value in (("sub", "x" * 256), ("sub", "has space"), ("jti", "a b"), ("client_id", "é")):
        claims = {**issuer.claims("alice", READ_WRITE, AUDIENCE), name: value}
        with pytest.raises(InvalidToken, match=name):
            auth.authenticate(bearer(issuer.sign(claims)))


def test_a_verified_token_is_remembered_until_it_expires(issuer: LocalIssuer, keys: PublishedKeys,
                                                         auth: JwtAuthenticator, clock: Clock) -> None:
    token = issuer.sign({**issuer.claims("alice", READ_WRITE, AUDIENCE, ttl_seconds=60), "iat": int(clock.now),
                         "nbf": int(clock.now), "exp": int(clock.now) + 60})
    for _ in range(5):
        auth.authenticate(bearer(token))
    assert keys.lookups == 1  # verified once
    clock.now += 60 + 30  # exp plus the leeway
    with pytest.raises(InvalidToken, match="expired"):
        auth.authenticate(bearer(token))


def test_the_cache_is_bounded(issuer: LocalIssuer, keys: PublishedKeys, clock: Clock) -> None:
    auth = JwtAuthenticator(AuthSettings(issuer=ISSUER, audience=AUDIENCE), keys, clock, cache_size=8)
    tokens = [issuer.sign(issuer.claims(f"user-{n}", READ_WRITE, AUDIENCE)) for n in range(50)]
    for token in tokens:
        auth.authenticate(bearer(token))
    assert len(auth._cache) <= 8
    assert auth.authenticate(bearer(tokens[-1])).subject == "user-49"  # the newest are kept


def test_the_cache_never_turns_a_refused_token_into_a_good_one(issuer: LocalIssuer, auth: JwtAuthenticator) -> None:
    forged = forgeries(issuer, "alice")["tampered payload"]()
    for _ in range(2):
        with pytest.raises(InvalidToken):
            auth.authenticate(bearer(forged))


def test_an_unreachable_issuer_is_a_503_only_when_a_key_is_missing(issuer: LocalIssuer, keys: PublishedKeys,
                                                                   auth: JwtAuthenticator) -> None:
    keys.down = True
    assert auth.authenticate(bearer(issuer.sign(issuer.claims("alice", READ_WRITE, AUDIENCE)))).subject == "alice"
    with pytest.raises(AuthUnavailable):
        auth.authenticate(bearer(forgeries(issuer, "alice")["unknown kid"]()))


def test_open_access_is_everyone_as_an_administrator() -> None:
    assert OpenAccess().authenticate(None) == ANONYMOUS
    assert ANONYMOUS.is_admin and not ANONYMOUS.authenticated and ANONYMOUS.actor is None


def test_a_function_nobody_configured_serves_nobody(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Lambda has no start-up to refuse: every request is a 500 that names the missing settings in the log,
    and none is served."""
    monkeypatch.delenv("AUTH_MODE")
    runtime.reset()
    try:
        response = apigw.call("get_account", "acc")
    finally:
        runtime.reset()
    assert (response["statusCode"], json.loads(response["body"])["code"]) == (500, "internal-error")
    assert "AUTH_ISSUER" in capsys.readouterr().err and "AUTH_ISSUER" not in response["body"]
