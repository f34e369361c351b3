"""The projector's Redis side of a partition log: its consumer group, takeovers, reads, fenced
acknowledgements, parking and quarantine. Every command touches one partition's keys (its log, lease,
parked stream and quarantine share the partition's hash tag), so all of it runs unchanged on a cluster.

Acknowledging and parking are scripts that first compare the partition's lease with ours: a replica that
lost its lease can read, but never acknowledge or park (the fencing that makes a paused owner harmless).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import ResponseError

from projector.leases import lease_key
from projector.projection import LogEntry
from shared.errors import CorruptHistory
from shared.keys import KeySpace
from shared.stream_codec import decode_mapping

_FENCED_ACK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
return redis.call('XACK', KEYS[2], ARGV[2], unpack(ARGV, 3))
"""
# KEYS: lease, log, parked, quarantine. ARGV: lease value, group, entry id, account ('' if unknown), reason,
# then the parked entry's field/value pairs.
_FENCED_PARK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 6))
if ARGV[4] ~= '' then redis.call('HSETNX', KEYS[4], ARGV[4], ARGV[5]) end
return redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
"""
PARKING_FIELDS = (b"original_id", b"error", b"deliveries", b"parked_at", b"group")


class LeaseLost(Exception):
    """The partition's lease is no longer ours: stop acting on it."""


@dataclass(frozen=True, slots=True)
class GroupInfo:
    last_delivered: str
    pending: int
    lag: int | None
    consumers: int


@dataclass(frozen=True, slots=True)
class ParkedEntry:
    partition: int
    parked_id: str
    original_id: str
    error: str
    deliveries: int
    fields: dict[bytes, bytes]

    @property
    def entry_fields(self) -> dict[bytes, bytes]:
        return {k: v for k, v in self.fields.items() if k not in PARKING_FIELDS}


class LogReader:
    def __init__(self, client: redis.Redis, keys: KeySpace, group: str, consumer: str) -> None:
        self._redis = client
        self.keys = keys
        self.group = group
        self.consumer = consumer
        self._ack: Any = client.register_script(_FENCED_ACK)
        self._park: Any = client.register_script(_FENCED_PARK)

    def log_key(self, partition: int) -> str:
        return self.keys.partition_log(partition)

    def parked_key(self, partition: int) -> str:
        return self.keys.partition_key(partition, f"parked:{self.group}")

    def quarantine_key(self, partition: int) -> str:
        return self.keys.partition_key(partition, f"quarantine:{self.group}")

    # --- taking a partition over ---

    def ensure_group(self, partition: int) -> None:
        try:
            self._redis.xgroup_create(self.log_key(partition), self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def take_over(self, partition: int) -> int:
        """Make every pending entry of the group ours, at once (the lease says the previous owner is gone,
        no idle timer needed), and delete the consumers left with nothing. Returns how many were claimed."""
        self.ensure_group(partition)
        key = self.log_key(partition)
        claimed = 0
        cursor = "0-0"
        while True:
            # Not JUSTID: redis-py drops the cursor from a JUSTID reply.
            reply: Any = self._redis.xautoclaim(key, self.group, self.consumer, 0, cursor, count=1000)
            cursor = _text(reply[0])
            claimed += len(reply[1])
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:  # trimmed from the log while pending: nothing left to project
                self._redis.xack(key, self.group, *deleted)
            if cursor == "0-0":
                break
        self.drop_idle_consumers(partition)
        return claimed

    def drop_idle_consumers(self, partition: int) -> int:
        """Delete the group's consumers (other than us) that own no pending entry: a rolled pod's old name."""
        key = self.log_key(partition)
        dropped = 0
        for consumer in self._redis.xinfo_consumers(key, self.group):
            name = _text(consumer["name"])
            if name != self.consumer and int(consumer["pending"]) == 0:
                self._redis.xgroup_delconsumer(key, self.group, name)
                dropped += 1
        return dropped

    def foreign_pending(self, partition: int) -> list[str]:
        """Ids pending under other consumers (a previous owner that read after losing its lease)."""
        key = self.log_key(partition)
        summary: Any = self._redis.xpending(key, self.group)
        ids: list[str] = []
        for consumer in summary.get("consumers") or []:
            name = _text(consumer["name"])
            if name == self.consumer:
                continue
            found: Any = self._redis.xpending_range(key, self.group, "-", "+", int(consumer["pending"]),
                                                    consumername=name)
            ids += [_text(item["message_id"]) for item in found]
        return ids

    def claim(self, partition: int, ids: Sequence[str]) -> list[LogEntry]:
        if not ids:
            return []
        reply: Any = self._redis.xclaim(self.log_key(partition), self.group, self.consumer, 0, list(ids))
        return self._entries(partition, reply)

    def leave(self, partition: int) -> None:
        """Remove our consumer from the group if it holds nothing (a clean release or shutdown)."""
        key = self.log_key(partition)
        for consumer in self._redis.xinfo_consumers(key, self.group):
            if _text(consumer["name"]) == self.consumer and int(consumer["pending"]) == 0:
                self._redis.xgroup_delconsumer(key, self.group, self.consumer)

    # --- reading ---

    def read(self, partition: int, count: int, after: str | None) -> list[LogEntry]:
        """New entries (``after`` None), or our own pending entries with ids above ``after``."""
        reply: Any = self._redis.xreadgroup(self.group, self.consumer, {self.log_key(partition): after or ">"},
                                            count=count)
        return [entry for _, entries in (reply or []) for entry in self._entries(partition, entries)]

    def _entries(self, partition: int, entries: Iterable[Any]) -> list[LogEntry]:
        result = []
        vanished = []
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            if not fields:  # pending, but trimmed from the log since: nothing left to project
                vanished.append(entry_id)
                continue
            result.append(to_entry(partition, entry_id, fields))
        if vanished:
            self._redis.xack(self.log_key(partition), self.group, *vanished)
        return result

    # --- settling ---

    def ack(self, lease: str, partition: int, entry_ids: Sequence[str]) -> int:
        if not entry_ids:
            return 0
        done = int(self._ack(keys=[lease_key(self.keys, partition, self.group), self.log_key(partition)],
                             args=[lease, self.group, *entry_ids]))
        if done < 0:
            raise LeaseLost(f"lease of partition {partition} lost before acknowledging")
        return done

    def park(self, lease: str, entry: LogEntry, error: str, deliveries: int, quarantine: bool) -> None:
        """Move ``entry`` to the parked stream with its error and acknowledge it, atomically; with
        ``quarantine`` its account's later events are parked with it until someone replays them."""
        fields: dict[bytes, bytes | str | int] = dict(entry.fields)
        fields.update({b"original_id": entry.entry_id, b"error": error[:2000], b"deliveries": deliveries,
                       b"parked_at": f"{time.time():.3f}", b"group": self.group})
        pairs = [item for pair in fields.items() for item in pair]
        account = entry.account_id if quarantine else None
        done = int(self._park(keys=[lease_key(self.keys, entry.partition, self.group),
                                    self.log_key(entry.partition), self.parked_key(entry.partition),
                                    self.quarantine_key(entry.partition)],
                              args=[lease, self.group, entry.entry_id, account or "", error[:500], *pairs]))
        if done < 0:
            raise LeaseLost(f"lease of partition {entry.partition} lost before parking")

    def quarantined(self, partition: int) -> dict[str, str]:
        found: Any = self._redis.hgetall(self.quarantine_key(partition))
        return {_text(k): _text(v) for k, v in found.items()}

    def lift_quarantine(self, partition: int, account_id: str) -> None:
        self._redis.hdel(self.quarantine_key(partition), account_id)

    def parked(self, partitions: Iterable[int]) -> list[ParkedEntry]:
        found = []
        for partition in partitions:
            entries: Any = self._redis.xrange(self.parked_key(partition)) or []
            for raw_id, fields in entries:
                found.append(ParkedEntry(
                    partition, _text(raw_id), _text(fields.get(b"original_id", b"")),
                    _text(fields.get(b"error", b"")), int(fields.get(b"deliveries", b"0")), fields))
        return found

    def unpark(self, entry: ParkedEntry) -> None:
        self._redis.xdel(self.parked_key(entry.partition), entry.parked_id)

    # --- what the log holds (for the self-checks, status and rebuild) ---

    def group_info(self, partition: int) -> GroupInfo | None:
        try:
            groups: Any = self._redis.xinfo_groups(self.log_key(partition))
        except ResponseError:  # no such key yet
            return None
        info = next((g for g in groups if _text(g.get("name")) == self.group), None)
        if info is None:
            return None
        lag = info.get("lag")
        return GroupInfo(_text(info.get("last-delivered-id")) or "0-0", int(info["pending"]),
                         None if lag is None else int(lag), int(info["consumers"]))

    def pending_ids(self, partition: int, low: str, high: str, count: int) -> set[str]:
        found: Any = self._redis.xpending_range(self.log_key(partition), self.group, low, high, count)
        return {_text(item["message_id"]) for item in found}

    def oldest_pending(self, partition: int) -> str | None:
        summary: Any = self._redis.xpending(self.log_key(partition), self.group)
        low = _text(summary.get("min")) if summary else ""
        return low or None

    def entry(self, partition: int, entry_id: str) -> LogEntry | None:
        found: Any = self._redis.xrange(self.log_key(partition), entry_id, entry_id)
        return to_entry(partition, _text(found[0][0]), found[0][1]) if found else None

    def last_before(self, partition: int, entry_id: str) -> str | None:
        found: Any = self._redis.xrevrange(self.log_key(partition), f"({entry_id}", "-", count=1)
        return _text(found[0][0]) if found else None

    def log_end(self, partition: int) -> str:
        found: Any = self._redis.xrevrange(self.log_key(partition), count=1)
        return _text(found[0][0]) if found else "0-0"

    def length(self, partition: int) -> int:
        return int(self._redis.xlen(self.log_key(partition)))

    def count_after(self, partition: int, after: str, cap: int) -> int:
        """Entries after ``after`` (exclusive), counting at most ``cap``."""
        start = "-" if after == "0-0" else f"({after}"
        found: Any = self._redis.xrange(self.log_key(partition), start, "+", count=cap)
        return len(found or [])

    def scan(self, partition: int, after: str, until: str, count: int) -> list[LogEntry]:
        """Entries in ``(after, until]`` (no group involved), for re-projection and rebuild."""
        start = "-" if after == "0-0" else f"({after}"
        found: Any = self._redis.xrange(self.log_key(partition), start, until, count=count)
        return [to_entry(partition, _text(raw_id), fields) for raw_id, fields in found or []]


def to_entry(partition: int, entry_id: str, fields: dict[bytes, bytes]) -> LogEntry:
    try:
        return LogEntry(partition, entry_id, fields, decode_mapping(fields))
    except CorruptHistory as exc:
        return LogEntry(partition, entry_id, fields, None, exc.detail)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")
