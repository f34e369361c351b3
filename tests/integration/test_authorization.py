"""Authentication and authorisation, end to end, against a local issuer this test starts (JWKS and discovery
served on loopback) and a real Redis:

* the matrix: every route x every kind of caller (owner, stranger, administrator, delegated tokens, a read-only
  token on a write, no token, and every forgery), through the Lambda adapter (in-process API Gateway events,
  what Lambda runs) and through gunicorn over HTTP, with identical answers;
* key rotation without a restart, one refetch for an unknown key id, the issuer's outage (503 only when a key
  is missing; a cached key keeps working), discovery;
* nothing of a token in any log line; an API nobody configured does not start.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from devstack.issuer import LOCAL_AUDIENCE, IssuerServer, LocalIssuer, SigningKey
from devstack.redis_server import free_port
from gateway.routes import ROUTES
from shared import logs, runtime
from shared.auth import IssuerKeys, JwtAuthenticator
from shared.config import AuthSettings
from shared.errors import AuthUnavailable, InvalidToken
from shared.keys import KeySpace
from tests.support import apigw
from tests.support.gateway import live_gateway
from tests.support.targets import RedisTarget, delete_keys
from tests.support.tokens import ADMIN, READ_WRITE, forgeries, hostile_headers
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "acct-a"
#: Every route, by its handler's name, with the body a request to it carries.
BODIES: dict[str, Any] = {"create_account": None, "get_account": None, "list_events": None,
                          "deposit": {"amount": "1.00"}, "withdraw": {"amount": "1.00"},
                          "assign_owner": {"subject": "alice"}}
ISSUER_DOWN = "unknown kid, issuer down"


@pytest.fixture
def issuer() -> Iterator[IssuerServer]:
    local = LocalIssuer("http://127.0.0.1", [SigningKey.generate("RS256")])
    with IssuerServer(local) as server:
        local.url = f"http://127.0.0.1:{server.port}"
        yield server


def auth_env(server: IssuerServer, **extra: str) -> dict[str, str]:
    """The API's settings for this issuer. No cooldown: every unknown key id refetches, so the issuer's
    outage is seen by each request that needs it (the cooldown has its own test below)."""
    return {"AUTH_MODE": "jwt", "AUTH_ISSUER": server.issuer.url, "AUTH_AUDIENCE": LOCAL_AUDIENCE,
            "AUTH_JWKS_COOLDOWN_SECONDS": "0", **extra}


@dataclass(frozen=True)
class Answer:
    status: int
    code: str
    challenge: str | None


Send = Callable[[str, str | None, Any, dict[str, str]], Answer]


def callers(server: IssuerServer) -> dict[str, Callable[[], dict[str, str]]]:
    """Every kind of caller, as the headers it sends (made when asked, so its token's times are current)."""
    issuer = server.issuer

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    kinds: dict[str, Callable[[], dict[str, str]]] = {
        "owner": lambda: bearer(issuer.token("alice", READ_WRITE)),
        "other user": lambda: bearer(issuer.token("bob", READ_WRITE)),
        "admin": lambda: bearer(issuer.token("ops", ADMIN)),
        "delegated to this account": lambda: bearer(issuer.token("processor", READ_WRITE, account=ACCOUNT)),
        "delegated to another account": lambda: bearer(issuer.token("processor", READ_WRITE, account="acct-b")),
        "read-only scope": lambda: bearer(issuer.token("alice", ("accounts:read",))),
        "no token": dict,
    }
    for name, make in forgeries(issuer, "alice").items():
        kinds[name] = lambda make=make: bearer(make())  # type: ignore[misc]
    kinds[ISSUER_DOWN] = kinds["unknown kid"]
    return kinds


def expected(route: str, caller: str) -> tuple[int, str]:
    if caller == "no token":
        return 401, "unauthenticated"
    if caller == ISSUER_DOWN:
        return 503, "auth-unavailable"
    if caller not in {"owner", "other user", "admin", "delegated to this account", "delegated to another account",
                      "read-only scope"}:
        return 401, "invalid-token"
    if caller == "read-only scope" and route not in ("get_account", "list_events"):
        return 403, "insufficient-scope"
    if route == "assign_owner":
        return (200, "ok") if caller == "admin" else (403, "insufficient-scope")
    if route == "create_account":
        return (403, "insufficient-scope") if caller.startswith("delegated") else (201, "ok")
    if caller in ("other user", "delegated to another account"):
        return 404, "account-not-found"
    return 200, "ok"


def run_matrix(send: Send, server: IssuerServer) -> list[tuple[str, str, Answer]]:
    kinds = callers(server)
    owner = kinds["owner"]()
    assert send("create_account", None, {"id": ACCOUNT}, owner).status == 201
    assert send("deposit", ACCOUNT, {"amount": "1000.00"}, owner).status == 200
    answers = []
    for route, body in BODIES.items():
        for caller, headers in kinds.items():
            slug = caller.replace(" ", "-").replace(",", "")
            payload = {"id": f"new-{slug}"} if route == "create_account" else body
            server.available = caller != ISSUER_DOWN
            try:
                answer = send(route, None if route == "create_account" else ACCOUNT, payload, headers())
            finally:
                server.available = True
            answers.append((route, caller, answer))
    return answers


def check(answers: list[tuple[str, str, Answer]]) -> None:
    wrong = [(route, caller, (a.status, a.code), expected(route, caller)) for route, caller, a in answers
             if (a.status, a.code) != expected(route, caller)]
    assert not wrong, wrong
    challenges = {(a.status, a.code): a.challenge for _, _, a in answers}
    assert challenges[401, "unauthenticated"] == "Bearer"
    assert challenges[401, "invalid-token"] == 'Bearer error="invalid_token"'
    assert challenges[403, "insufficient-scope"] is not None
    assert challenges[403, "insufficient-scope"].startswith('Bearer error="insufficient_scope", scope="accounts:')


def _answer(status: int, headers: Any, body: bytes) -> Answer:
    try:
        code = json.loads(body).get("code", "ok") if body else "ok"
    except ValueError:  # gunicorn's own HTML, for what it refuses before the app sees it
        code = "(not a problem document)"
    return Answer(status, code, headers.get("WWW-Authenticate"))


def lambda_sender(route: str, account_id: str | None, body: Any, headers: dict[str, str]) -> Answer:
    response = apigw.call(route, account_id, body, headers=headers)
    return _answer(response["statusCode"], response["headers"], response["body"].encode())


def http_sender(base: str) -> Send:
    paths = {route.module.split(".")[1]: route for route in ROUTES}

    def send(route: str, account_id: str | None, body: Any, headers: dict[str, str]) -> Answer:
        target = paths[route]
        path = target.path.replace("{id}", account_id or "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(base + path, data=data, method=target.method,
                                         headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return _answer(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            with error:
                return _answer(error.code, error.headers, error.read())

    return send


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """The JSON lines this process writes (the in-process path logs here)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def assert_no_token_in(text: str, server: IssuerServer) -> None:
    """No token, no signature, no claim beyond the subject in the logs."""
    probe = server.issuer.claims("alice", READ_WRITE)
    token = server.issuer.sign(probe)
    assert token.split(".")[2][:16] not in text
    assert "eyJ" not in text, "a JWT segment (base64url of '{\"') reached the log"
    assert probe["jti"] not in text


def test_the_matrix_is_the_same_through_lambda_and_gunicorn(
        issuer: IssuerServer, live_env: KeySpace, monkeypatch: pytest.MonkeyPatch, redis_target: RedisTarget,
        redis_client: redis.Redis, key_prefix: str, captured_logs: io.StringIO, tmp_path: Path) -> None:
    for name, value in auth_env(issuer).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LOG_LEVEL", "INFO")
    runtime.reset()
    through_lambda = run_matrix(lambda_sender, issuer)
    check(through_lambda)

    http_prefix = f"{key_prefix}-http"
    log = tmp_path / "gunicorn.log"
    try:
        with live_gateway({**redis_target.env(), "LEDGER_KEY_PREFIX": http_prefix, "LEDGER_PARTITIONS": "8",
                           "LOG_LEVEL": "INFO", **auth_env(issuer)}, log=log) as base:
            through_http = run_matrix(http_sender(base), issuer)
    finally:
        delete_keys(redis_client, KeySpace(http_prefix, 1).every_key())
    check(through_http)
    assert through_http == through_lambda
    assert_no_token_in(captured_logs.getvalue() + log.read_text(errors="replace"), issuer)
    assert '"subject":"alice"' in captured_logs.getvalue()  # the subject is fine, and useful


def test_hostile_headers_are_never_a_500(issuer: IssuerServer, live_env: KeySpace, monkeypatch: pytest.MonkeyPatch,
                                         redis_target: RedisTarget, key_prefix: str) -> None:
    for name, value in auth_env(issuer).items():
        monkeypatch.setenv(name, value)
    runtime.reset()
    with live_gateway({**redis_target.env(), "LEDGER_KEY_PREFIX": key_prefix, **auth_env(issuer)}) as base:
        send = http_sender(base)
        for name, header in hostile_headers().items():
            in_process = lambda_sender("get_account", ACCOUNT, None, {"Authorization": header})
            assert (in_process.status, in_process.code) in {(401, "invalid-token"), (401, "unauthenticated")}, name
            try:
                over_http = send("get_account", ACCOUNT, None, {"Authorization": header})
            except UnicodeEncodeError:  # urllib will not send it; raw bytes are tried below
                continue
            if name == "16 KB token":  # past gunicorn's header limit: refused before it reaches us
                assert over_http.status in (400, 431), name
            else:
                assert over_http == in_process, name
        raw = _raw_request(base, "GET /accounts/acct-a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xe9\xe9.\xfc\r\n"
                                 "Connection: close\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 401"), raw[:200]


def _raw_request(base: str, text: str) -> bytes:
    import socket

    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(text.encode("latin-1"))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def settings_for(server: IssuerServer, **changes: Any) -> AuthSettings:
    return AuthSettings(issuer=server.issuer.url, audience=LOCAL_AUDIENCE, **changes)


def test_a_rotated_key_is_accepted_after_one_refetch_without_a_restart(issuer: IssuerServer) -> None:
    auth = JwtAuthenticator(settings_for(issuer, jwks_cooldown_seconds=0))
    old = issuer.issuer.token("alice")
    assert auth.authenticate(f"Bearer {old}").subject == "alice"
    fetched = issuer.fetches
    issuer.issuer.rotate()
    assert auth.authenticate(f"Bearer {issuer.issuer.token('bob')}").subject == "bob"
    assert issuer.fetches == fetched + 1
    assert auth.authenticate(f"Bearer {issuer.issuer.token('carol')}").subject == "carol"
    assert auth.authenticate(f"Bearer {issuer.issuer.token('alice')}").subject == "alice"
    assert issuer.fetches == fetched + 1  # the new key is known now
    assert auth.authenticate(f"Bearer {old}").subject == "alice"  # the old key is still published


def test_an_unknown_key_id_refetches_once_per_cooldown(issuer: IssuerServer) -> None:
    auth = JwtAuthenticator(settings_for(issuer, jwks_cooldown_seconds=1.0))
    auth.authenticate(f"Bearer {issuer.issuer.token('alice')}")
    fetched = issuer.fetches

    def unknown_kid_refused() -> bool:
        with pytest.raises(InvalidToken, match="does not publish"):
            auth.authenticate(f"Bearer {forgeries(issuer.issuer, 'alice')['unknown kid']()}")
        return True

    unknown_kid_refused()
    assert issuer.fetches == fetched  # within the cooldown that the fetch started: refused without asking
    wait_until(lambda: unknown_kid_refused() and issuer.fetches > fetched, 10, "a refetch after the cooldown")
    for _ in range(5):
        unknown_kid_refused()
    assert issuer.fetches == fetched + 1  # one refetch, then 401s until the next cooldown has passed


def test_a_cached_key_outlives_the_issuers_outage(issuer: IssuerServer) -> None:
    keys = IssuerKeys(settings_for(issuer), lifespan_seconds=0.05)
    auth = JwtAuthenticator(settings_for(issuer), keys)
    auth.authenticate(f"Bearer {issuer.issuer.token('alice')}")
    issuer.available = False
    tried = issuer.key_set_requests
    # Fresh tokens (the verified-token cache cannot answer) until the key set's lifespan has passed and a
    # refetch was tried and failed: the key it had keeps working.
    wait_until(lambda: auth.authenticate(f"Bearer {issuer.issuer.token('bob')}").subject == "bob"
               and issuer.key_set_requests > tried, 10, "a failed refetch of the key set")
    with pytest.raises(AuthUnavailable):
        auth.authenticate(f"Bearer {forgeries(issuer.issuer, 'alice')['unknown kid']()}")
    issuer.available = True

    def refused_as_invalid() -> bool:  # once a fetch succeeds again, an unknown key id is a 401 again
        try:
            auth.authenticate(f"Bearer {forgeries(issuer.issuer, 'alice')['unknown kid']()}")
        except AuthUnavailable:
            return False
        except InvalidToken:
            return True
        raise AssertionError("a token signed with an unpublished key was accepted")

    wait_until(refused_as_invalid, 10, "the issuer's key set to be fetched again")


def test_an_unreachable_issuer_before_any_key_is_a_503(issuer: IssuerServer) -> None:
    issuer.available = False
    auth = JwtAuthenticator(settings_for(issuer))
    with pytest.raises(AuthUnavailable):
        auth.authenticate(f"Bearer {issuer.issuer.token('alice')}")
    issuer.available = True
    assert auth.authenticate(f"Bearer {issuer.issuer.token('alice')}").subject == "alice"


def test_discovery_must_describe_the_configured_issuer(issuer: IssuerServer) -> None:
    impostor = JwtAuthenticator(AuthSettings(issuer=issuer.issuer.url + "/other", audience=LOCAL_AUDIENCE))
    with pytest.raises(AuthUnavailable):
        impostor.authenticate(f"Bearer {issuer.issuer.token('alice')}")
    direct = JwtAuthenticator(settings_for(issuer, jwks_url=issuer.issuer.url + "/jwks.json"))
    assert direct.authenticate(f"Bearer {issuer.issuer.token('alice')}").subject == "alice"


def test_an_api_nobody_configured_does_not_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTH_")}
    env["GUNICORN_BIND"] = f"127.0.0.1:{free_port()}"
    result = subprocess.run([sys.executable, "-m", "gunicorn", "--config", "gateway/gunicorn.conf.py",
                             "gateway:create_app()"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode != 0
    [line] = [line for line in result.stderr.splitlines() if "AUTH_ISSUER" in line]
    assert "AUTH_MODE=none" in line
