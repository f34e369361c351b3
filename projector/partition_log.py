"""A partition log as recovery, ``status`` and the rebuild read it: its entries by id and range, its end, and
what its consumer group has delivered and still holds pending. Read-only; every command touches one
partition's keys, so all of it runs unchanged on a cluster.

This module also translates Redis's errors into the project's for every projector adapter (``redis_errors``):
an outage becomes ``StoreUnavailable``, a vanished log or group ``GroupMissing``. The loop sees only those.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import OutOfMemoryError, RedisClusterException, ResponseError

from projector.projection import LogEntry, entry_position
from shared.errors import CorruptHistory, StoreFull, StoreUnavailable
from shared.keys import KeySpace
from shared.redis_client import UNAVAILABLE_ERRORS, text
from shared.stream_codec import decode_mapping

log = logging.getLogger("ledgerstream.projector")


class GroupMissing(Exception):
    """The partition's log or its consumer group is gone (Redis came back empty, or someone deleted them)."""

    def __init__(self, partition: int) -> None:
        super().__init__(f"partition {partition}: no consumer group")
        self.partition = partition


#: Redis out of reach, a cluster client that cannot find a node for a slot included.
_UNAVAILABLE: tuple[type[Exception], ...] = (*UNAVAILABLE_ERRORS, RedisClusterException)


@contextmanager
def redis_errors(partition: int | None = None) -> Iterator[None]:
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StoreUnavailable.unreachable() from exc
    except OutOfMemoryError as exc:  # a write refused at maxmemory: an outage of writes, not a bug
        raise StoreFull.refused() from exc
    except ResponseError as exc:
        if partition is not None and ("NOGROUP" in str(exc) or "no such key" in str(exc)):  # XINFO says the latter
            raise GroupMissing(partition) from exc
        raise


@dataclass(frozen=True, slots=True)
class GroupInfo:
    last_delivered: str
    pending: int
    lag: int | None
    consumers: int


def to_entry(partition: int, entry_id: str, fields: dict[bytes, bytes]) -> LogEntry:
    try:
        return LogEntry(partition, entry_id, fields, decode_mapping(fields))
    except CorruptHistory as exc:
        return LogEntry(partition, entry_id, fields, None, exc.detail)


def stream_accounts(client: redis.Redis, keys: KeySpace, partition: int | None = None) -> Iterator[str]:
    """Every account with a stream under this prefix, or in one partition (SCAN on every master of a
    cluster). A key the SCAN pattern finds that is not exactly an account's stream key (a client's
    idempotency key shaped like one, a hand-made key) is foreign: logged, never taken for an account."""
    pattern = keys.pattern("stream") if partition is None else keys.partition_pattern(partition, "stream")
    key: Any
    with redis_errors():
        for key in client.scan_iter(match=pattern, count=1000):
            account_id = keys.stream_account(key)
            if account_id is None:
                log.warning("ignoring %r: not the stream key of an account", _shown(key),
                            extra={"fields": {"foreign_key": _shown(key)}})
                continue
            yield account_id


def _shown(key: bytes | str) -> str:
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    return text if len(text) <= 200 else text[:200] + "..."


class PartitionLog:
    def __init__(self, client: redis.Redis, keys: KeySpace, group: str) -> None:
        self._redis = client
        self.keys = keys
        self.group = group

    def _key(self, partition: int) -> str:
        return self.keys.partition_log(partition)

    def group_info(self, partition: int) -> GroupInfo | None:
        with redis_errors():
            try:
                groups: Any = self._redis.xinfo_groups(self._key(partition))
            except ResponseError:  # no such key yet
                return None
        info = next((g for g in groups if text(g.get("name")) == self.group), None)
        if info is None:
            return None
        lag = info.get("lag")
        return GroupInfo(text(info.get("last-delivered-id")) or "0-0", int(info["pending"]),
                         None if lag is None else int(lag), int(info["consumers"]))

    def pending_ids(self, partition: int, low: str, high: str, count: int) -> set[str]:
        with redis_errors(partition):
            found: Any = self._redis.xpending_range(self._key(partition), self.group, low, high, count)
        return {text(item["message_id"]) for item in found}

    def oldest_pending(self, partition: int) -> str | None:
        with redis_errors(partition):
            summary: Any = self._redis.xpending(self._key(partition), self.group)
        low = text(summary.get("min")) if summary else ""
        return low or None

    def entry(self, partition: int, entry_id: str) -> LogEntry | None:
        with redis_errors():
            found: Any = self._redis.xrange(self._key(partition), entry_id, entry_id)
        return to_entry(partition, text(found[0][0]), found[0][1]) if found else None

    def event_id_at(self, partition: int, entry_id: str) -> str:
        """The event id of the entry at ``entry_id`` ("" for "0-0", an entry gone, or one that cannot be read)."""
        found = self.entry(partition, entry_id) if entry_id != "0-0" else None
        return found.event.event_id if found is not None and found.event is not None else ""

    def entries(self, wanted: Mapping[int, str]) -> dict[int, LogEntry | None]:
        """The entry at each partition's id (None where the log no longer has it): one round trip per node."""
        if len(wanted) <= 1:
            return {partition: self.entry(partition, entry_id) for partition, entry_id in wanted.items()}
        with redis_errors():
            pipe = self._redis.pipeline(transaction=False)
            for partition, entry_id in wanted.items():
                pipe.xrange(self._key(partition), entry_id, entry_id)
            replies: list[Any] = pipe.execute()
        return {partition: to_entry(partition, text(found[0][0]), found[0][1]) if found else None
                for partition, found in zip(wanted, replies, strict=True)}

    def last_before(self, partition: int, entry_id: str) -> str | None:
        with redis_errors():
            found: Any = self._redis.xrevrange(self._key(partition), f"({entry_id}", "-", count=1)
        return text(found[0][0]) if found else None

    def end(self, partition: int) -> str:
        with redis_errors():
            found: Any = self._redis.xrevrange(self._key(partition), count=1)
        return text(found[0][0]) if found else "0-0"

    def trimmed_past(self, partition: int, checkpoint: str) -> bool:
        """Whether the log has lost, to trimming, entries after ``checkpoint`` (entries it no longer holds
        and the checkpoint's own entry among them, or, for "0-0", any entry at all). Trimming only ever
        removes the oldest entries, so: the log has had entries removed, and its first entry now lies after
        the checkpoint. A Redis that lost writes loses its newest entries instead, which this never mistakes
        for a trim."""
        with redis_errors():
            try:
                info: Any = self._redis.xinfo_stream(self._key(partition))
            except ResponseError:  # no such key: nothing to have trimmed
                return False
        first = info.get("first-entry")
        if int(info.get("entries-added") or 0) <= int(info["length"]) or not first:
            return False
        return checkpoint == "0-0" or entry_position(text(first[0])) > entry_position(checkpoint)

    def accounts(self, partition: int) -> Iterator[str]:
        """Every account of ``partition`` with a stream, for re-synchronising its read model from them."""
        return stream_accounts(self._redis, self.keys, partition)

    def length(self, partition: int) -> int:
        with redis_errors():
            return int(self._redis.xlen(self._key(partition)))

    def archive_due(self, partition: int) -> int:
        """Accounts of the partition waiting for the archiver (0 without an archive)."""
        with redis_errors():
            return int(self._redis.scard(self.keys.archive_due(partition)))

    def count_after(self, partition: int, after: str, cap: int) -> int:
        """Entries after ``after`` (exclusive), counting at most ``cap``."""
        start = "-" if after == "0-0" else f"({after}"
        with redis_errors():
            found: Any = self._redis.xrange(self._key(partition), start, "+", count=cap)
        return len(found or [])

    def scan(self, partition: int, after: str, until: str, count: int) -> list[LogEntry]:
        """Entries in ``(after, until]`` (no group involved), for re-projection and rebuild."""
        start = "-" if after == "0-0" else f"({after}"
        with redis_errors():
            found: Any = self._redis.xrange(self._key(partition), start, until, count=count)
        return [to_entry(partition, text(raw_id), fields) for raw_id, fields in found or []]
