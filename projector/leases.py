"""Partition ownership: exactly one replica reads a partition log at a time, through leases in Redis.

In the manner of Kafka's group assignment and the Kinesis Client Library's shard leases:

* Each partition has a lease key (``{tag}:lease:<group>``, in the partition's own slot) holding
  ``<owner>|<token>`` with a TTL. It is taken with a script that refuses when it exists, renewed only by its
  holder, and released only by its holder. The token comes from a per-partition counter, so every grant is
  distinct; the projector's acknowledgements and parking compare the whole value in the same script as the
  write, so a replica that lost its lease (paused, partitioned, slow) can never acknowledge again.
* Live replicas heartbeat into one membership set (scored by Redis's own clock, so host clocks do not
  matter). Each computes its fair share from the sorted member list: with N members and P partitions the
  first P mod N get one more than P div N. A replica above its share releases leases; one below takes
  free ones, preferring partitions by rendezvous hashing so newcomers do not all reach for the same ones.
  Nobody steals: a dead replica's leases expire after the TTL and are taken then.
"""

from __future__ import annotations

import contextlib
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import OutOfMemoryError

from projector.partition_log import redis_errors
from shared.keys import KeySpace
from shared.redis_client import UNAVAILABLE_ERRORS

log = logging.getLogger("ledgerstream.projector")
_UNWRITABLE: tuple[type[Exception], ...] = (*UNAVAILABLE_ERRORS, OutOfMemoryError)

_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""
_HEARTBEAT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
redis.call('PEXPIRE', KEYS[1], 10 * tonumber(ARGV[2]))
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


@dataclass(frozen=True, slots=True)
class Lease:
    partition: int
    #: ``<owner>|<token>``: what the fenced scripts compare.
    value: str
    #: Monotonic time until which this replica may act on the partition without renewing.
    valid_until: float


@dataclass(frozen=True, slots=True)
class LeaseView:
    """A lease as seen from outside (``status``)."""

    partition: int
    owner: str | None
    token: int | None
    ttl_ms: int | None


def fair_share(members: Sequence[str], me: str, partitions: int) -> int:
    """How many partitions ``me`` should own when ``members`` share ``partitions`` evenly."""
    ordered = sorted(set(members) | {me})
    base, extra = divmod(partitions, len(ordered))
    return base + (1 if ordered.index(me) < extra else 0)


def preference(owner: str, partition: int) -> int:
    """Rendezvous (highest random weight) score: each owner ranks the partitions in its own order."""
    return zlib.crc32(f"{owner}/{partition}".encode())


class PartitionLeases:
    def __init__(self, client: redis.Redis, keys: KeySpace, group: str, owner: str, ttl_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = client
        self._keys = keys
        self.group = group
        self.owner = owner
        self.ttl_ms = max(1, round(ttl_seconds * 1000))
        self._clock = clock
        self._acquire: Any = client.register_script(_ACQUIRE)
        self._renew: Any = client.register_script(_RENEW)
        self._release: Any = client.register_script(_RELEASE)
        self._heartbeat: Any = client.register_script(_HEARTBEAT)
        self.owned: dict[int, Lease] = {}
        self.members: list[str] = [owner]
        #: Redis refused the last heartbeat for lack of memory.
        self._full = False

    def lease_key(self, partition: int) -> str:
        return self._keys.lease(partition, self.group)

    def _token_key(self, partition: int) -> str:
        return self._keys.lease_token(partition, self.group)

    def _members_key(self) -> str:
        return self._keys.projector_members(self.group)

    def holds(self, partition: int) -> bool:
        lease = self.owned.get(partition)
        return lease is not None and lease.valid_until > self._clock()

    def heartbeat(self) -> list[str]:
        """Say we are alive; return the live members. A membership set that cannot be reached leaves the
        last known list in place (ownership still renews; only rebalancing waits)."""
        try:
            members = self._heartbeat(keys=[self._members_key()], args=[self.owner, self.ttl_ms])
        except UNAVAILABLE_ERRORS as exc:
            log.warning("projector membership unreachable; keeping the current assignment: %s", exc)
            return self.members
        except OutOfMemoryError:
            # At maxmemory Redis refuses the heartbeat (a write) but still renews leases and takes acks: keep
            # projecting what we own. Said once per episode, not every tick.
            if not self._full:
                log.error("Redis is out of memory (maxmemory): the heartbeat is refused; keeping the current "
                          "assignment and projecting it, taking no new partitions until memory is freed",
                          extra={"fields": {"state": "store-full"}})
            self._full = True
            return self.members
        if self._full:
            log.warning("Redis takes writes again; membership heartbeats resumed",
                        extra={"fields": {"state": "recovered"}})
        self._full = False
        self.members = sorted({m.decode() for m in members} | {self.owner})
        return self.members

    def leave(self) -> None:
        with contextlib.suppress(*UNAVAILABLE_ERRORS):  # or the entry expires with its score
            self._redis.zrem(self._members_key(), self.owner)

    def renew(self) -> list[int]:
        """Renew every lease we hold; return the partitions lost (taken over, or expired while we could not
        reach Redis). An unreachable node keeps its leases until their local validity runs out."""
        lost = []
        for partition, lease in list(self.owned.items()):
            started = self._clock()
            try:
                kept = self._renew(keys=[self.lease_key(partition)], args=[lease.value, self.ttl_ms])
            except UNAVAILABLE_ERRORS:
                if lease.valid_until <= self._clock():
                    del self.owned[partition]
                    lost.append(partition)
                continue
            if kept:
                self.owned[partition] = Lease(partition, lease.value, started + self._validity())
            else:
                del self.owned[partition]
                lost.append(partition)
        return lost

    def excess(self) -> list[int]:
        """Partitions above our fair share, the ones we rank lowest first: hand these back."""
        target = fair_share(self.members, self.owner, self._keys.partitions)
        surplus = len(self.owned) - target
        return sorted(self.owned, key=lambda p: preference(self.owner, p))[:surplus] if surplus > 0 else []

    def fill(self) -> list[int]:
        """Take free partitions, in our order of preference, up to our fair share. Returns those taken."""
        target = fair_share(self.members, self.owner, self._keys.partitions)
        taken: list[int] = []
        candidates = [p for p in range(self._keys.partitions) if p not in self.owned]
        for partition in sorted(candidates, key=lambda p: -preference(self.owner, p)):
            if len(self.owned) >= target:
                break
            if self.acquire(partition):
                taken.append(partition)
        return taken

    def acquire(self, partition: int) -> bool:
        started = self._clock()
        try:
            token = self._acquire(keys=[self.lease_key(partition), self._token_key(partition)],
                                  args=[self.owner, self.ttl_ms])
        except _UNWRITABLE:  # unreachable, or at maxmemory (a new lease cannot be written): try again later
            return False
        if not token:
            return False
        self.owned[partition] = Lease(partition, f"{self.owner}|{int(token)}", started + self._validity())
        return True

    def release(self, partition: int) -> None:
        lease = self.owned.pop(partition, None)
        if lease is None:
            return
        with contextlib.suppress(*UNAVAILABLE_ERRORS):  # or it expires by itself
            self._release(keys=[self.lease_key(partition)], args=[lease.value])

    def forget(self, partition: int) -> None:
        """A lease found lost while acting on it (a fenced script refused): stop counting it as ours."""
        self.owned.pop(partition, None)

    def release_all(self) -> None:
        for partition in list(self.owned):
            self.release(partition)

    def view(self, partition: int) -> LeaseView:
        key = self.lease_key(partition)
        with redis_errors():
            value: Any = self._redis.get(key)
            if value is None:
                return LeaseView(partition, None, None, None)
            ttl = int(self._redis.pttl(key))
        owner, _, token = value.decode(errors="replace").rpartition("|")
        return LeaseView(partition, owner, int(token) if token.isdigit() else None, ttl)

    def _validity(self) -> float:
        # Act only while the lease surely still holds: stop a little before Redis would let it expire.
        return self.ttl_ms / 1000 * 0.8
