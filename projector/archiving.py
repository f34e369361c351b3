"""Moving accounts' older events out of Redis into archive segments (``shared/archive.py``), so Redis holds a
bounded number of each account's events however long it lives.

The append script marks an account due each time its version passes a multiple of ``ARCHIVE_AFTER_EVENTS``
(a set per partition). The projector archives the due accounts of the partitions it owns, a few per pass
in a thread of its own, so projection never waits on object storage. For one account:

1. read every event its stream holds, and its snapshot (one round trip each);
2. **upload** them as one segment: versions ``archived+1 .. last``, naming the committed segment before it;
   the write is create-only (the same bytes already there are fine; other bytes are a conflict, reported and
   left alone), and nothing is ever deleted: an upload a crash left uncommitted stays off the chain;
3. **trim**, in one script fenced by our lease of the partition, which refuses unless the archive still ends
   at ``archived`` with the segment ours follows (no one archived meanwhile), the stream still begins at
   ``archived+1``, and it still holds ``last`` with the uploaded event's id (the history uploaded is the
   history in Redis: a failover that lost writes cannot make us drop the ones that replaced them). Before
   its first write it makes sure a snapshot at ``last`` or later exists (ours, folded from the uploaded
   events, unless a newer one is there), so loading never needs the archive. Then it records the new head
   (``archived = last``, ``segment = first``) in the snapshot hash and trims the stream behind it;
4. take the account off the due set.

Upload first, trim second: a crash anywhere leaves every event in the stream, in a committed segment, or
both; running again is harmless. An append meanwhile does not stop the trim (only the events uploaded go),
so a busy account is archived too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from projector.health import Health
from projector.partition_log import redis_errors
from shared import account
from shared.archive import Archive, SegmentConflict, encode_segment
from shared.errors import ArchiveUnavailable, LedgerError
from shared.keys import KeySpace
from shared.redis_store import RedisEventStore, snapshot_json
from shared.stream_codec import FIELDS

log = logging.getLogger("ledgerstream.projector")

#: The most events in one segment: what one archiving reads, holds and uploads at once stays bounded (an
#: account that piled up more while no projector ran is moved in several passes).
SEGMENT_MAX_EVENTS = 5_000
#: Where the event id sits in an entry's flat field list (the stream's own order, FIELDS).
_EVENT_ID = 2 * FIELDS.index("event_id") + 1

# KEYS: lease, stream, snapshot. ARGV: lease value, first, last, the last event's id, our snapshot or "",
# the first version of the segment before ours (0: none).
# Reply: {-1} lease lost | {0, why} refused, nothing written | {1, entries trimmed}
_TRIM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local first, last = tonumber(ARGV[2]), tonumber(ARGV[3])
if tonumber(redis.call('HGET', KEYS[3], 'archived') or '0') ~= first - 1
    or tonumber(redis.call('HGET', KEYS[3], 'segment') or '0') ~= tonumber(ARGV[6]) then
  return {0, 'the archive no longer ends where this segment begins'}
end
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #head == 0 or head[1][1] ~= first .. '-0' then return {0, 'the stream no longer begins at ' .. first} end
local at = redis.call('XRANGE', KEYS[2], last .. '-0', last .. '-0')
local event_id
if #at == 1 then
  for i = 1, #at[1][2], 2 do
    if at[1][2][i] == 'event_id' then event_id = at[1][2][i + 1] end
  end
end
if event_id ~= ARGV[4] then return {0, 'version ' .. last .. ' in Redis is not the event uploaded'} end
local snapshot = tonumber(redis.call('HGET', KEYS[3], 'version') or '0')
if snapshot < last then
  if ARGV[5] == '' then return {0, 'no snapshot at or after version ' .. last} end
  redis.call('HSET', KEYS[3], 'version', last, 'state', ARGV[5])
end
redis.call('HSET', KEYS[3], 'archived', last, 'segment', first)
local trimmed = redis.call('XTRIM', KEYS[2], 'MINID', (last + 1) .. '-0')
if redis.call('XLEN', KEYS[2]) == 0 then
  -- Trimming marks entries deleted inside the stream's last node, which stays allocated until it is full:
  -- an emptied stream is made again, empty and with no node (the stream key stays: it is how scans find
  -- the account; the version record, not the stream, gives the next version).
  redis.call('DEL', KEYS[2])
  redis.call('XGROUP', 'CREATE', KEYS[2], 'archiver', '$', 'MKSTREAM')
  redis.call('XGROUP', 'DESTROY', KEYS[2], 'archiver')
end
return {1, trimmed}
"""


@dataclass(frozen=True, slots=True)
class Archived:
    #: Events moved to the archive (0: nothing to move, or refused).
    events: int
    refused: str = ""


class Archiver:
    def __init__(self, client: redis.Redis, keys: KeySpace, group: str, store: RedisEventStore,
                 archive: Archive) -> None:
        self._redis, self._keys, self._group = client, keys, group
        self._store, self._archive = store, archive
        self._trim: Any = client.register_script(_TRIM)

    def due(self, partition: int, count: int) -> list[str]:
        """Up to ``count`` of the partition's accounts due for archiving (at random: a refused one cannot
        hold up the rest)."""
        with redis_errors():
            found: Any = self._redis.srandmember(self._keys.archive_due(partition), count)
        return [a.decode() if isinstance(a, bytes) else str(a) for a in found or ()]

    def archive(self, partition: int, lease: str, account_id: str) -> Archived:
        """Move what the account's stream holds (up to SEGMENT_MAX_EVENTS) into a segment, then trim it."""
        keys = self._keys.account(account_id)
        with redis_errors():
            entries: Any = self._redis.xrange(keys.stream, "-", "+", count=SEGMENT_MAX_EVENTS)
        head = self._store.archive_head(account_id)
        if not entries:
            self._done(partition, account_id)
            return Archived(0)
        flat = [list(fields) if isinstance(fields, list) else _flatten(fields) for _, fields in entries]
        name, blob = encode_segment(account_id, flat, head.first)
        if name.first != head.last + 1:
            return Archived(0, f"its stream begins at {name.first}, its archive ends at {head.last}")
        snapshot = self._snapshot_at(account_id, name.last)
        self._archive.storage.create(self._archive.path(account_id, name), blob)
        with redis_errors():
            reply = self._trim(keys=[self._keys.lease(partition, self._group), keys.stream, keys.snapshot],
                               args=[lease, name.first, name.last, flat[-1][_EVENT_ID], snapshot, head.first])
        if int(reply[0]) == -1:
            return Archived(0, "our lease of the partition is gone")
        if int(reply[0]) == 0:
            return Archived(0, reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1]))
        if len(entries) < SEGMENT_MAX_EVENTS:  # else more is left: the account stays due for the next pass
            self._done(partition, account_id)
        return Archived(name.last - name.first + 1)

    def _snapshot_at(self, account_id: str, version: int) -> bytes | str:
        """The account's state at ``version``, for the snapshot the trim needs; "" when Redis already has
        one at or after it."""
        loaded = self._store.load(account_id)
        if loaded.snapshot is not None and loaded.snapshot.version >= version:
            return ""
        state = account.rebuild(account_id, [e for e in loaded.events if e.version <= version], loaded.snapshot)
        return snapshot_json(state)

    def _done(self, partition: int, account_id: str) -> None:
        with redis_errors():
            self._redis.srem(self._keys.archive_due(partition), account_id)


def _flatten(fields: dict[bytes, bytes]) -> list[bytes]:
    return [item for pair in fields.items() for item in pair]


@dataclass
class ArchiveWorker:
    """Archives the due accounts of the partitions ``owned`` returns (number, lease), ``per_pass`` per
    partition, then waits ``interval`` seconds; in a thread of its own, beside the runner."""

    archiver: Archiver
    owned: Callable[[], list[tuple[int, str]]]
    per_pass: int = 20
    interval: float = 1.0
    #: Where the tallies go (``/metrics``): the replica's health, shared with the runner.
    health: Health = field(default_factory=Health)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run_pass(self) -> int:
        """One pass over the owned partitions; the events moved."""
        moved = 0
        for partition, lease in self.owned():
            try:
                for account_id in self.archiver.due(partition, self.per_pass):
                    moved += self._one(partition, lease, account_id)
            except LedgerError as exc:  # Redis or the archive is down: the next pass tries again
                self.health.archive_failures += 1
                log.warning("archiving partition %d paused: %s", partition, exc.detail,
                            extra={"fields": {"partition": partition}})
        return moved

    def _one(self, partition: int, lease: str, account_id: str) -> int:
        try:
            done = self.archiver.archive(partition, lease, account_id)
        except SegmentConflict as exc:  # never overwritten: an operator looks (the account stays due)
            self.health.archive_failures += 1
            log.error("cannot archive %s: %s", account_id, exc.detail, extra={"fields": {"account_id": account_id}})
            return 0
        except ArchiveUnavailable:
            raise
        except LedgerError as exc:  # this account's history cannot be archived as it is: say so, go on
            self.health.archive_failures += 1
            log.error("cannot archive %s: %s", account_id, exc.detail, extra={"fields": {"account_id": account_id}})
            return 0
        if done.refused:
            self.health.archive_refused += 1
            log.info("archiving %s refused: %s", account_id, done.refused,
                     extra={"fields": {"account_id": account_id}})
            return 0
        if done.events:
            self.health.archived += done.events
        return done.events

    def run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                moved = self.run_pass()
            except Exception:  # a bug must not end archiving silently: logged, then the next pass
                self.health.archive_failures += 1
                log.exception("archiving pass failed")
                moved = 0
            if not moved:
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="archiver", daemon=True)
        thread.start()
        return thread
