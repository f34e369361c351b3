"""The container gateway as it runs in production: gunicorn with ``gateway/gunicorn.conf.py``, on a free port."""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devstack.process import spawn, terminate
from devstack.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def answers(url: str, post: bytes | None = None) -> bool:
    """The URL answers 2xx or 3xx (a GET, or a POST of ``post``)."""
    request = urllib.request.Request(url, data=post, method="GET" if post is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def live_gateway(settings: dict[str, str], workers: int = 2, log: Path | None = None) -> Iterator[str]:
    """Start gunicorn with ``settings`` added to this environment; yield its base URL; stop it after.
    ``log`` collects its output (gunicorn's lines and ours)."""
    port = free_port()
    env = {**os.environ, "LOG_LEVEL": "WARNING", "GUNICORN_BIND": f"127.0.0.1:{port}",
           "WEB_CONCURRENCY": str(workers), **settings}
    base = f"http://127.0.0.1:{port}"
    process = spawn([sys.executable, "-m", "gunicorn", "--config", "gateway/gunicorn.conf.py", "gateway:create_app()"],
                    lambda: answers(f"{base}/healthz"), 30, "gunicorn", cwd=ROOT, env=env, own_session=True,
                    log=log)
    try:
        yield base
    finally:
        terminate(process, grace=20)
