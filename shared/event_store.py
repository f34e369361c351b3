"""The event store: the only module that talks to Redis for the write side.

``EventStore`` is the port the service depends on; ``RedisEventStore`` implements it on Redis Streams
(real Redis, Redis Cluster and fakeredis alike). One Lua script performs every append atomically: it
checks the idempotency record and the expected version *before* its first write (Redis does not roll
back a script that fails half-way), then writes the account stream, the partition log, the version
record and the idempotency record.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import redis
from redis.backoff import EqualJitterBackoff
from redis.exceptions import BusyLoadingError, ReadOnlyError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from shared.account import Account
from shared.config import Settings
from shared.errors import CorruptHistory, StoreUnavailable
from shared.events import NewEvent, RecordedEvent
from shared.keys import KeySpace

#: Errors that mean "Redis cannot answer now" (down, failing over, loading), as opposed to our bugs.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,
)
try:  # cluster-only failures; the names exist in every redis-py we support, but stay defensive
    from redis.exceptions import ClusterDownError, TryAgainError

    UNAVAILABLE_ERRORS += (ClusterDownError, TryAgainError)
except ImportError:  # pragma: no cover
    pass


@dataclass(frozen=True)
class IdempotencyRecord:
    """What a first request with an idempotency key produced, as the service serialised it."""

    fingerprint: str
    result: str


@dataclass(frozen=True)
class Claim:
    """An idempotency key to record atomically with the events it produced."""

    key: str
    record: IdempotencyRecord


@dataclass(frozen=True)
class Loaded:
    """What a command needs: the events after ``snapshot`` (all of them if there is none)."""

    events: list[RecordedEvent]
    idempotency: IdempotencyRecord | None = None
    snapshot: Account | None = None

    @property
    def version(self) -> int:
        if self.events:
            return self.events[-1].version
        return self.snapshot.version if self.snapshot else 0


@dataclass(frozen=True)
class Appended:
    version: int


@dataclass(frozen=True)
class Conflict:
    current_version: int


@dataclass(frozen=True)
class Duplicate:
    record: IdempotencyRecord


AppendOutcome = Appended | Conflict | Duplicate


class EventStore(Protocol):
    """The write side's persistence port. Every implementation passes ``tests/contract``."""

    def load(self, account_id: str, idempotency_key: str | None = None) -> Loaded:
        """The account's latest snapshot and the events after it (and the idempotency record for
        ``idempotency_key``, if any)."""
        ...

    def read(self, account_id: str, after_version: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        """Events with version > ``after_version``, oldest first, at most ``limit`` of them."""
        ...

    def append(self, account_id: str, expected_version: int, events: Sequence[NewEvent],
               claim: Claim | None = None, snapshot: Account | None = None) -> AppendOutcome:
        """Append ``events`` as versions ``expected_version + 1 ...`` if, and only if, the account is at
        ``expected_version`` and ``claim``'s key is unused. Nothing is written otherwise. ``snapshot``, the
        state the events lead to, is stored with them when given."""
        ...


def connect(settings: Settings) -> redis.Redis:
    """A client with a connection pool; create one per process and reuse it for every request."""
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_seconds,
        "socket_connect_timeout": settings.redis_timeout_seconds,
        # One quick retry hides a dropped idle connection; more would turn an outage into a hang.
        "retry": Retry(EqualJitterBackoff(cap=0.1, base=0.01), retries=1),
        "health_check_interval": 30,
    }
    if settings.redis_password is not None:
        options["password"] = settings.redis_password
    if settings.redis_cluster:
        del options["health_check_interval"]
        cluster: redis.Redis = redis.RedisCluster.from_url(settings.redis_url, **options)  # type: ignore[assignment]
        return cluster
    return redis.Redis.from_url(settings.redis_url, **options)


@contextmanager
def translate_unavailable() -> Iterator[None]:
    """Turn "Redis cannot answer" into the service's ``StoreUnavailable`` (a 503, never a 500)."""
    try:
        yield
    except UNAVAILABLE_ERRORS as exc:
        raise StoreUnavailable(f"Redis is unavailable: {type(exc).__name__}") from exc


def _script(name: str) -> str:
    # A plain file read: importlib.resources would add milliseconds to every Lambda cold start.
    with open(os.path.join(os.path.dirname(__file__), name), encoding="utf-8") as source:
        return source.read()


_APPEND_SCRIPT = _script("append.lua")
_LOAD_SCRIPT = _script("load.lua")
_NEW_EVENT_FIELD_COUNT = 14  # seven field/value pairs per event, see _event_fields


class RedisEventStore:
    """A load is one script call (``load.lua``): the account's snapshot, if any, and only the events after
    it. Snapshots are written by the append script, atomically with the events they summarise, whenever the
    service passes one (its policy: every ``SNAPSHOT_INTERVAL`` versions)."""

    def __init__(self, client: redis.Redis, keys: KeySpace, idempotency_ttl_seconds: int) -> None:
        self._redis = _without_xrange_parsing(client)
        self._keys = keys
        self._ttl = idempotency_ttl_seconds
        self._append = client.register_script(_APPEND_SCRIPT)
        self._load = client.register_script(_LOAD_SCRIPT)

    @property
    def keys(self) -> KeySpace:
        return self._keys

    def load(self, account_id: str, idempotency_key: str | None = None) -> Loaded:
        keys = [self._keys.stream(account_id), self._keys.snapshot(account_id)]
        if idempotency_key is not None:
            keys.append(self._keys.idempotency(account_id, idempotency_key))
        with translate_unavailable():
            state, entries, record = self._load(keys=keys)
        snapshot = None if state is None else _snapshot_from(account_id, state)
        idempotency = None
        if record and record[0] is not None:
            idempotency = IdempotencyRecord(record[0].decode(), record[1].decode())
        return Loaded(decode_entries(entries), idempotency, snapshot)

    def read(self, account_id: str, after_version: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        with translate_unavailable():
            entries = self._redis.xrange(self._keys.stream(account_id), f"{after_version + 1}-0", "+",
                                         count=limit)
        return decode_entries(entries)

    def append(self, account_id: str, expected_version: int, events: Sequence[NewEvent],
               claim: Claim | None = None, snapshot: Account | None = None) -> AppendOutcome:
        keys, args = self.script_arguments(account_id, expected_version, events, claim, snapshot)
        with translate_unavailable():
            reply = self._append(keys=keys, args=args)
        status = reply[0]
        if status == b"ok":
            return Appended(int(reply[1]))
        if status == b"conflict":
            return Conflict(int(reply[1]))
        if status == b"duplicate":
            return Duplicate(IdempotencyRecord(reply[1].decode(), reply[2].decode()))
        raise RuntimeError(f"unexpected reply from the append script: {reply!r}")


    def script_arguments(self, account_id: str, expected_version: int, events: Sequence[NewEvent],
                         claim: Claim | None = None,
                         snapshot: Account | None = None) -> tuple[list[str], list[bytes | str | int]]:
        """KEYS and ARGV of the append script for this append (also used to pipeline bulk loads)."""
        if not events:
            raise ValueError("append needs at least one event")
        keys = [self._keys.stream(account_id), self._keys.version(account_id),
                self._keys.partition_log(self._keys.partition_of(account_id)), self._keys.snapshot(account_id)]
        args: list[bytes | str | int] = [expected_version, len(events)]
        if claim is None:
            args += ["", "", 0]
        else:
            keys.append(self._keys.idempotency(account_id, claim.key))
            args += [claim.record.fingerprint, claim.record.result, self._ttl]
        args.append("" if snapshot is None else _snapshot_json(snapshot))
        for event in events:
            args += _event_fields(event)
        return keys, args

    @property
    def append_script(self) -> Any:
        """The registered append script (a redis-py ``Script``; call it with ``client=`` a pipeline)."""
        return self._append


def _event_fields(event: NewEvent) -> list[bytes | str | int]:
    # Field order is what `redis-cli XRANGE` shows; the script puts "version" first.
    return [
        _NEW_EVENT_FIELD_COUNT,
        "type", event.type,
        "account_id", event.account_id,
        "event_id", event.event_id,
        "time", event.recorded_at,
        "schema", event.schema,
        "data", orjson.dumps(event.data),
        "meta", event.metadata.to_json(),
    ]


def _without_xrange_parsing(client: redis.Redis) -> redis.Redis:
    """A client on the same connection pool whose XRANGE replies stay flat ``[id, [field, value, ...]]``,
    as script replies (load.lua) always are.

    redis-py would build a dict per entry; rebuilding reads every event of an account on every request,
    and decoding the flat list by position (the append script fixes the field order) is the cheaper path.
    """
    if type(client).__name__ == "RedisCluster" or not isinstance(client, redis.Redis):
        return client  # cluster clients route per node; they keep redis-py's dict parsing
    own = redis.Redis(connection_pool=client.connection_pool)
    own.set_response_callback("XRANGE", _identity)
    return own


def _identity(response: Any, **options: Any) -> Any:
    return response


def _snapshot_json(state: Account) -> bytes:
    return orjson.dumps({"version": state.version, "balance": state.balance, "opened_at": state.opened_at,
                         "updated_at": state.updated_at})


def _snapshot_from(account_id: str, raw: bytes) -> Account:
    try:
        data = orjson.loads(raw)
        return Account(account_id, int(data["balance"]), int(data["version"]), data["opened_at"], data["updated_at"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptHistory(f"unreadable snapshot of {account_id}: {exc}") from exc


def decode_entries(entries: Any) -> list[RecordedEvent]:
    """Decode an XRANGE/XREADGROUP reply: (entry id, fields) pairs, the fields as a dict or a flat list."""
    return [decode_fields(fields) if type(fields) is dict else _decode_flat(fields) for _, fields in entries]


def _decode_flat(flat: list[bytes]) -> RecordedEvent:
    # Positions as written by append.lua: version, type, account_id, event_id, time, schema, data, meta.
    if len(flat) != 16 or flat[0] != b"version" or flat[12] != b"data":
        return decode_fields(dict(zip(flat[::2], flat[1::2], strict=True)))
    try:
        return RecordedEvent(flat[5].decode(), int(flat[1]), flat[3].decode(), orjson.loads(flat[13]),
                             flat[7].decode(), flat[9].decode(), int(flat[11]), flat[15].decode())
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise CorruptHistory(f"unreadable stream entry: {type(exc).__name__}: {exc}") from exc


def decode_fields(fields: dict[bytes, bytes]) -> RecordedEvent:
    """Decode one stream entry (from an account stream or a partition log) into an event."""
    try:
        return RecordedEvent(
            account_id=fields[b"account_id"].decode(),
            version=int(fields[b"version"]),
            type=fields[b"type"].decode(),
            data=orjson.loads(fields[b"data"]),
            event_id=fields[b"event_id"].decode(),
            recorded_at=fields[b"time"].decode(),
            schema=int(fields[b"schema"]),
            metadata_json=fields[b"meta"].decode(),
        )
    except (KeyError, ValueError, orjson.JSONDecodeError) as exc:
        raise CorruptHistory(f"unreadable stream entry: {type(exc).__name__}: {exc}") from exc
