"""Requests in the benchmarks carry a bearer token, as production's do: a local issuer (RS256, what Cognito
and Auth0 sign with), the token of one subject, and the settings that make the API trust that issuer. The
accounts the benchmarks seed are owned by that subject, so every request takes the owner's path."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from devstack.issuer import LOCAL_AUDIENCE, IssuerServer, LocalIssuer, SigningKey
from shared.principal import Owner

SUBJECT = "bench-client"


@dataclass(frozen=True)
class BenchAuth:
    #: AUTH_* settings for the API (the environment of a gunicorn, or of ``wired``).
    env: dict[str, str]
    #: A read/write token of SUBJECT, valid for longer than any benchmark runs.
    token: str
    owner: Owner

    @property
    def header(self) -> str:
        return f"Bearer {self.token}"


@contextmanager
def local_issuer() -> Iterator[BenchAuth]:
    issuer = LocalIssuer("http://127.0.0.1", [SigningKey.generate("RS256")])
    with IssuerServer(issuer) as server:
        issuer.url = f"http://127.0.0.1:{server.port}"
        yield BenchAuth({"AUTH_MODE": "jwt", "AUTH_ISSUER": issuer.url, "AUTH_AUDIENCE": LOCAL_AUDIENCE},
                        issuer.token(SUBJECT, ttl_seconds=6 * 3600), Owner(issuer.url, SUBJECT))
