"""``RedisEventStore``: the event store on Redis Streams, the only write-side code that talks to Redis.

Every operation is one round trip over one account's keys, which share a hash tag, so the same calls run on a
single node and on Redis Cluster. Loading and appending are server-side scripts (loaded once per process,
called with ``EVALSHA``); reading a page of the history is a plain ``XRANGE``:

* ``load.lua``: the account's snapshot, the events after it and the idempotency record, in one round trip;
* ``append.lua``: checks the idempotency record and the expected version *before* its first write (Redis
  does not roll back a script that fails half-way), then writes the account stream, the partition log,
  the version record, the snapshot and the idempotency record;
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, cast

import orjson
import redis
from redis.exceptions import AskError, MovedError, NoScriptError, OutOfMemoryError

from shared.account import Account
from shared.archive import Archive, SegmentName
from shared.config import DEFAULT_ARCHIVE_AFTER_EVENTS, DEFAULT_LOG_MAX_ENTRIES
from shared.errors import ArchiveUnavailable, CorruptHistory, StoreFull, StoreUnavailable
from shared.event_store import (
    Appended,
    AppendOutcome,
    AppendUnknown,
    Conflict,
    Duplicate,
    IdempotencyRecord,
    IdempotencyWrite,
    Loaded,
    NotDurable,
    Position,
)
from shared.events import NewEvent, RecordedEvent
from shared.keys import KeySpace
from shared.principal import Owner
from shared.redis_client import (
    UNAVAILABLE_ERRORS,
    ScriptRunner,
    SendingScripts,
    is_cluster,
    text,
    unavailable_as_store_error,
)
from shared.stream_codec import decode_entries, encode, lua_fields


def _script(name: str) -> str:
    # A plain file read: importlib.resources would add milliseconds to every Lambda cold start.
    with open(os.path.join(os.path.dirname(__file__), name), encoding="utf-8") as source:
        return source.read()


def append_script(log_max_entries: int = DEFAULT_LOG_MAX_ENTRIES, archive_every: int = 0) -> str:
    """``archive_every``: ARCHIVE_AFTER_EVENTS when an archive is configured, 0 (never due) otherwise."""
    return (_script("append.lua").replace("--[[FIELDS]]", lua_fields())
            .replace("--[[LOG_MAX]]", str(int(log_max_entries)))
            .replace("--[[ARCHIVE_EVERY]]", str(int(archive_every))))


APPEND_LUA = append_script()
LOAD_LUA = _script("load.lua")
READ_LUA = _script("read.lua")

log = logging.getLogger("ledgerstream.store")

AppendRequest = tuple[str, int, Sequence[NewEvent]]


class RedisEventStore:
    """Snapshots are written by the append script, atomically with the events they summarise, whenever the
    service passes one (its policy: every ``SNAPSHOT_INTERVAL`` versions).

    With an ``archive``, an account's older events may live there instead of in its stream (behind a snapshot,
    so loading never needs them): ``read`` takes what it needs from both, and every append that passes a
    multiple of ``archive_every`` marks the account due for the archiver."""

    def __init__(self, client: redis.Redis, keys: KeySpace, idempotency_ttl_seconds: int,
                 wait_replicas: int = 0, wait_timeout_seconds: float = 1.0,
                 log_max_entries: int = DEFAULT_LOG_MAX_ENTRIES, archive: Archive | None = None,
                 archive_every: int = DEFAULT_ARCHIVE_AFTER_EVENTS) -> None:
        self._redis = client
        self._keys = keys
        self._ttl = idempotency_ttl_seconds
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = max(1, round(wait_timeout_seconds * 1000))  # WAIT counts in milliseconds
        self._run = ScriptRunner(client)
        self._archive = archive
        self._append_source = append_script(log_max_entries, archive_every if archive is not None else 0)
        self._append = self._run.register(self._append_source)
        self._load = self._run.register(LOAD_LUA)
        self._read = self._run.register(READ_LUA)

    @property
    def keys(self) -> KeySpace:
        return self._keys

    def load(self, account_id: str, idempotency_key: str | None = None) -> Loaded:
        account_keys = self._keys.account(account_id)
        keys = [account_keys.stream, account_keys.snapshot]
        if idempotency_key is not None:
            keys.append(account_keys.idempotency(idempotency_key))
        try:
            state, entries, record = self._run(self._load, keys, [])
        except UNAVAILABLE_ERRORS as exc:
            raise StoreUnavailable.unreachable() from exc
        idempotency = _record(record) if record else None
        snapshot = None if state is None else _snapshot_from(account_id, state)
        if snapshot is _OUTDATED:  # written before snapshots held the owner: fold the whole stream once
            return Loaded(self.read(account_id), idempotency, None)
        return Loaded(decode_entries(entries), idempotency, snapshot)

    def read(self, account_id: str, after_version: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        account_keys = self._keys.account(account_id)
        keys, args = [account_keys.stream, account_keys.snapshot], [f"{after_version + 1}-0", limit or ""]
        try:
            (archived, head_first), entries = (self._read_on_node(keys, args) if is_cluster(self._redis)
                                               else self._run(self._read, keys, args))
        except UNAVAILABLE_ERRORS as exc:
            raise StoreUnavailable.unreachable() from exc
        live = decode_entries(entries)
        through = int(archived or 0)
        if after_version >= through:
            return live
        if self._archive is None:
            log.error("versions 1 to %d of %s are archived, and no ARCHIVE_URL is set", through, account_id)
            raise ArchiveUnavailable("this part of the account's history is archived, and this deployment has "
                                     "no archive configured")
        older = self._archive.read(account_id, after_version, SegmentName(int(head_first or 0), through), limit)
        return older + (live if limit is None else live[:max(0, limit - len(older))])

    def _read_on_node(self, keys: list[str], args: list[str | int]) -> Any:
        """The read script on the node that owns the account. redis-py's cluster client loads a script missing
        from a node's cache on every master, so one master down would fail reads of accounts on the others."""
        node: Any = self._node(keys[0])
        for attempt in (1, 2):
            try:
                return node.evalsha(self._read.sha, len(keys), *keys, *args)
            except NoScriptError:
                if attempt == 2:
                    raise
                node.script_load(READ_LUA)  # on this node only
            except (MovedError, AskError) as exc:  # the slot moved: nothing was read
                cast(Any, self._redis).nodes_manager.initialize()
                raise StoreUnavailable("the cluster moved this account's slot; retry the request") from exc
        raise StoreUnavailable.unreachable()

    def version_record(self, account_id: str) -> int:
        """The account's version record: what the next append is checked against (0: no such account)."""
        with unavailable_as_store_error():
            found = self._run.raw("GET", self._keys.version(account_id))
        return int(found or 0)

    def archived_through(self, account_id: str) -> int:
        """The last version of the account that lives in the archive rather than its stream (0: none)."""
        return self.archive_head(account_id).last

    def archive_head(self, account_id: str) -> SegmentName:
        """The account's last committed archive segment (``SegmentName(0, 0)``: nothing archived)."""
        with unavailable_as_store_error():
            found: Any = self._run.raw("HMGET", self._keys.snapshot(account_id), "segment", "archived")
        return SegmentName(int(found[0] or 0), int(found[1] or 0))

    def append(self, account_id: str, expected_version: int, events: Sequence[NewEvent],
               idempotency: IdempotencyWrite | None = None, snapshot: Account | None = None) -> AppendOutcome:
        keys, args = append_arguments(self._keys, self._ttl, account_id, expected_version, events, idempotency,
                                      snapshot)
        if self._wait_replicas:
            return self._append_and_wait(account_id, keys, args)
        with SendingScripts() as sent:
            try:
                reply = self._run(self._append, keys, args)
            except OutOfMemoryError as exc:  # Redis's answer, before the script's first write: nothing written
                raise StoreFull.refused() from exc
            except UNAVAILABLE_ERRORS as exc:
                if sent():  # it left for Redis: applied or not, in flight or not, only a later read can tell
                    raise AppendUnknown(f"no reply to an append to {account_id}: {type(exc).__name__}") from exc
                raise StoreUnavailable.unreachable() from exc
        return _outcome(reply, self._keys.partition_of(account_id))

    def log_tail(self, account_id: str) -> Position:
        partition = self._keys.partition_of(account_id)
        with unavailable_as_store_error():
            last: Any = self._run.raw("XREVRANGE", self._keys.partition_log(partition), "+", "-", "COUNT", 1)
        return Position(partition, text(last[0][0]) if last else "0-0")

    def confirm_durable(self, account_id: str) -> None:
        """With ``wait_replicas``, write to the partition's sync key and WAIT on the same connection: replicas
        apply writes in order, so once they confirm this one, they hold every earlier write too."""
        if not self._wait_replicas:
            return
        key = self._keys.sync(self._keys.partition_of(account_id))
        with unavailable_as_store_error():
            pipe = self._node(key).pipeline(transaction=False)
            pipe.incr(key)
            pipe.wait(self._wait_replicas, self._wait_timeout_ms)
            _, confirmed = pipe.execute()
        if int(confirmed) < self._wait_replicas:
            raise NotDurable(int(confirmed), self._wait_replicas)

    def _append_and_wait(self, account_id: str, keys: list[str], args: list[bytes | str | int]) -> AppendOutcome:
        """The append and a WAIT on one connection, in one round trip: WAIT counts the replicas that have
        this connection's writes. Any failure here is an unknown outcome (the pair may have been sent)."""
        node = self._node(keys[0])
        for attempt in (1, 2):
            try:
                pipe = node.pipeline(transaction=False)
                pipe.evalsha(self._append.sha, len(keys), *keys, *args)
                pipe.wait(self._wait_replicas, self._wait_timeout_ms)
                reply, confirmed = pipe.execute(raise_on_error=False)
            except UNAVAILABLE_ERRORS as exc:
                raise AppendUnknown(f"no reply to an append: {type(exc).__name__}") from exc
            if isinstance(reply, NoScriptError) and attempt == 1:
                node.script_load(self._append_source)  # a restarted or newly promoted node has an empty script cache
                continue
            if isinstance(reply, OutOfMemoryError):  # refused before the script's first write
                raise StoreFull.refused() from reply
            if isinstance(reply, MovedError | AskError):  # refused before it ran: nothing was written
                cast(Any, self._redis).nodes_manager.initialize()
                raise StoreUnavailable("the cluster moved this account's slot; retry the request")
            if isinstance(reply, Exception):
                raise reply
            outcome = _outcome(reply, self._keys.partition_of(account_id))
            if isinstance(outcome, Appended) and int(confirmed) < self._wait_replicas:
                raise NotDurable(int(confirmed), self._wait_replicas)
            return outcome
        raise StoreUnavailable.unreachable()  # a script cache that will not take the script

    def _node(self, key: str) -> redis.Redis:
        """The client of the node that owns ``key`` (on a single node, the client itself)."""
        if not is_cluster(self._redis):
            return self._redis
        cluster: Any = self._redis
        node_client: redis.Redis = cluster.get_redis_connection(cluster.get_node_from_key(key))
        return node_client

    def append_many(self, requests: Sequence[AppendRequest]) -> list[AppendOutcome]:
        """Several appends (to different accounts, or to one in order), each as atomic as ``append``.

        For bulk loads: one pipelined round trip on a single node. A cluster client refuses scripts in a
        pipeline, so there they go one by one (still one round trip each, routed to the account's node).
        """
        if is_cluster(self._redis):
            return [self.append(account_id, version, events) for account_id, version, events in requests]
        with unavailable_as_store_error():
            pipe = self._redis.pipeline(transaction=False)
            for account_id, version, events in requests:
                keys, args = append_arguments(self._keys, self._ttl, account_id, version, events)
                self._append(keys=keys, args=args, client=pipe)
            return [_outcome(reply, self._keys.partition_of(account_id))
                    for reply, (account_id, _, _) in zip(pipe.execute(), requests, strict=True)]

def append_arguments(keys: KeySpace, ttl: int, account_id: str, expected_version: int, events: Sequence[NewEvent],
                     idempotency: IdempotencyWrite | None = None,
                     snapshot: Account | None = None) -> tuple[list[str], list[bytes | str | int]]:
    """KEYS and ARGV of ``append.lua`` for one append (its calling convention, documented in the script)."""
    if not events:
        raise ValueError("append needs at least one event")
    account_keys = keys.account(account_id)
    script_keys = [account_keys.stream, account_keys.version, account_keys.log, account_keys.snapshot,
                   account_keys.archive_due]
    args: list[bytes | str | int] = [expected_version, "" if snapshot is None else snapshot_json(snapshot),
                                     len(events)]
    for event in events:
        args += encode(event)
    if idempotency is not None:
        script_keys.append(account_keys.idempotency(idempotency.key))
        args += [_record_value(idempotency.record), ttl]
    return script_keys, args


def _outcome(reply: Any, partition: int) -> AppendOutcome:
    status = reply[0]
    if status == b"ok":
        return Appended(int(reply[1]), Position(partition, text(reply[2])))
    if status == b"conflict":
        return Conflict(int(reply[1]))
    if status == b"duplicate":
        return Duplicate(_record(reply[1:]))
    raise RuntimeError(f"unexpected reply from the append script: {reply!r}")


#: Bytes of a SHA-256 fingerprint, kept binary: half its hex text.
_FINGERPRINT_BYTES = 32


def _record_value(record: IdempotencyRecord) -> bytes:
    """An idempotency record as one Redis string: the fingerprint's bytes, then the result. 233 bytes per
    record in Redis against 533 as the hash of two text fields it replaces (``make bench BENCH=record-size``)."""
    return bytes.fromhex(record.fingerprint) + record.result.encode()


def _record(parts: list[bytes]) -> IdempotencyRecord:
    """A record as the scripts return it: ``[value]``, or ``[fingerprint, result]`` for a hash written before
    records were strings (they expire within IDEMPOTENCY_TTL_SECONDS)."""
    if len(parts) == 1:
        value = parts[0]
        return IdempotencyRecord(value[:_FINGERPRINT_BYTES].hex(), value[_FINGERPRINT_BYTES:].decode())
    return IdempotencyRecord(parts[0].decode(), parts[1].decode())


def snapshot_json(state: Account) -> bytes:
    return orjson.dumps({"version": state.version, "balance": state.balance, "opened_at": state.opened_at,
                         "updated_at": state.updated_at,
                         "owner": None if state.owner is None else [state.owner.issuer, state.owner.subject]})


#: A snapshot from before snapshots held the owner: it cannot say who owns the account, so it is not used
#: (the service writes a new one with the next append, because that load read more than the interval).
_OUTDATED = Account("")


def _snapshot_from(account_id: str, raw: bytes) -> Account:
    try:
        data = orjson.loads(raw)
        if "owner" not in data:
            return _OUTDATED
        issuer, subject = data["owner"] or (None, None)
        owner = None if issuer is None else Owner(str(issuer), str(subject))
        return Account(account_id, int(data["balance"]), int(data["version"]), data["opened_at"], data["updated_at"],
                       owner)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptHistory(f"unreadable snapshot of {account_id}: {exc}") from exc
