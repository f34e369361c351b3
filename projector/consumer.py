"""The projector's Redis side: consumer groups on the partition logs, claims, acknowledgements, parking.

The partition log and its parked (dead-letter) stream share a hash tag, so parking an entry (XADD to the
parked stream + XACK on the log) is one MULTI/EXEC on a single node and on a cluster.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import ResponseError

from projector.projection import LogEntry
from shared.errors import CorruptHistory
from shared.keys import KeySpace
from shared.stream_codec import decode_mapping


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    partition: int
    length: int
    lag: int | None  # None: Redis cannot tell (see XINFO GROUPS); shown as "unknown"
    pending: int
    oldest_pending_age_s: float | None
    parked: int
    consumers: int


@dataclass(frozen=True, slots=True)
class ParkedEntry:
    partition: int
    parked_id: str
    original_id: str
    error: str
    deliveries: int
    fields: dict[bytes, bytes]


class PartitionConsumer:
    def __init__(self, client: redis.Redis, keys: KeySpace, group: str, consumer: str,
                 partitions: Sequence[int] | None = None) -> None:
        self._redis = client
        self._keys = keys
        self.group = group
        self.consumer = consumer
        self.partitions = list(range(keys.partitions)) if partitions is None else list(partitions)
        self._partition_by_key = {keys.partition_log(p).encode(): p for p in self.partitions}

    def ensure_groups(self) -> None:
        for partition in self.partitions:
            try:
                self._redis.xgroup_create(self._keys.partition_log(partition), self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def read(self, count: int, block_ms: int | None, pending: bool = False) -> list[LogEntry]:
        """New entries (``>``), or with ``pending`` this consumer's own unacknowledged ones (``0``)."""
        streams = {self._keys.partition_log(p): ("0" if pending else ">") for p in self.partitions}
        reply: Any = self._redis.xreadgroup(self.group, self.consumer, streams,  # type: ignore[arg-type]
                                            count=count, block=None if pending else block_ms)
        return [entry for key, entries in (reply or []) for entry in self._entries(key, entries)]

    def claim_stale(self, min_idle_ms: int, count: int) -> list[LogEntry]:
        """Take over entries idle longer than ``min_idle_ms`` (a dead consumer's, or our own deferred ones)."""
        claimed: list[LogEntry] = []
        for partition in self.partitions:
            key = self._keys.partition_log(partition)
            reply: Any = self._redis.xautoclaim(key, self.group, self.consumer, min_idle_ms, "0-0", count=count)
            entries = reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:  # trimmed from the log while pending: nothing left to project
                self._redis.xack(key, self.group, *deleted)
            claimed += self._entries(key.encode(), entries)
            if len(claimed) >= count:
                break
        return claimed

    def _entries(self, key: bytes | str, entries: Iterable[Any]) -> list[LogEntry]:
        partition = self._partition_by_key[key if isinstance(key, bytes) else key.encode()]
        result = []
        vanished = []
        for raw_id, fields in entries:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            if not fields:  # pending, but trimmed from the log since: nothing left to project
                vanished.append(entry_id)
                continue
            try:
                result.append(LogEntry(partition, entry_id, fields, decode_mapping(fields)))
            except CorruptHistory as exc:
                result.append(LogEntry(partition, entry_id, fields, None, exc.detail))
        if vanished:
            self._redis.xack(self._keys.partition_log(partition), self.group, *vanished)
        return result

    def ack(self, entries: Iterable[LogEntry]) -> int:
        by_partition: dict[int, list[str]] = defaultdict(list)
        for entry in entries:
            by_partition[entry.partition].append(entry.entry_id)
        if not by_partition:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for partition, ids in by_partition.items():
            pipe.xack(self._keys.partition_log(partition), self.group, *ids)
        return sum(int(n) for n in pipe.execute())

    def deliveries(self, entries: Sequence[LogEntry]) -> list[int]:
        """How many times each entry has been delivered (Redis's own count, from XPENDING)."""
        pipe = self._redis.pipeline(transaction=False)
        for entry in entries:
            pipe.xpending_range(self._keys.partition_log(entry.partition), self.group, entry.entry_id,
                                entry.entry_id, 1)
        return [int(found[0]["times_delivered"]) if found else 0 for found in pipe.execute()]

    def park(self, entry: LogEntry, error: str, deliveries: int) -> None:
        """Move ``entry`` to its partition's parked stream with the error, and acknowledge it, atomically."""
        fields: dict[Any, Any] = dict(entry.fields)
        fields.update({b"original_id": entry.entry_id, b"error": error[:2000], b"deliveries": deliveries,
                       b"parked_at": f"{time.time():.3f}", b"group": self.group})
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(self._keys.partition_key(entry.partition, "parked"), fields)
        pipe.xack(self._keys.partition_log(entry.partition), self.group, entry.entry_id)
        pipe.execute()

    def parked(self, partitions: Iterable[int] | None = None) -> list[ParkedEntry]:
        found = []
        for partition in self.partitions if partitions is None else partitions:
            entries: Any = self._redis.xrange(self._keys.partition_key(partition, "parked")) or []
            for raw_id, fields in entries:
                found.append(ParkedEntry(
                    partition, raw_id.decode(), fields.get(b"original_id", b"").decode(),
                    fields.get(b"error", b"").decode(), int(fields.get(b"deliveries", b"0")), fields))
        return found

    def unpark(self, entry: ParkedEntry) -> None:
        self._redis.xdel(self._keys.partition_key(entry.partition, "parked"), entry.parked_id)

    def status(self) -> list[PartitionStatus]:
        now_ms = time.time() * 1000
        result = []
        for partition in self.partitions:
            key = self._keys.partition_log(partition)
            length = int(self._redis.xlen(key))
            info = next((g for g in self._groups(key) if _text(g.get("name")) == self.group), None)
            pending = int(info["pending"]) if info else 0
            lag = info.get("lag") if info else length
            oldest = None
            if pending:
                summary = self._redis.xpending(key, self.group)
                low = _text(summary.get("min"))
                if low:
                    oldest = max(0.0, (now_ms - int(low.split("-")[0])) / 1000)
            result.append(PartitionStatus(partition, length, None if lag is None else int(lag), pending, oldest,
                                          int(self._redis.xlen(self._keys.partition_key(partition, "parked"))),
                                          int(info["consumers"]) if info else 0))
        return result

    def _groups(self, key: str) -> list[dict[str, Any]]:
        try:
            groups: list[dict[str, Any]] = self._redis.xinfo_groups(key)
        except ResponseError:  # no such key yet
            return []
        return groups

    def log_ends(self) -> dict[int, str]:
        """The id of the last entry of each partition log now (the rebuild's snapshot point)."""
        ends = {}
        for partition in self.partitions:
            last: Any = self._redis.xrevrange(self._keys.partition_log(partition), count=1)
            ends[partition] = last[0][0].decode() if last else "0-0"
        return ends

    def scan(self, partition: int, after: str, until: str, count: int) -> list[LogEntry]:
        """Entries of a partition log in ``(after, until]`` (no group involved), for rebuild and catch-up."""
        key = self._keys.partition_log(partition)
        entries = self._redis.xrange(key, f"({after}" if after != "0-0" else "-", until, count=count)
        return self._entries(key.encode(), entries or [])

    def total_length(self) -> int:
        pipe = self._redis.pipeline(transaction=False)
        for partition in self.partitions:
            pipe.xlen(self._keys.partition_log(partition))
        return sum(int(n) for n in pipe.execute())


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")
