"""Building the Redis client (a single node or a cluster) and telling "Redis cannot answer" from our bugs.

One client per process, reused by every request: ``runtime.py`` builds it on first use, inside
``unavailable_as_store_error`` so that a Redis that cannot be reached at start-up is a 503, never a 500.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import hiredis
import redis
from redis.backoff import EqualJitterBackoff
from redis.cluster import ClusterNode
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    NoScriptError,
    ReadOnlyError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from shared import deadlines
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
    """A connection that notes, once it is connected and about to write, that a script call leaves for
    Redis: from then on, a failure means "it may have been applied", not "nothing happened"."""

    _script_call = False

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self._script_call = bool(args) and args[0] in ("EVALSHA", "EVAL")
        super().send_command(*args, **kwargs)  # type: ignore[misc]

    def disconnect_on(self, error: Exception) -> None:
        """What the Retry does between attempts: drop the connection, so the next one reconnects."""
        self.disconnect()  # type: ignore[attr-defined]

    def send_script(self, packed: bytes) -> None:
        """Send a script call the caller packed itself (see ``ScriptRunner``)."""
        self._script_call = True
        self.send_packed_command((packed,))

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self._script_call:
            self._script_call = False
            if not getattr(self, "_sock", None):
                self.connect()  # type: ignore[attr-defined]  # failing here, nothing was sent
            _SCRIPT_SENT.set(True)
        super().send_packed_command(command, check_health)  # type: ignore[misc]


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


class SendingScripts:
    """``with SendingScripts() as sent:`` watches the script calls made inside the block; ``sent()`` tells
    whether any was handed to a socket. (A class, not a generator: it runs on every append.)"""

    def __enter__(self) -> Callable[[], bool]:
        self._token = _SCRIPT_SENT.set(False)
        return _SCRIPT_SENT.get

    def __exit__(self, *exc: object) -> None:
        _SCRIPT_SENT.reset(self._token)


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
    # A kept connection skips the pool's checkout, release and fork check on every command. It connects as
    # the client is built, which runtime.redis_client does inside its outage handling (a 503, then a retry).
    return redis.Redis(connection_pool=pool, single_connection_client=settings.redis_single_connection)


def describe_redis(settings: Settings) -> str:
    """Where the settings point, for a person: never the password (a URL may embed one)."""
    where = urlsplit(settings.redis_url)
    if where.scheme == "unix":
        return f"Redis unix://{where.path}, key prefix {settings.key_prefix!r}"
    address = f"{where.hostname}:{where.port or 6379}" + (where.path if where.path not in ("", "/") else "/0")
    if settings.redis_cluster:
        seeds = [f"{host}:{port}" for host, port in settings.redis_cluster_nodes]
        return f"Redis Cluster {','.join([address.split('/')[0], *seeds])}, key prefix {settings.key_prefix!r}"
    return f"Redis {where.scheme}://{address}, key prefix {settings.key_prefix!r}"


def text(value: object) -> str:
    """A reply's string, whether the client decoded it or not (None and missing fields as "")."""
    return value.decode() if isinstance(value, bytes) else str(value or "")


def is_cluster(client: object) -> bool:
    return isinstance(client, redis.RedisCluster)


@contextmanager
def unavailable_as_store_error() -> Iterator[None]:
    """Turn "Redis cannot answer" into the service's ``StoreUnavailable`` (a 503, never a 500)."""
    try:
        yield
    except UNAVAILABLE_ERRORS as exc:
        raise StoreUnavailable.unreachable() from exc


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


class NodeMemory(NamedTuple):
    node: str
    used_bytes: int
    #: Redis's ``maxmemory``; 0 when it has no limit.
    max_bytes: int

    @property
    def used_share(self) -> float | None:
        """``used_memory`` as a share of ``maxmemory`` (None without a limit)."""
        return self.used_bytes / self.max_bytes if self.max_bytes else None

    def to_json(self) -> dict[str, object]:
        share = self.used_share
        return {"node": self.node, "used_bytes": self.used_bytes, "max_bytes": self.max_bytes,
                "used_share": None if share is None else round(share, 4)}

    def describe(self) -> str:
        used = f"{self.used_bytes / 2**20:,.1f} MiB"
        if self.max_bytes == 0:
            return f"{self.node}: {used} used, no maxmemory (nothing stops it growing)"
        return f"{self.node}: {used} of {self.max_bytes / 2**20:,.1f} MiB maxmemory ({self.used_share:.0%})"


def memory(client: redis.Redis) -> list[NodeMemory]:
    """``used_memory`` against ``maxmemory`` on the single node, or on every master of a cluster."""
    with unavailable_as_store_error():
        if not is_cluster(client):
            info: Any = client.info("memory")
            return [NodeMemory("redis", int(info["used_memory"]), int(info.get("maxmemory", 0)))]
        cluster: Any = client
        replies = cluster.info("memory", target_nodes=cluster.PRIMARIES)
        return sorted(NodeMemory(name, int(reply["used_memory"]), int(reply.get("maxmemory", 0)))
                      for name, reply in replies.items())


class ScriptRunner:
    """Calls registered scripts, the store's every round trip.

    On a client that keeps one connection (``redis.Redis`` with ``single_connection_client``, built by
    ``build_client``), a call is packed here (see ``_pack``) and goes straight through that connection with
    redis-py's own Connection API (``send_packed_command`` and ``read_response``, under the client's lock
    and with the connection's Retry), skipping the client's command dispatch (argument filtering, response
    callbacks, instrumentation hooks): 19 µs less CPU per call, measured on these machines, of about 55.
    Any other client (a pool, a cluster, fakeredis) goes through redis-py's Script object as usual.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        kept = None if is_cluster(client) else getattr(client, "connection", None)
        # The fast path needs a connection that marks script sends (every client ``build_client`` makes).
        self._kept: Any = kept if isinstance(kept, _MarksScriptSends) else None
        self._lock: Any = getattr(client, "single_connection_lock", None) or threading.RLock()

    def register(self, source: str) -> Any:
        return self._client.register_script(source)

    def raw(self, *args: Any) -> Any:
        """A plain command whose reply the caller decodes. On the kept connection the reply comes as Redis
        sent it (redis-py's response callbacks run in the client, not the connection): a stream range stays
        a flat list instead of becoming a dict per entry. Through the client it may be reshaped."""
        if self._kept is None:
            _refuse_past_deadline()
            client: Any = self._client
            return client.execute_command(*args)
        connection = self._kept
        left = self._take_turn()
        try:
            exchange = _bounded(connection, partial(_send, connection, args), left)
            return connection.retry.call_with_retry(exchange, connection.disconnect_on)
        finally:
            self._lock.release()

    def __call__(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """One exchange on the kept connection, under the client's lock and with the connection's Retry
        (the exchange is a ``partial``, not a closure: one Python frame less per call)."""
        if self._kept is None:
            _refuse_past_deadline()
            return script(keys=keys, args=args)
        connection = self._kept
        left = self._take_turn()
        try:
            exchange = _bounded(connection, partial(_evalsha, connection, script, keys, args), left)
            return connection.retry.call_with_retry(exchange, connection.disconnect_on)
        finally:
            self._lock.release()

    def _take_turn(self) -> float | None:
        """The kept connection's lock, waiting no longer than the command's deadline (threads of one process
        share the connection, and one blocked on a frozen Redis holds it for a whole socket timeout)."""
        left = deadlines.remaining()
        if not self._lock.acquire(timeout=-1 if left is None else max(0.0, left)):
            raise RedisTimeoutError("the command's deadline passed waiting for the connection")
        return left


#: What a reconnect may wait on before its command is sent: the TCP connect, the handshake's health PING and
#: that PING's retry, each allowed a whole timeout.
_RECONNECT_STEPS = 3


def _reconnect_within(connection: Any, left: float) -> None:
    """Reconnect with each step's timeout cut to its share of what is left of the deadline."""
    if left <= 0:
        raise RedisTimeoutError("the command's deadline has passed")
    configured = connection.socket_timeout, connection.socket_connect_timeout
    share = left / _RECONNECT_STEPS
    connection.socket_timeout = min(configured[0], share)
    connection.socket_connect_timeout = min(configured[1] or share, share)
    try:
        connection.connect()
    finally:
        connection.socket_timeout, connection.socket_connect_timeout = configured
        if connection._sock is not None:
            connection._sock.settimeout(configured[0])


def _bounded(connection: Any, exchange: Callable[[], Any], left: float | None) -> Callable[[], Any]:
    """``exchange`` within the command's deadline (``shared.deadlines``), checked at each attempt of the
    connection's Retry: as it is while more time is left than the socket timeout (a healthy command: no cost
    but a clock read), with the socket timeout cut to what is left when less is, refused when nothing is. A
    reconnect takes from the same budget: a dropped idle connection is reconnected at a command's start with
    every timeout as configured, a late one with each step cut to a share of what is left."""
    if left is None:  # outside a command (the projector, the tools)
        return exchange

    def within_deadline() -> Any:
        left = deadlines.remaining()
        configured = connection.socket_timeout
        if left is None or configured is None:
            return exchange()
        if connection._sock is None and left < _RECONNECT_STEPS * configured:
            _reconnect_within(connection, left)
            left = deadlines.remaining() or 0.0
        if left >= configured:
            return exchange()
        if left <= 0:
            raise RedisTimeoutError("the command's deadline has passed")
        connection._sock.settimeout(left)
        try:
            return exchange()
        finally:
            if connection._sock is not None:  # still connected: the next command gets the full timeout
                connection._sock.settimeout(configured)

    return within_deadline


def _refuse_past_deadline() -> None:
    """On a pool or a cluster (no kept connection to bound), at least start nothing once the deadline passed."""
    left = deadlines.remaining()
    if left is not None and left <= 0:
        raise RedisTimeoutError("the command's deadline has passed")


# The runner packs its own commands with hiredis, as redis-py does when hiredis is installed, but without
# redis-py's per-argument pass (splitting a first argument that holds spaces, copying memoryviews): the runner's
# arguments are only str, bytes and int, and that pass cost ~8 % of a whole HTTP deposit's instructions
# (callgrind, 1.05 M -> 0.97 M per request).
_pack = hiredis.pack_command


def _send(connection: Any, args: tuple[Any, ...]) -> Any:
    connection.send_packed_command((_pack(args),))
    return connection.read_response()


def _send_script(connection: Any, packed: bytes) -> Any:
    connection.send_script(packed)
    return connection.read_response()


def _evalsha(connection: Any, script: Any, keys: list[str], args: list[Any]) -> Any:
    call = _pack(("EVALSHA", script.sha, len(keys), *keys, *args))
    try:
        return _send_script(connection, call)
    except NoScriptError:  # a restarted or newly promoted Redis has an empty script cache
        _send(connection, ("SCRIPT", "LOAD", script.script))
        return _send_script(connection, call)
