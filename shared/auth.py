"""Bearer tokens in, a ``Principal`` out: the identity provider's adapter, the only module that reads tokens.

A token is an OIDC access token (a JWT) from the one configured issuer, signed with an asymmetric key the
issuer publishes (JWKS), checked by PyJWT: signature, ``iss``, ``exp``, ``nbf``, ``iat`` (with a small leeway),
then the audience (``aud``; for Cognito access tokens, which carry no ``aud``, ``client_id``) and, when
present, ``token_use``. The key set comes from PyJWT's ``PyJWKClient``: cached, refetched once for an unknown
key id (at most once per cooldown), and, here, kept in use while the issuer cannot be reached, so a token
whose key is known keeps working through the issuer's outage.

Verifying a signature costs tens of microseconds, so a verified token is remembered (by its SHA-256, with
its principal, until it expires): a client that reuses its token pays once per process.

Nothing a token holds reaches a log line or an error body: the errors name which check failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import urllib.request
from collections.abc import Callable
from itertools import islice
from typing import Any, Protocol
from urllib.error import URLError

import jwt
from jwt import PyJWK, PyJWKClient, PyJWKSet
from jwt.exceptions import PyJWKClientConnectionError, PyJWKClientError, PyJWKError, PyJWKSetError

from shared.config import AuthSettings, ConfigError, issuer_url
from shared.errors import AuthUnavailable, InvalidToken, MissingToken
from shared.principal import ANONYMOUS, Authenticator, Principal
from shared.validation import ACCOUNT_ID_PATTERN, IDENTITY_TEXT_PATTERN

log = logging.getLogger("ledgerstream.auth")

#: RFC 6750's b64token, bounded: a JWT signed with RSA-4096 and a generous set of claims stays far below.
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)")
MAX_TOKEN_CHARS = 8_192
_FETCH_TIMEOUT_SECONDS = 2.0
#: How long a fetched key set is used before it is fetched again (PyJWKClient's own default).
_KEY_SET_LIFESPAN_SECONDS = 300.0
_CACHE_SIZE = 10_000


class OpenAccess:
    """``AUTH_MODE=none``: nobody is asked, everybody may do everything (tests and benchmarks only)."""

    def authenticate(self, authorization: str | None) -> Principal:
        return ANONYMOUS


class KeySource(Protocol):
    def key(self, kid: str) -> PyJWK:
        """The issuer's public key ``kid``; ``InvalidToken`` if the issuer does not publish it, ``AuthUnavailable``
        if that cannot be known now."""
        ...


class JwtAuthenticator:
    def __init__(self, settings: AuthSettings, keys: KeySource | None = None,
                 clock: Callable[[], float] = time.time, cache_size: int = _CACHE_SIZE) -> None:
        self._issuer = settings.issuer
        self._audience = settings.audience
        self._algorithms = list(settings.algorithms)
        self._leeway = settings.leeway_seconds
        self._scope_prefix = settings.scope_prefix
        self._keys = keys if keys is not None else IssuerKeys(settings)
        self._clock = clock
        self._cache: dict[bytes, tuple[Principal, float]] = {}
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()

    def authenticate(self, authorization: str | None) -> Principal:
        if authorization is None:
            raise MissingToken("send a bearer token: Authorization: Bearer <access token>")
        # The whole header is the cache key: a client that reuses its token costs one hash and one lookup.
        digest = hashlib.sha256(authorization.encode("utf-8", "surrogatepass")).digest()
        known = self._cache.get(digest)
        if known is not None:
            principal, valid_until = known
            if self._clock() < valid_until:
                return principal
            self._cache.pop(digest, None)
            raise InvalidToken("the token has expired")
        principal, valid_until = self._verify(_bearer_token(authorization))
        self._remember(digest, principal, valid_until)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidToken("the token is not a well-formed JWT") from None
        if header.get("alg") not in self._algorithms:
            raise InvalidToken(f"the token's signature algorithm is not accepted here "
                               f"(accepted: {', '.join(self._algorithms)})")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("the token does not name its signing key (no kid in its header)")
        key = self._keys.key(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=self._algorithms, issuer=self._issuer, leeway=self._leeway,
                options={"require": ["exp", "iss", "sub"], "verify_aud": False})
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("the token is not valid yet (nbf or iat lies in the future)") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the token was issued by another issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"the token lacks the {exc.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the token's signature does not verify") from None
        except (jwt.InvalidTokenError, PyJWKError):
            raise InvalidToken("the token is not valid") from None
        self._check_audience(claims)
        return _principal(claims, self._scope_prefix), float(claims["exp"]) + self._leeway

    def _check_audience(self, claims: dict[str, Any]) -> None:
        audience = claims.get("aud")
        if audience is not None:
            audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
            if self._audience not in audiences:
                raise InvalidToken("the token is meant for another audience")
        elif claims.get("client_id") != self._audience:  # a Cognito access token: client_id instead of aud
            raise InvalidToken("the token names neither this API's audience (aud) nor its client (client_id)")
        token_use = claims.get("token_use")
        if token_use is not None and token_use != "access":
            raise InvalidToken("only access tokens are accepted (token_use must be access)")

    def _remember(self, digest: bytes, principal: Principal, valid_until: float) -> None:
        with self._cache_lock:
            if len(self._cache) >= self._cache_size:
                now = self._clock()
                for stale in [d for d, (_, until) in self._cache.items() if until <= now]:
                    del self._cache[stale]
                if len(self._cache) >= self._cache_size:  # still full of live tokens: forget the oldest quarter
                    for oldest in list(islice(self._cache, max(1, self._cache_size // 4))):
                        del self._cache[oldest]
            self._cache[digest] = (principal, valid_until)


def _bearer_token(authorization: str) -> str:
    match = _BEARER.fullmatch(authorization.strip())
    if match is None:
        if not authorization.strip().lower().startswith("bearer"):
            raise MissingToken("send a bearer token: Authorization: Bearer <access token>")
        raise InvalidToken("the Authorization header does not hold a bearer token")
    token = match.group(1)
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken(f"the token is longer than {MAX_TOKEN_CHARS} characters")
    return token


def _principal(claims: dict[str, Any], scope_prefix: str) -> Principal:
    subject = _text_claim(claims, "sub")
    assert subject is not None  # required by decode
    account = claims.get("acct")
    if account is not None and (not isinstance(account, str) or not ACCOUNT_ID_PATTERN.fullmatch(account)):
        raise InvalidToken("the token's acct claim is not an account id")
    return Principal.of(str(claims["iss"]), subject, _scopes(claims, scope_prefix),
                        client_id=_text_claim(claims, "client_id"), token_id=_text_claim(claims, "jti"),
                        account=account)


def _text_claim(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not IDENTITY_TEXT_PATTERN.fullmatch(value):
        raise InvalidToken(f"the token's {name} claim must be 1-255 visible ASCII characters")
    return value


def _scopes(claims: dict[str, Any], prefix: str) -> frozenset[str]:
    """``scope`` (RFC 8693/9068: one space-separated string) or ``scp`` (a list, as Okta and Azure send it),
    without the provider's ``prefix``; scopes without it belong to other APIs and are dropped."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(item for item in value if isinstance(item, str))
    if prefix:
        return frozenset(scope[len(prefix):] for scope in found if scope.startswith(prefix))
    return frozenset(found)


class _KeySetClient(PyJWKClient):
    """``PyJWKClient`` that keeps the last key set it fetched in use while the issuer cannot be reached
    (PyJWT's own raises once its cached set is older than its lifespan), and says when that is the case."""

    def __init__(self, url: str, cooldown_seconds: float, lifespan_seconds: float) -> None:
        super().__init__(url, cache_keys=False, cache_jwk_set=True, lifespan=lifespan_seconds,
                         timeout=_FETCH_TIMEOUT_SECONDS, cooldown_duration=cooldown_seconds)
        self.unreachable = False
        self._last_good: dict[str, Any] | None = None

    def fetch_data(self) -> Any:
        try:
            data = super().fetch_data()
            PyJWKSet.from_dict(data)  # a set without one usable key is as good as no answer
        except (PyJWKClientError, PyJWKSetError, ValueError) as exc:
            if not self.unreachable:
                log.warning("cannot fetch the issuer's signing keys from %s: %s", self.uri, _reason(exc),
                            extra={"fields": {"dependency": "identity-provider", "state": "down"}})
            self.unreachable = True
            if self._last_good is None:
                raise PyJWKClientConnectionError("no key set has been fetched yet") from exc
            return self._last_good
        if self.unreachable:
            log.warning("the issuer's signing keys can be fetched again",
                        extra={"fields": {"dependency": "identity-provider", "state": "recovered"}})
        self.unreachable = False
        self._last_good = data
        return data


class IssuerKeys:
    """The issuer's public keys, from ``AUTH_JWKS_URL`` or the issuer's discovery document (fetched when
    first needed: a Lambda cold start pays it once, and a process can start while the issuer is down)."""

    def __init__(self, settings: AuthSettings, lifespan_seconds: float = _KEY_SET_LIFESPAN_SECONDS) -> None:
        self._issuer = settings.issuer
        self._jwks_url = settings.jwks_url
        self._cooldown = settings.jwks_cooldown_seconds
        self._lifespan = lifespan_seconds
        self._client: _KeySetClient | None = None
        self._lock = threading.Lock()

    def key(self, kid: str) -> PyJWK:
        with self._lock:  # one fetch at a time, and `unreachable` read for the same lookup that set it
            if self._client is None:
                self._client = _KeySetClient(self._discover(), self._cooldown, self._lifespan)
            client = self._client
            try:
                return client.get_signing_key(kid)
            except PyJWKClientConnectionError:
                raise AuthUnavailable("the identity provider's signing keys cannot be fetched; retry shortly") \
                    from None
            except PyJWKClientError:
                if client.unreachable:
                    raise AuthUnavailable("the token's signing key is not known here and the identity provider "
                                          "cannot be reached to look for it; retry shortly") from None
                raise InvalidToken("the token is signed with a key its issuer does not publish") from None

    def _discover(self) -> str:
        if self._jwks_url:
            return self._jwks_url
        url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            with urllib.request.urlopen(url, timeout=_FETCH_TIMEOUT_SECONDS) as response:
                document = json.load(response)
        except (URLError, TimeoutError, OSError, ValueError) as exc:
            log.warning("cannot read the issuer's discovery document %s: %s", url, _reason(exc),
                        extra={"fields": {"dependency": "identity-provider", "state": "down"}})
            raise AuthUnavailable("the identity provider cannot be reached; retry shortly") from None
        jwks_uri = document.get("jwks_uri") if isinstance(document, dict) else None
        if not isinstance(document, dict) or document.get("issuer") != self._issuer or not isinstance(jwks_uri, str):
            log.error("the discovery document at %s does not describe issuer %s with a jwks_uri", url, self._issuer)
            raise AuthUnavailable("the identity provider's configuration cannot be used; retry later")
        try:
            return issuer_url(jwks_uri, "jwks_uri")  # the rule AUTH_JWKS_URL follows
        except ConfigError as exc:
            log.error("the discovery document at %s: %s", url, exc)
            raise AuthUnavailable("the identity provider's configuration cannot be used; retry later") from None


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def authenticator(settings: AuthSettings) -> Authenticator:
    return OpenAccess() if settings.mode == "none" else JwtAuthenticator(settings)
