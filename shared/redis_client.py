"""Building the Redis client (a single node or a cluster) and telling "Redis cannot answer" from our bugs.

One client per process, reused by every request: ``runtime.py`` builds it on first use, inside
``unavailable_as_store_error`` so that a Redis that cannot be reached at start-up is a 503, never a 500.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import redis
from redis.backoff import EqualJitterBackoff
from redis.cluster import ClusterNode
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
from shared.keys import KeySpace

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


#: Set when a script call has been handed to a socket (see ``sending_scripts``).
_SCRIPT_SENT: ContextVar[bool] = ContextVar("ledgerstream_script_sent", default=False)


class _MarksScriptSends:
    """A connection that notes, before it writes, that a script call leaves for Redis: from then on, a
    failure means "it may have been applied", not "nothing happened"."""

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        if args and args[0] in ("EVALSHA", "EVAL"):
            _SCRIPT_SENT.set(True)
        super().send_command(*args, **kwargs)  # type: ignore[misc]


_TRACKING: dict[type[Any], type[Any]] = {}


def _tracking(connection_class: type[Any]) -> type[Any]:
    if issubclass(connection_class, _MarksScriptSends):
        return connection_class
    if connection_class not in _TRACKING:
        _TRACKING[connection_class] = type(f"Tracking{connection_class.__name__}",
                                           (_MarksScriptSends, connection_class), {})
    return _TRACKING[connection_class]


class TrackingConnectionPool(redis.ConnectionPool):
    """A pool whose connections (plain, TLS or unix socket, as the URL says) mark script sends."""

    def __init__(self, connection_class: type[Any] = redis.Connection, **kwargs: Any) -> None:
        super().__init__(connection_class=_tracking(connection_class), **kwargs)


@contextmanager
def sending_scripts() -> Iterator[Callable[[], bool]]:
    """Watch the script calls made inside the block; the callable tells whether any was sent."""
    token = _SCRIPT_SENT.set(False)
    try:
        yield _SCRIPT_SENT.get
    finally:
        _SCRIPT_SENT.reset(token)


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
        # Builds the slot map now, from the first seed that answers; none answering raises
        # RedisClusterException, which the caller reports as an outage (see ``runtime.redis_client``).
        seeds = [ClusterNode(host, port) for host, port in settings.redis_cluster_nodes]  # type: ignore[no-untyped-call]
        cluster: redis.Redis = redis.RedisCluster(url=settings.redis_url, startup_nodes=seeds,  # type: ignore[assignment]
                                                  connection_pool_class=TrackingConnectionPool, **options)
        return cluster
    pool = TrackingConnectionPool.from_url(settings.redis_url, health_check_interval=30, **options)
    return redis.Redis(connection_pool=pool)


def is_cluster(client: object) -> bool:
    return isinstance(client, redis.RedisCluster)


@contextmanager
def unavailable_as_store_error() -> Iterator[None]:
    """Turn "Redis cannot answer" into the service's ``StoreUnavailable`` (a 503, never a 500)."""
    try:
        yield
    except UNAVAILABLE_ERRORS as exc:
        raise StoreUnavailable(f"Redis is unavailable: {type(exc).__name__}") from exc


def check_ready(client: redis.Redis, keys: KeySpace) -> None:
    """Raise ``StoreUnavailable`` unless requests can succeed now.

    A single node must answer PING. On a cluster, every master that owns one of the partitions must answer
    and report ``cluster_state:ok``: one node answering says nothing about the others.
    """
    with unavailable_as_store_error():
        if not is_cluster(client):
            client.ping()
            return
        cluster: Any = client
        owners: dict[str, list[int]] = {}
        for partition in range(keys.partitions):
            node = cluster.get_node_from_key(keys.partition_log(partition))
            owners.setdefault(node.name, []).append(partition)
        for name, partitions in owners.items():
            try:
                info = cluster.cluster_info(target_nodes=cluster.get_node(node_name=name))
            except UNAVAILABLE_ERRORS as exc:
                # The address goes to the log with the cause; the client learns which partitions are affected.
                raise StoreUnavailable(f"Redis Cluster is not ready: the master owning partitions {partitions} "
                                       "does not answer") from exc
            state = info.get("cluster_state") if isinstance(info, dict) else None
            if state != "ok":
                raise StoreUnavailable(f"Redis Cluster is not ready: a master owning partitions {partitions} "
                                       f"reports cluster_state:{state}")
