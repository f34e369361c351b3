"""Building the Redis client (a single node or a cluster) and telling "Redis cannot answer" from our bugs.

One client per process, reused by every request: ``runtime.py`` builds it on first use, inside
``unavailable_as_store_error`` so that a Redis that cannot be reached at start-up is a 503, never a 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.backoff import EqualJitterBackoff
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    ReadOnlyError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from shared.config import Settings
from shared.errors import StoreUnavailable

#: Errors that mean "Redis cannot answer now" (down, failing over, loading), as opposed to our bugs.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    MasterDownError,
    ClusterDownError,
    TryAgainError,
)


def build_client(settings: Settings) -> redis.Redis:
    """A client with a connection pool; build one per process and reuse it for every request."""
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_seconds,
        "socket_connect_timeout": settings.redis_timeout_seconds,
        # One quick retry hides a dropped idle connection; more would turn an outage into a hang.
        "retry": Retry(EqualJitterBackoff(cap=0.1, base=0.01), retries=1),
    }
    if settings.redis_password is not None:
        options["password"] = settings.redis_password
    if settings.redis_cluster:
        cluster: redis.Redis = redis.RedisCluster.from_url(settings.redis_url, **options)  # type: ignore[assignment]
        return cluster
    return redis.Redis.from_url(settings.redis_url, health_check_interval=30, **options)


def is_cluster(client: redis.Redis) -> bool:
    return isinstance(client, redis.RedisCluster)


@contextmanager
def unavailable_as_store_error() -> Iterator[None]:
    """Turn "Redis cannot answer" into the service's ``StoreUnavailable`` (a 503, never a 500)."""
    try:
        yield
    except UNAVAILABLE_ERRORS as exc:
        raise StoreUnavailable(f"Redis is unavailable: {type(exc).__name__}") from exc
