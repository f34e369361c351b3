"""The shipped reverse-proxy configuration (deploy/nginx/ledgerstream.conf.template) under a real nginx, in
front of the real gateway under gunicorn (with its health process), against a real Redis of its own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.process import spawn, terminate
from devstack.redis_server import RedisProcess, free_port
from tests.support.gateway import ROOT, live_gateway
from tests.support.waiting import wait_until

TEMPLATE = ROOT / "deploy" / "nginx" / "ledgerstream.conf.template"


def render(template: Path, values: dict[str, str]) -> str:
    """What the official nginx image does to /etc/nginx/templates/*.template: ${NAME} from the environment."""
    text = template.read_text()
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    assert "${" not in text, "a variable of the template was not given"
    return text


@dataclass
class Stack:
    url: str
    gunicorn_url: str
    health_url: str
    redis: RedisProcess


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("CI=true and nginx is not installed (apt-get install nginx)")
        pytest.skip("nginx is not installed (apt-get install nginx)")
    with ExitStack() as running:
        redis_server = RedisProcess().start()
        running.callback(redis_server.stop)
        health_port, nginx_port = free_port(), free_port()
        gunicorn_url = running.enter_context(live_gateway({
            "REDIS_URL": redis_server.url, "LEDGER_KEY_PREFIX": f"p{uuid.uuid4().hex[:6]}",
            "GATEWAY_HEALTH_BIND": f"127.0.0.1:{health_port}", "TRUST_PROXY_REQUEST_ID": "true",
            "REDIS_TIMEOUT_SECONDS": "1", "COMMAND_DEADLINE_SECONDS": "3"}))
        prefix = tmp_path_factory.mktemp("nginx")
        (prefix / "logs").mkdir()
        (prefix / "ledgerstream.conf").write_text(render(TEMPLATE, {
            "NGINX_PORT": f"127.0.0.1:{nginx_port}", "GATEWAY_UPSTREAM": gunicorn_url.removeprefix("http://"),
            "GATEWAY_HEALTH_UPSTREAM": f"127.0.0.1:{health_port}"}))
        # The image's own nginx.conf, reduced to what a test run needs; the server block is the shipped file.
        (prefix / "nginx.conf").write_text(f"""
worker_processes 1;
error_log {prefix}/logs/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy; fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
    include {prefix}/ledgerstream.conf;
}}
""")
        wait_until(lambda: _answers(f"http://127.0.0.1:{health_port}/healthz"), 30, "the gateway's health process")
        proxy = spawn([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
                      lambda: _answers(f"http://127.0.0.1:{nginx_port}/healthz"), 20, "nginx")
        running.callback(terminate, proxy)
        yield Stack(f"http://127.0.0.1:{nginx_port}", gunicorn_url, f"http://127.0.0.1:{health_port}", redis_server)


def _request(url: str, method: str = "GET", body: object = None, headers: dict[str, str] | None = None,
             timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json",
                                                                             **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _quick(url: str) -> bool:
    """Does ``url`` answer within a fifth of a second?"""
    try:
        _request(url, timeout=0.2)
    except OSError:
        return False
    return True


class Trickler:
    """``count`` connections that send a request's headers a byte a second, reopened when nginx drops them."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Trickler:
        self._thread.start()
        wait_until(lambda: self.opened >= self.count, 30, "the slow connections to open")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _open(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.sendall(b"POST /accounts HTTP/1.1\r\nHost: x\r\n")
        self.opened += 1
        return sock

    def _run(self) -> None:
        sockets = [self._open() for _ in range(self.count)]
        while not self._stop.wait(1.0):
            for index, sock in enumerate(sockets):
                try:
                    sock.sendall(b"X")
                except OSError:  # nginx closed it (client_header_timeout): come back, as an attacker would
                    sock.close()
                    sockets[index] = self._open()
        for sock in sockets:
            sock.close()


@pytest.mark.slow
def test_normal_requests_are_served_while_200_clients_trickle_their_headers(stack: Stack) -> None:
    port = int(stack.url.rsplit(":", 1)[1])
    assert _request(f"{stack.url}/accounts", "POST", {"id": "steady"})[0] == 201
    latencies: list[float] = []
    with Trickler(port, 200):
        until = time.monotonic() + 20
        while time.monotonic() < until:
            started = time.perf_counter()
            status, headers, _ = _request(f"{stack.url}/accounts/steady/deposits", "POST", {"amount": 1})
            latencies.append(time.perf_counter() - started)
            assert status == 200 and headers["X-Request-Id"]
            assert _request(f"{stack.url}/healthz")[0] == 200
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    assert len(latencies) > 50 and p99 < 1.0, f"{len(latencies)} requests, p99 {p99:.3f}s"


def test_oversized_headers_and_bodies_are_refused_as_problems(stack: Stack) -> None:
    status, headers, body = _request(f"{stack.url}/accounts", "POST", {"id": "x"}, {"X-Padding": "a" * 20_000})
    assert status == 431
    problem = json.loads(body)
    assert problem["code"] == "headers-too-large" and problem["request_id"] == headers["X-Request-Id"]
    status, headers, body = _request(f"{stack.url}/accounts", "POST", {"id": "x", "pad": "p" * 40_000})
    assert (status, json.loads(body)["code"]) == (413, "payload-too-large")
    assert headers["X-Request-Id"]


def _raw(stack: Stack, data: bytes, timeout: float = 20) -> tuple[bytes, float]:
    """Send ``data`` as it is and read until nginx closes the connection: (the answer, seconds it took)."""
    host, port = stack.url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - started


def _problem_of(answer: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


@pytest.mark.parametrize(("request_line", "status", "code"), [
    (b"GARBAGE", 400, "invalid-request"),
    (b"GET /accounts/a b HTTP/1.1", 400, "invalid-request"),
    (b"GET /accounts/a\x00b HTTP/1.1", 400, "invalid-request"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1", 414, "uri-too-long"),
])
def test_request_lines_nginx_cannot_use_are_problems(stack: Stack, request_line: bytes, status: int,
                                                      code: str) -> None:
    """A request line nginx cannot parse has no URI, and nginx would not redirect such a request to a named
    location: these were its own HTML 500s."""
    answered, _ = _raw(stack, request_line + b"\r\nHost: x\r\n\r\n")
    got, headers, problem = _problem_of(answered)
    assert (got, headers["Content-Type"], problem["code"]) == (status, "application/problem+json", code)
    assert problem["request_id"] == headers["X-Request-Id"]


def test_an_unknown_transfer_coding_is_a_problem(stack: Stack) -> None:
    answered, _ = _raw(stack, b"POST /accounts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n"
                              b"\r\n0\r\n\r\n")
    status, headers, problem = _problem_of(answered)
    assert (status, headers["Content-Type"], problem["code"]) == (501, "application/problem+json", "not-implemented")


def test_a_body_that_stops_arriving_is_dropped_without_reaching_the_gateway(stack: Stack) -> None:
    """nginx does not answer a client that stopped sending (it terminates the request; no 408 is ever
    written, whatever its documentation suggests): the connection is closed after client_body_timeout, and no
    gunicorn worker waited for the body."""
    before = _request(f"{stack.url}/accounts/slow-body")[0]
    answered, seconds = _raw(stack, b"POST /accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                    b"Content-Length: 17\r\n\r\n{\"id\"")
    assert answered == b"" and 9 <= seconds < 15
    assert before == 404 and _request(f"{stack.url}/accounts/slow-body")[0] == 404  # nothing was created


def test_one_request_id_from_the_proxy_to_the_problem(stack: Stack) -> None:
    status, headers, body = _request(f"{stack.url}/accounts/nobody")
    assert status == 404
    assert json.loads(body)["request_id"] == headers["X-Request-Id"]
    forged = _request(f"{stack.url}/accounts/nobody", headers={"X-Request-Id": "client-chosen-id-123"})[1]
    assert forged["X-Request-Id"] != "client-chosen-id-123"  # the proxy overwrites what a client sends


def test_a_frozen_redis_never_delays_the_health_probes(stack: Stack) -> None:
    assert _request(f"{stack.url}/readyz")[0] == 200
    assert stack.redis.process is not None
    stack.redis.process.send_signal(signal.SIGSTOP)
    blocked: list[int] = []
    try:
        # Every worker busy on the frozen Redis...
        def create(account_id: str) -> None:
            blocked.append(_request(f"{stack.url}/accounts", "POST", {"id": account_id}, timeout=20)[0])

        workers = [threading.Thread(target=create, args=(f"f{n}",)) for n in range(6)]
        for thread in workers:
            thread.start()
        wait_until(lambda: not _quick(f"{stack.gunicorn_url}/healthz"), 10, "every gunicorn worker to be busy")
        for _ in range(5):  # ...and the probes answer within a second all the same
            started = time.perf_counter()
            assert _request(f"{stack.url}/healthz", timeout=2)[0] == 200
            assert time.perf_counter() - started < 1.0
        answers: list[tuple[float, int, bytes]] = []

        def not_ready() -> bool:
            started = time.perf_counter()
            status, _, body = _request(f"{stack.url}/readyz", timeout=3)
            answers.append((time.perf_counter() - started, status, body))
            return status == 503

        wait_until(not_ready, 5, "readiness to report the frozen Redis")  # it remembers a check for a second
        assert max(seconds for seconds, _, _ in answers) < 2.0
        assert json.loads(answers[-1][2])["code"] == "store-unavailable"
    finally:
        stack.redis.process.send_signal(signal.SIGCONT)
    for thread in workers:
        thread.join(30)
    assert set(blocked) <= {201, 503}
    wait_until(lambda: _request(f"{stack.url}/readyz")[0] == 200, 10, "readiness after Redis thaws")
