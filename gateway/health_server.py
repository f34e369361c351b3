"""python -m gateway.health_server --bind HOST:PORT --app HOST:PORT

The gateway's probes, answered by a process of their own (started by gunicorn, see gunicorn.conf.py) so that
they answer within a second even while every gunicorn worker is busy: a frozen Redis holds each worker for up
to its command deadline, and a probe queued behind them would time out and get a healthy process killed.

* ``/healthz`` (liveness): gunicorn's listening socket accepts a connection. It does not look at Redis.
* ``/readyz`` (readiness): Redis answers (on a cluster: every master that owns a partition), checked with a
  short timeout and remembered for a second, so a frozen Redis turns it 503 within a second.
* ``/metrics``: Prometheus text, the sum of every worker's request and append counts (read from the files
  they write, see gunicorn.conf.py) and Redis's memory against its limit.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import socket
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import TypeVar

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from redis.exceptions import RedisError

from gateway.settings import load_gateway_settings
from shared import errors, probe_server
from shared.clock import new_id
from shared.config import load_settings
from shared.errors import StoreUnavailable
from shared.http import ProxyResponse, json_response, problem_response
from shared.keys import KeySpace
from shared.probe_server import ProbeAnswer
from shared.prometheus_metrics import RedisMemoryCollector
from shared.redis_client import NodeMemory, build_client, check_ready, memory

_PROBE_TIMEOUT_S = 0.8
T = TypeVar("T")


class Probes:
    def __init__(self, app: tuple[str, int]) -> None:
        self._app = app
        settings = load_settings()
        self._settings = dataclasses.replace(settings, redis_timeout_seconds=_PROBE_TIMEOUT_S)
        self._keys = KeySpace(settings.key_prefix, settings.partitions)
        self._lock = threading.Lock()
        self._ready: tuple[float, StoreUnavailable | None] = (0.0, None)
        #: Redis's memory as the last readiness check found it (read with it, on the same short timeout).
        self.last_memory: list[NodeMemory] = []
        self._client: redis.Redis | None = None

    def live(self) -> bool:
        host = "127.0.0.1" if self._app[0] in ("0.0.0.0", "", "::") else self._app[0]
        try:
            with socket.create_connection((host, self._app[1]), timeout=_PROBE_TIMEOUT_S):
                return True
        except OSError:
            return False

    def ready(self) -> StoreUnavailable | None:
        with self._lock:
            checked, problem = self._ready
            if time.monotonic() - checked < 1.0:
                return problem
            try:
                self.last_memory = self._on_redis(self._checked)
                problem = None
            except StoreUnavailable as exc:
                problem = exc
            self._ready = (time.monotonic(), problem)
            return problem

    def _checked(self, client: redis.Redis) -> list[NodeMemory]:
        """Ready, and how full: read together, on the same short timeout."""
        check_ready(client, self._keys)
        return memory(client)

    def memory(self) -> list[NodeMemory]:
        with self._lock:
            return self._on_redis(memory)

    def _on_redis(self, action: Callable[[redis.Redis], T]) -> T:
        """``action`` on the probe's client (built on first use), under the lock. A client that cannot even
        be built or discover its cluster is dropped, to be built again next time: ``StoreUnavailable``."""
        try:
            if self._client is None:
                self._client = build_client(self._settings)
            return action(self._client)
        except StoreUnavailable:
            raise
        except RedisError:  # a cluster whose topology cannot be discovered, say
            self._client = None
            raise StoreUnavailable.unreachable() from None


def metrics_registry(probes: Probes, metrics_dir: str) -> CollectorRegistry:
    """Every worker's counts (when they write them to ``metrics_dir``) and Redis's memory, read per scrape."""
    registry = CollectorRegistry()
    if metrics_dir:
        MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
    registry.register(RedisMemoryCollector(probes.memory))
    return registry


def answer(path: str, probes: Probes) -> ProxyResponse:
    """The probe's answer, in the same shape (and with the same problem documents) as the gateway's own."""
    request_id = new_id()
    if path == "/healthz":
        ok = probes.live()
        return json_response(200 if ok else 503, {"status": "ok" if ok else "gunicorn does not accept"},
                             {"X-Request-Id": request_id})
    if path == "/readyz":
        problem = probes.ready()
        if problem is not None:
            return problem_response(problem, path=path, request_id=request_id)
        return json_response(200, {"status": "ready", "redis_memory": [node.to_json() for node in probes.last_memory]},
                             {"X-Request-Id": request_id})
    return problem_response(errors.RouteNotFound(f"no route for GET {path[:200]}"), path=path[:200],
                            request_id=request_id)


def serve(bind: tuple[str, int], probes: Probes, registry: CollectorRegistry | None = None) -> ThreadingHTTPServer:
    def probe(path: str) -> ProbeAnswer:
        if path == "/metrics" and registry is not None:
            return 200, {"Content-Type": CONTENT_TYPE_LATEST}, generate_latest(registry)
        response = answer(path, probes)
        return response["statusCode"], response["headers"], response["body"].encode()

    return probe_server.serve(bind[0], bind[1], probe)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.health_server", description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True, help="host:port to answer the probes on")
    parser.add_argument("--app", required=True, help="gunicorn's bind address, host:port")
    args = parser.parse_args(argv)
    probes = Probes(_address(args.app))
    server = serve(_address(args.bind), probes, metrics_registry(probes, load_gateway_settings().metrics_dir))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
