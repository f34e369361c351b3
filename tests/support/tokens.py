"""Bearer tokens for the authentication tests: good ones from a local issuer, and the forgeries an attacker
would try (every one must be refused)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from devstack.issuer import LocalIssuer, SigningKey

READ_WRITE = ("accounts:read", "accounts:write")
ADMIN = ("accounts:read", "accounts:write", "accounts:admin")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def alg_none(issuer: LocalIssuer, claims: dict[str, Any]) -> str:
    """An unsigned token ("alg": "none"), naming a real key id."""
    return f"{_segment({'alg': 'none', 'typ': 'JWT', 'kid': issuer.signing_key.kid})}.{_segment(claims)}."


def hmac_with_public_key(issuer: LocalIssuer, claims: dict[str, Any]) -> str:
    """HS256 with the issuer's *public* key as the secret: the classic algorithm-confusion forgery."""
    key = issuer.signing_key
    head = f"{_segment({'alg': 'HS256', 'typ': 'JWT', 'kid': key.kid})}.{_segment(claims)}"
    signature = hmac.new(key.public_pem, head.encode(), hashlib.sha256).digest()
    return f"{head}.{_b64(signature)}"


def tampered(issuer: LocalIssuer, claims: dict[str, Any], **changes: Any) -> str:
    """A genuinely signed token whose payload was changed afterwards (its signature no longer matches)."""
    head, _, signature = issuer.sign(claims).split(".")
    return f"{head}.{_segment({**claims, **changes})}.{signature}"


def unknown_key(issuer: LocalIssuer, claims: dict[str, Any]) -> str:
    """Signed with a key the issuer does not publish."""
    return issuer.sign(claims, SigningKey.generate(issuer.signing_key.algorithm))


def hostile_headers() -> dict[str, str]:
    """Authorization values that are not tokens at all (each must be a 401, never a 500)."""
    return {
        "16 KB token": "Bearer " + "a" * 16_384,
        "not base64": "Bearer !!!.???.***",
        "not JSON": f"Bearer {_b64(b'not json')}.{_b64(b'not json')}.{_b64(b'sig')}",
        "five dots": "Bearer a.b.c.d.e.f",
        "non-ASCII": "Bearer éé.üü.ßß",
        "empty bearer": "Bearer ",
        "another scheme": "Basic YWxpY2U6c2VjcmV0",
    }


def forgeries(issuer: LocalIssuer, subject: str) -> dict[str, Callable[[], str]]:
    """Every way of presenting a token that must answer 401 invalid_token, by name (each minted when called,
    so its times are current)."""
    def claims(**changes: Any) -> dict[str, Any]:
        return {**issuer.claims(subject, READ_WRITE), **changes}

    now = int(time.time())
    return {
        "expired": lambda: issuer.sign(claims(iat=now - 7200, nbf=now - 7200, exp=now - 3600)),
        "not yet valid": lambda: issuer.sign(claims(nbf=now + 3600)),
        "wrong issuer": lambda: issuer.sign(claims(iss="https://issuer.example.org")),
        "wrong audience": lambda: issuer.sign(claims(aud="another-api")),
        "alg none": lambda: alg_none(issuer, claims()),
        "HS256 with the public key": lambda: hmac_with_public_key(issuer, claims()),
        "tampered payload": lambda: tampered(issuer, claims(), scope=" ".join(ADMIN)),
        "unknown kid": lambda: unknown_key(issuer, claims()),
    }
