"""``ConsumerGroup``: this replica as a consumer of the partition logs' group. It takes a partition over
(claims every pending entry of the previous owner at once: the lease says it is gone), reads entries (its own
pending ones after a takeover or an outage, then new ones, blocking if asked), and settles them:
acknowledges, or parks (moves an entry to the dead letters, acknowledged, its account quarantined).

Acknowledging and parking are scripts that first compare the partition's lease with ours: a replica that lost
its lease can still read, but never acknowledge or park again (the fencing that makes a paused owner
harmless). Every command touches one partition's keys, so all of it runs unchanged on a cluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import redis
from redis.exceptions import NoScriptError, ResponseError

from projector.partition_log import redis_errors, to_entry
from projector.partitions import LeaseLost
from projector.projection import LogEntry
from shared.keys import KeySpace
from shared.redis_client import text

# Settling an entry is announced on the partition's progress stream (a few entries kept): a query waiting for
# its consistency token blocks on that stream, woken the moment something it waits for may have happened.
# KEYS: lease, log, progress. ARGV: lease value, group, entry ids.
_FENCED_ACK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local done = redis.call('XACK', KEYS[2], ARGV[2], unpack(ARGV, 3))
if done > 0 then redis.call('XADD', KEYS[3], 'MAXLEN', '~', 16, '*', 'settled', ARGV[#ARGV]) end
return done
"""
# KEYS: lease, log, parked, quarantine, progress. ARGV: lease value, group, entry id, account ('' if unknown),
# reason, then the parked entry's field/value pairs.
_FENCED_PARK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 6))
if ARGV[4] ~= '' then redis.call('HSETNX', KEYS[4], ARGV[4], ARGV[5]) end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', 16, '*', 'parked', ARGV[3])
return redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
"""



class TakeOver(NamedTuple):
    """What taking a partition found: entries claimed, and consumers that had not left the group. A replica
    that hands a partition back leaves its group, so a consumer still there means its replica stopped without
    doing so (killed, or cut off): the partition was taken over, not handed over."""

    claimed: int
    abandoned_by: int

class ConsumerGroup:
    def __init__(self, client: redis.Redis, keys: KeySpace, group: str, consumer: str) -> None:
        self._redis = client
        self.keys = keys
        self.group = group
        self.consumer = consumer
        self._ack: Any = client.register_script(_FENCED_ACK)
        self._park: Any = client.register_script(_FENCED_PARK)

    def _log(self, partition: int) -> str:
        return self.keys.partition_log(partition)

    # --- taking a partition over, and leaving it ---

    def ensure(self, partition: int) -> None:
        with redis_errors(partition):
            try:
                self._redis.xgroup_create(self._log(partition), self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def take_over(self, partition: int) -> TakeOver:
        """Make every pending entry of the group ours, and delete the consumers left with nothing."""
        self.ensure(partition)
        key = self._log(partition)
        claimed, cursor = 0, "0-0"
        with redis_errors(partition):
            while True:
                # Not JUSTID: redis-py drops the cursor from a JUSTID reply.
                reply: Any = self._redis.xautoclaim(key, self.group, self.consumer, 0, cursor, count=1000)
                cursor = text(reply[0])
                claimed += len(reply[1])
                deleted = reply[2] if len(reply) > 2 else []
                if deleted:  # trimmed from the log while pending: nothing left to project
                    self._redis.xack(key, self.group, *deleted)
                if cursor == "0-0":
                    break
        return TakeOver(claimed, self.drop_idle_consumers(partition))

    def drop_idle_consumers(self, partition: int) -> int:
        """Delete the group's consumers (other than us) that own no pending entry: a rolled pod's old name."""
        key, dropped = self._log(partition), 0
        with redis_errors(partition):
            for consumer in self._redis.xinfo_consumers(key, self.group):
                name = text(consumer["name"])
                if name != self.consumer and int(consumer["pending"]) == 0:
                    self._redis.xgroup_delconsumer(key, self.group, name)
                    dropped += 1
        return dropped

    def foreign_pending(self, partition: int) -> list[str]:
        """Ids pending under other consumers (a previous owner that read after losing its lease)."""
        key, ids = self._log(partition), []
        with redis_errors(partition):
            summary: Any = self._redis.xpending(key, self.group)
            for consumer in summary.get("consumers") or []:
                name = text(consumer["name"])
                if name != self.consumer:
                    found: Any = self._redis.xpending_range(key, self.group, "-", "+", int(consumer["pending"]),
                                                            consumername=name)
                    ids += [text(item["message_id"]) for item in found]
        return ids

    def claim(self, partition: int, ids: Sequence[str]) -> list[LogEntry]:
        if not ids:
            return []
        with redis_errors(partition):
            reply: Any = self._redis.xclaim(self._log(partition), self.group, self.consumer, 0, list(ids))
        return self._entries(partition, reply)

    def leave(self, partition: int) -> None:
        """Remove our consumer from the group if it holds nothing (a clean release or shutdown)."""
        key = self._log(partition)
        with redis_errors(partition):
            for consumer in self._redis.xinfo_consumers(key, self.group):
                if text(consumer["name"]) == self.consumer and int(consumer["pending"]) == 0:
                    self._redis.xgroup_delconsumer(key, self.group, self.consumer)

    # --- reading ---

    def read(self, partition: int, count: int, after: str | None = None, block_ms: int | None = None
             ) -> list[LogEntry]:
        """New entries (``after`` None; waiting up to ``block_ms`` for some when given), or our own pending
        entries with ids above ``after``."""
        with redis_errors(partition):
            reply: Any = self._redis.xreadgroup(self.group, self.consumer, {self._log(partition): after or ">"},
                                                count=count, block=block_ms if after is None else None)
        return [entry for _, entries in (reply or []) for entry in self._entries(partition, entries)]

    def _entries(self, partition: int, entries: Iterable[Any]) -> list[LogEntry]:
        result, vanished = [], []
        for raw_id, fields in entries:
            entry_id = text(raw_id)
            if not fields:  # pending, but trimmed from the log since: nothing left to project
                vanished.append(entry_id)
                continue
            result.append(to_entry(partition, entry_id, fields))
        if vanished:
            with redis_errors(partition):
                self._redis.xack(self._log(partition), self.group, *vanished)
        return result

    # --- settling ---

    def acknowledge(self, lease: str, partition: int, entry_ids: Sequence[str]) -> int:
        if not entry_ids:
            return 0
        with redis_errors(partition):
            done = int(self._ack(keys=[self.keys.lease(partition, self.group), self._log(partition),
                                       self.keys.progress(partition, self.group)],
                                 args=[lease, self.group, *entry_ids]))
        if done < 0:
            raise LeaseLost(f"lease of partition {partition} lost before acknowledging")
        return done

    def acknowledge_all(self, settlements: Sequence[tuple[str, int, Sequence[str]]]) -> set[int]:
        """``acknowledge`` for several partitions (lease, partition, entry ids) in one round trip per node;
        the partitions whose lease was lost, of which nothing was acknowledged."""
        work = [(lease, partition, ids) for lease, partition, ids in settlements if ids]
        if len(work) > 1:
            with redis_errors():
                pipe = self._redis.pipeline(transaction=False)
                for lease, partition, ids in work:  # EVALSHA as is: a pipeline's script check costs a round trip
                    pipe.evalsha(self._ack.sha, 3, self.keys.lease(partition, self.group), self._log(partition),
                                 self.keys.progress(partition, self.group), lease, self.group, *ids)
                replies: list[Any] = pipe.execute(raise_on_error=False)
        else:
            replies = [NoScriptError()] * len(work)
        lost: set[int] = set()
        for (lease, partition, ids), reply in zip(work, replies, strict=True):
            if isinstance(reply, NoScriptError):  # one at a time (a node that never ran the script loads it)
                try:
                    self.acknowledge(lease, partition, ids)
                except LeaseLost:
                    lost.add(partition)
            elif isinstance(reply, Exception):
                with redis_errors(partition):
                    raise reply
            elif int(reply) < 0:
                lost.add(partition)
        return lost

    def announce(self, partition: int, checkpoint: str) -> None:
        """Tell the queries waiting on ``partition`` that its checkpoint moved without a settlement (a
        re-projection caught up): they look again instead of waiting out QUERY_WAIT_SECONDS."""
        with redis_errors(partition):
            self._redis.xadd(self.keys.progress(partition, self.group), {"checkpoint": checkpoint}, maxlen=16,
                             approximate=True)

    def park(self, lease: str, entry: LogEntry, error: str, deliveries: int, quarantine: bool) -> None:
        """Move ``entry`` to the dead letters with its error and acknowledge it, atomically; with
        ``quarantine`` its account's later events are parked behind it until someone replays them."""
        fields: dict[bytes, bytes | str | int] = dict(entry.fields)
        fields.update({b"original_id": entry.entry_id, b"error": error[:2000], b"deliveries": deliveries,
                       b"parked_at": f"{time.time():.3f}", b"group": self.group})
        pairs = [item for pair in fields.items() for item in pair]
        account = entry.account_id if quarantine else None
        partition = entry.partition
        with redis_errors(partition):
            done = int(self._park(keys=[self.keys.lease(partition, self.group), self._log(partition),
                                        self.keys.parked(partition, self.group),
                                        self.keys.quarantine(partition, self.group),
                                        self.keys.progress(partition, self.group)],
                                  args=[lease, self.group, entry.entry_id, account or "", error[:500], *pairs]))
        if done < 0:
            raise LeaseLost(f"lease of partition {partition} lost before parking")
