"""A local OIDC issuer: signing keys kept in a directory, their public half (JWKS) and a discovery document
served on loopback, and access tokens minted with them. ``make run`` starts one and points the API at it;
``python -m devstack token`` mints its tokens; the tests and benchmarks start their own.

    python -m devstack.issuer --port 8083 --state-dir .devstack     (what make run starts)

It is a development tool: its key lives in a file beside the local data, and anybody who can read that
file can mint tokens for the local API. Production points AUTH_ISSUER at a real identity provider.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

#: The audience the local API expects (make run sets AUTH_AUDIENCE to it).
LOCAL_AUDIENCE = "ledgerstream-local"
DEFAULT_SCOPES = ("accounts:read", "accounts:write")
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class SigningKey:
    private: PrivateKey
    algorithm: str  # ES256 or RS256

    def _jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            return ECAlgorithm.to_jwk(public, as_dict=True)
        return RSAAlgorithm.to_jwk(public, as_dict=True)

    @property
    def public_jwk(self) -> dict[str, Any]:
        return {**self._jwk(), "kid": self.kid, "use": "sig", "alg": self.algorithm}

    @property
    def kid(self) -> str:
        """The key's RFC 7638 thumbprint: the same key always has the same id."""
        jwk = self._jwk()
        members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
        canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
        return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)

    @classmethod
    def generate(cls, algorithm: str = "ES256") -> SigningKey:
        if algorithm == "ES256":
            return cls(ec.generate_private_key(ec.SECP256R1()), algorithm)
        if algorithm == "RS256":
            return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm)
        raise ValueError(f"the local issuer signs with ES256 or RS256, not {algorithm}")


class LocalIssuer:
    """An issuer at ``url`` that signs with the newest of its keys and publishes all of them."""

    def __init__(self, url: str, keys: Iterable[SigningKey]) -> None:
        self.url = url.rstrip("/")
        self.keys = list(keys)

    @classmethod
    def from_directory(cls, directory: Path, url: str) -> LocalIssuer:
        """The issuer whose key is kept in ``directory`` (made on first use, readable by its owner only)."""
        path = directory / "issuer" / "signing-key.pem"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            key = SigningKey.generate()
            pem = key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as out:
                out.write(pem)
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} does not hold an EC key")
        return cls(url, [SigningKey(private, "ES256")])

    @property
    def signing_key(self) -> SigningKey:
        return self.keys[-1]

    def rotate(self, algorithm: str | None = None) -> SigningKey:
        """Add a new key and sign with it from now on (the old ones stay published)."""
        key = SigningKey.generate(algorithm or self.signing_key.algorithm)
        self.keys.append(key)
        return key

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk for key in self.keys]}

    def discovery(self) -> dict[str, Any]:
        return {"issuer": self.url, "jwks_uri": f"{self.url}/jwks.json",
                "id_token_signing_alg_values_supported": sorted({k.algorithm for k in self.keys})}

    def claims(self, subject: str, scopes: Iterable[str] = DEFAULT_SCOPES, audience: str = LOCAL_AUDIENCE,
               ttl_seconds: float = 3600, account: str | None = None, now: float | None = None) -> dict[str, Any]:
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {"iss": self.url, "sub": subject, "aud": audience, "iat": issued, "nbf": issued,
                                  "exp": issued + int(ttl_seconds), "jti": str(uuid.uuid4()),
                                  "scope": " ".join(scopes)}
        if account is not None:
            claims["acct"] = account
        return claims

    def sign(self, claims: dict[str, Any], key: SigningKey | None = None) -> str:
        key = key or self.signing_key
        return jwt.encode(claims, key.private, algorithm=key.algorithm, headers={"kid": key.kid})

    def token(self, subject: str, scopes: Iterable[str] = DEFAULT_SCOPES, audience: str = LOCAL_AUDIENCE,
              ttl_seconds: float = 3600, account: str | None = None) -> str:
        return self.sign(self.claims(subject, scopes, audience, ttl_seconds, account))


class IssuerServer:
    """Serves an issuer's discovery document and key set on loopback, in a thread. ``available = False``
    makes it answer 503, as an identity provider in an outage would; ``fetches`` counts the key sets it
    served, ``key_set_requests`` every request for one (answered or not)."""

    def __init__(self, issuer: LocalIssuer, port: int = 0, host: str = "127.0.0.1") -> None:
        self.issuer = issuer
        self.available = True
        self.fetches = 0
        self.key_set_requests = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/jwks.json":
                    with owner._lock:
                        owner.key_set_requests += 1
                if not owner.available:
                    self._send(503, {"error": "temporarily unavailable"})
                elif path == "/.well-known/openid-configuration":
                    self._send(200, owner.issuer.discovery())
                elif path == "/jwks.json":
                    with owner._lock:
                        owner.fetches += 1
                    self._send(200, owner.issuer.jwks())
                else:
                    self._send(404, {"error": "not found"})

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return

        return Handler

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def start(self) -> IssuerServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="issuer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> IssuerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def local_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.issuer", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port to serve on (loopback only)")
    parser.add_argument("--state-dir", type=Path, required=True, help="where the signing key is kept")
    args = parser.parse_args(argv)
    issuer = LocalIssuer.from_directory(args.state_dir, local_url(args.port))
    server = IssuerServer(issuer, args.port)
    print(f"local issuer {issuer.url}: key {issuer.signing_key.kid}, jwks {issuer.url}/jwks.json", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
