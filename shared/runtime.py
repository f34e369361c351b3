"""Per-process wiring: settings, one Redis connection pool and the service, built on first use.

This is state about *connections*, never about accounts: every request still rebuilds its account from
Redis. Lambda reuses it across invocations of a warm container; gunicorn workers each build their own.
"""

from __future__ import annotations

from functools import cache

import redis

from shared import logs
from shared.config import Settings, load_settings
from shared.event_store import RedisEventStore, connect
from shared.keys import KeySpace
from shared.service import AccountService


@cache
def settings() -> Settings:
    loaded = load_settings()
    logs.configure(loaded.log_level)
    return loaded


@cache
def redis_client() -> redis.Redis:
    return connect(settings())


@cache
def service() -> AccountService:
    config = settings()
    store = RedisEventStore(redis_client(), KeySpace(config.key_prefix, config.partitions),
                            config.idempotency_ttl_seconds)
    return AccountService(store, max_attempts=config.command_max_attempts,
                          snapshot_interval=config.snapshot_interval)


def reset() -> None:
    """Forget the wiring (tests change the environment between cases)."""
    settings.cache_clear()
    redis_client.cache_clear()
    service.cache_clear()
