"""Point the handlers' per-process wiring (``shared.runtime``) at a given Redis and key prefix."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from shared import runtime


@contextmanager
def wired(redis_url: str, prefix: str, partitions: int = 16, **extra: str) -> Iterator[None]:
    """Without AUTH_* settings in ``extra``, nobody is asked who they are (AUTH_MODE=none)."""
    auth = {"AUTH_MODE": "none", "AUTH_ISSUER": "", "AUTH_AUDIENCE": ""}
    values = {"REDIS_URL": redis_url, "LEDGER_KEY_PREFIX": prefix, "LEDGER_PARTITIONS": str(partitions),
              "LOG_LEVEL": "WARNING", **auth, **extra}
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    runtime.reset()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        runtime.reset()
