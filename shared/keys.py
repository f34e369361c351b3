"""The Redis key layout. Every key of one account, and its partition's log, share one hash tag.

    <prefix>:{p<n>}:stream:<account id>     the account's events, entry id = "<version>-0"
    <prefix>:{p<n>}:version:<account id>    the account's current version (a plain integer)
    <prefix>:{p<n>}:snapshot:<account id>   the account's state every SNAPSHOT_INTERVAL versions (JSON)
    <prefix>:{p<n>}:idem:<account id>:<key> an idempotency record (hash, with a TTL)
    <prefix>:{p<n>}:log                     every event of partition n, in append order
    <prefix>:{p<n>}:parked                  projector dead letters of partition n

``n`` is a stable hash of the account id modulo the partition count, and ``{p<n>}`` is the Redis Cluster
hash tag, so one script can write an account's stream, version and partition log atomically on a single
node and on a cluster. The prefix keeps account ids from colliding with anything else in the database.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class KeySpace:
    prefix: str
    partitions: int

    def partition_of(self, account_id: str) -> int:
        # crc32, not hash(): Python's str hash is salted per process, and every process must agree.
        return zlib.crc32(account_id.encode()) % self.partitions

    def _base(self, partition: int) -> str:
        return f"{self.prefix}:{{p{partition}}}"

    def stream(self, account_id: str) -> str:
        return f"{self._base(self.partition_of(account_id))}:stream:{account_id}"

    def version(self, account_id: str) -> str:
        return f"{self._base(self.partition_of(account_id))}:version:{account_id}"

    def snapshot(self, account_id: str) -> str:
        return f"{self._base(self.partition_of(account_id))}:snapshot:{account_id}"

    def idempotency(self, account_id: str, key: str) -> str:
        return f"{self._base(self.partition_of(account_id))}:idem:{account_id}:{key}"

    def partition_log(self, partition: int) -> str:
        return f"{self._base(partition)}:log"

    def parked(self, partition: int) -> str:
        return f"{self._base(partition)}:parked"

    def all_partition_logs(self) -> list[str]:
        return [self.partition_log(p) for p in range(self.partitions)]
