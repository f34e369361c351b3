"""The container gateway's settings: gunicorn's, and the side process that answers its health probes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.config import Environment


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity (which a container's cpuset narrows), not the host's count.
    A CPU quota (``docker run --cpus``) is not visible here; set WEB_CONCURRENCY there."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class GatewaySettings:
    bind: str = "0.0.0.0:8080"  # all interfaces: inside a container, behind the proxy
    #: The cores this process may run on, plus one (see docs/benchmarks.md for why).
    workers: int = field(default_factory=lambda: usable_cores() + 1)
    worker_class: str = "sync"
    threads: int = 1
    timeout_seconds: int = 30
    graceful_timeout_seconds: int = 10
    keepalive_seconds: int = 5
    #: Where the health process listens (host:port); empty: no health process (``make run``, tests).
    health_bind: str = ""
    #: Take the request id from the X-Request-Id header, because a proxy we trust (nginx) sets it.
    trust_request_id: bool = False
    #: Where the workers write their metrics for the health process to sum (prometheus_client's
    #: PROMETHEUS_MULTIPROC_DIR); empty: a fresh directory per gunicorn start.
    metrics_dir: str = ""


def load_gateway_settings(environ: Mapping[str, str] | None = None) -> GatewaySettings:
    env = Environment(environ)
    defaults = GatewaySettings()
    return GatewaySettings(
        bind=env.address("GUNICORN_BIND", defaults.bind),
        workers=env.number("WEB_CONCURRENCY", defaults.workers, int, 1, 64),
        worker_class=env.choice("GUNICORN_WORKER_CLASS", defaults.worker_class, ("SYNC", "GTHREAD")).lower(),
        threads=env.number("GUNICORN_THREADS", defaults.threads, int, 1, 64),
        timeout_seconds=env.number("GUNICORN_TIMEOUT_SECONDS", defaults.timeout_seconds, int, 5, 3_600),
        graceful_timeout_seconds=env.number("GUNICORN_GRACEFUL_TIMEOUT_SECONDS", defaults.graceful_timeout_seconds,
                                            int, 1, 600),
        keepalive_seconds=env.number("GUNICORN_KEEPALIVE_SECONDS", defaults.keepalive_seconds, int, 0, 600),
        health_bind=env.address("GATEWAY_HEALTH_BIND", defaults.health_bind) if env.raw("GATEWAY_HEALTH_BIND")
        else "",
        trust_request_id=env.flag("TRUST_PROXY_REQUEST_ID", defaults.trust_request_id),
        metrics_dir=env.raw("PROMETHEUS_MULTIPROC_DIR") or defaults.metrics_dir,
    )
