"""The Redis key layout. Every key of one account, and its partition's log, share one hash tag.

    {<prefix>:p<n>:<s>}:stream:<account id>       the account's events, entry id = "<version>-0"
    {<prefix>:p<n>:<s>}:version:<account id>      the account's current version (a plain integer)
    {<prefix>:p<n>:<s>}:snapshot:<account id>     the account's state every SNAPSHOT_INTERVAL versions
    {<prefix>:p<n>:<s>}:idem:<account id>:<key>   an idempotency record (hash, with a TTL); a client's key
                                                  with '{', '}' or ':' is stored as ':' + its SHA-256
    {<prefix>:p<n>:<s>}:log                       every event of partition n, in append order
    {<prefix>:p<n>:<s>}:sync                      written before a WAIT that confirms the partition's writes
    {<prefix>:p<n>:<s>}:lease:<group>             the projector group's lease of partition n
    {<prefix>:p<n>:<s>}:lease-token:<group>       the counter that makes every grant of that lease distinct
    {<prefix>:p<n>:<s>}:parked:<group>            the group's dead letters of partition n
    {<prefix>:p<n>:<s>}:quarantine:<group>        accounts whose events wait behind a parked one
    {<prefix>:p<n>:<s>}:progress:<group>          the group's settlements of partition n, announced (a few
                                                  kept) for queries waiting on a consistency token
    {<prefix>:p<n>:<s>}:archive-due               accounts whose older events are due to move to the archive
    {<prefix>:p<n>:<s>}:checkpoints               each group's read-model checkpoint of partition n, as its
                                                  projector last recorded it (the log is trimmed behind all)
    {<prefix>:global}:projector-members:<group>   the group's live replicas
    {<prefix>:global}:store-id                    this event store's identity (written once)

``n`` is a stable hash of the account id modulo the partition count, and the braces hold the Redis Cluster
hash tag: one script can write an account's stream, version and partition log atomically on a single node
and on a cluster. The tag starts with the prefix, so account ids cannot collide with anything else in the
database and two deployments on one cluster use different slots.

``s`` places the partition: it is the smallest number for which the tag's slot falls in the middle of the
partition's share of the 16384 slots (partition n of P owns slots [n·16384/P, (n+1)·16384/P), and ``s`` aims
at the middle quarter of that band). With the cluster's default even slot allocation, N masters then hold
P/N partitions each (16 on 3 masters: 5/6/5), instead of wherever 16 hashes happened to land.

No identity is ever read back from a key name by splitting it on a marker: ``stream_account`` accepts a key
only if it is exactly what ``stream`` would have built for a valid account id of that partition.

This layout is frozen by ``tests/unit/test_keys.py``: changing it re-homes every account.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from binascii import crc_hqx
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

from shared.validation import ACCOUNT_ID_PATTERN

CLUSTER_SLOTS = 16384
#: Characters that mean something in our key names: a client's idempotency key holding one is stored hashed.
_STRUCTURAL = re.compile(r"[{}:]")


def slot_of(tag: str) -> int:
    """The Redis Cluster slot of a hash tag (CRC16-XMODEM, the algorithm Redis uses)."""
    return crc_hqx(tag.encode(), 0) % CLUSTER_SLOTS


@dataclass(frozen=True)
class KeySpace:
    prefix: str
    partitions: int
    _tags: dict[int, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def partition_of(self, account_id: str) -> int:
        # crc32, not hash(): Python's str hash is salted per process, and every process must agree.
        return zlib.crc32(account_id.encode()) % self.partitions

    def tag(self, partition: int) -> str:
        """The partition's hash tag, braces included (computed once per partition and process)."""
        found = self._tags.get(partition)
        if found is None:
            self.check_partition(partition)
            found = self._tags[partition] = "{" + _place(self.prefix, partition, self.partitions) + "}"
        return found

    def check_partition(self, partition: int) -> int:
        """``partition`` if it exists; a ValueError naming the range otherwise (no tag can be placed for it)."""
        if not 0 <= partition < self.partitions:
            raise ValueError(f"partition {partition} does not exist: partitions are 0 to {self.partitions - 1}")
        return partition

    def stream_account(self, key: bytes | str) -> str | None:
        """The account whose stream ``key`` is, or None when ``key`` is not exactly the stream key of a valid
        account id in the partition it names (anything a SCAN for streams may also find, such as a client's
        idempotency key that looks like a stream key, another prefix's keys, or a hand-made key)."""
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        match = self._stream_key.fullmatch(text)
        if match is None or not ACCOUNT_ID_PATTERN.fullmatch(match["account"]):
            return None
        partition = int(match["partition"])
        if partition >= self.partitions or self.partition_of(match["account"]) != partition:
            return None
        return match["account"] if text == self.stream(match["account"]) else None

    @cached_property
    def _stream_key(self) -> re.Pattern[str]:
        return re.compile("\\{" + re.escape(self.prefix) + r":p(?P<partition>[0-9]{1,5}):[0-9]{1,9}\}:stream:"
                          r"(?P<account>.{1,64})", re.DOTALL)

    def slot(self, partition: int) -> int:
        return slot_of(self.tag(partition)[1:-1])

    def account(self, account_id: str) -> AccountKeys:
        """Every key of one account, with its partition worked out once (a request needs several)."""
        partition = self.partition_of(account_id)
        return AccountKeys(account_id, partition, self.tag(partition))

    def stream(self, account_id: str) -> str:
        return self.account(account_id).stream

    def version(self, account_id: str) -> str:
        return self.account(account_id).version

    def snapshot(self, account_id: str) -> str:
        return self.account(account_id).snapshot

    def idempotency(self, account_id: str, key: str) -> str:
        return self.account(account_id).idempotency(key)

    def partition_log(self, partition: int) -> str:
        return _log(self.tag(partition))

    def sync(self, partition: int) -> str:
        return f"{self.tag(partition)}:sync"

    def lease(self, partition: int, group: str) -> str:
        return f"{self.tag(partition)}:lease:{group}"

    def lease_token(self, partition: int, group: str) -> str:
        return f"{self.tag(partition)}:lease-token:{group}"

    def parked(self, partition: int, group: str) -> str:
        return f"{self.tag(partition)}:parked:{group}"

    def quarantine(self, partition: int, group: str) -> str:
        return f"{self.tag(partition)}:quarantine:{group}"

    def progress(self, partition: int, group: str) -> str:
        return f"{self.tag(partition)}:progress:{group}"

    def archive_due(self, partition: int) -> str:
        return _archive_due(self.tag(partition))

    def checkpoints(self, partition: int) -> str:
        return f"{self.tag(partition)}:checkpoints"

    def projector_members(self, group: str) -> str:
        """The one key that belongs to no partition: which replicas of the group are alive."""
        return f"{{{self.prefix}:global}}:projector-members:{group}"

    def store_identity(self) -> str:
        """Names this event store (a random id written once): a read model records which store it was
        projected from, and nothing destructive is done to it on the word of another."""
        return f"{{{self.prefix}:global}}:store-id"

    def every_key(self) -> str:
        """A SCAN pattern for every key of this prefix, partitioned or global (the tests clean up with it)."""
        return f"{{{self.prefix}:*"

    def pattern(self, kind: str = "*") -> str:
        """A SCAN pattern for this prefix's keys of one kind (``stream``, ``version``, ...)."""
        return f"{{{self.prefix}:p*}}:{kind}:*"

    def partition_pattern(self, partition: int, kind: str) -> str:
        """A SCAN pattern for one partition's keys of one kind (the tag holds no glob character)."""
        return f"{self.tag(partition)}:{kind}:*"


class AccountKeys(NamedTuple):
    account_id: str
    partition: int
    tag: str

    @property
    def stream(self) -> str:
        return f"{self.tag}:stream:{self.account_id}"

    @property
    def version(self) -> str:
        return f"{self.tag}:version:{self.account_id}"

    @property
    def snapshot(self) -> str:
        return f"{self.tag}:snapshot:{self.account_id}"

    @property
    def log(self) -> str:
        """The log of the account's partition."""
        return _log(self.tag)

    @property
    def archive_due(self) -> str:
        """The set of its partition's accounts due for archiving."""
        return _archive_due(self.tag)

    def idempotency(self, key: str) -> str:
        """A key without '{', '}' or ':' stands as it is (as it always has); one with them is stored as ':' and
        its SHA-256, which no plain key can be, so no client's key can shape, or pass for, another key name."""
        if _STRUCTURAL.search(key) is None:
            return f"{self.tag}:idem:{self.account_id}:{key}"
        return f"{self.tag}:idem:{self.account_id}::{hashlib.sha256(key.encode()).hexdigest()}"


def _log(tag: str) -> str:
    return f"{tag}:log"


def _archive_due(tag: str) -> str:
    return f"{tag}:archive-due"


def _place(prefix: str, partition: int, partitions: int) -> str:
    start = partition * CLUSTER_SLOTS // partitions
    width = (partition + 1) * CLUSTER_SLOTS // partitions - start
    low = start + 3 * width // 8
    high = max(low + 1, start + 5 * width // 8)
    salt = 0
    while True:
        tag = f"{prefix}:p{partition}:{salt}"
        if low <= slot_of(tag) < high:
            return tag
        salt += 1
