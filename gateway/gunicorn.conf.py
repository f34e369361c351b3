"""gunicorn settings for the gateway, from the environment (GUNICORN_BIND, WEB_CONCURRENCY, ...), validated by
gateway/settings.py like every other setting: a bad value stops gunicorn with a message naming the variable.

With GATEWAY_HEALTH_BIND set, a small side process answers /healthz, /readyz and /metrics on that address, so
that a probe is answered within a second even while every worker is busy (a frozen Redis, a flood of requests),
and the metrics are the sum over every worker, never on the public port.
"""

import gc
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from gateway.settings import load_gateway_settings
from shared.config import ConfigError, load_auth_settings

try:
    _settings = load_gateway_settings()
    load_auth_settings()  # an API nobody configured authentication for does not start
except ConfigError as error:
    raise SystemExit(f"gunicorn: {error}") from None

# Each worker writes its counts to files here and the health process sums them. prometheus_client reads the
# directory from the environment when it is first imported, so it is set before any worker exists (and before
# anything here imports it). A directory named by the operator is emptied: a previous run's counts would be
# added to this one's.
if _settings.metrics_dir:
    _metrics_dir, _own_metrics_dir = Path(_settings.metrics_dir), False
    _metrics_dir.mkdir(parents=True, exist_ok=True)
    for _stale in _metrics_dir.glob("*.db"):
        _stale.unlink()
else:
    _metrics_dir, _own_metrics_dir = Path(tempfile.mkdtemp(prefix="ledgerstream-metrics-")), True
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir)

bind = _settings.bind
workers = _settings.workers
worker_class = _settings.worker_class
threads = _settings.threads
timeout = _settings.timeout_seconds
graceful_timeout = _settings.graceful_timeout_seconds
keepalive = _settings.keepalive_seconds
# Bounds on what a client may send, for when no proxy stands in front (the proxy's are tighter).
limit_request_line = 4094
limit_request_fields = 64
limit_request_field_size = 8190
# The application logs one JSON line per request; gunicorn's own access log would double it. gunicorn's other
# lines are JSON too (gateway/gunicorn_logging.py).
accesslog = None
errorlog = "-"
logger_class = "gateway.gunicorn_logging.JsonLogger"
control_socket_disable = True

_children: "list[subprocess.Popen[bytes]]" = []


def when_ready(server: Any) -> None:
    if _settings.health_bind:
        _children.append(subprocess.Popen([sys.executable, "-m", "gateway.health_server",
                                           "--bind", _settings.health_bind, "--app", bind]))


def post_worker_init(worker: Any) -> None:
    # What the worker has loaded (modules, the app, the wiring) lives as long as the worker: freezing it takes
    # it out of the collector's generations, so collections scan only what requests allocate (the practice
    # the gc.freeze documentation describes for servers). 1.7 % fewer instructions per request (bench 2c).
    gc.freeze()


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # its counters stay in the sum; its live gauges go


def on_exit(server: Any) -> None:
    for child in _children:
        if child.poll() is None:
            child.terminate()
            child.wait(10)
    if _own_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
