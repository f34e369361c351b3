"""Keeping the partition logs short: a log exists to deliver each event to every projector group, and once every
group's read model has it, the entry is only memory. The account streams hold every event for good; the logs
hold what some group may still need.

Each owner of a partition trims its log behind the oldest of, over every group on the log:

* the group's read-model checkpoint, as that group's projector last recorded it (a hash beside the log;
  a group that never recorded one holds everything: it may be an older projector, or one not started yet),
* the group's oldest pending entry (being applied or retried somewhere),
* the group's last delivered entry (what comes after it has not been read).

The checkpoint's own entry is kept, so the self-check that looks it up never takes a trim for a Redis that
lost writes. All of it runs in one script, fenced by our lease, on the partition's node (every key shares
the partition's hash tag). Redis 7 has no acknowledgement-aware trimming (8.2's ``XTRIM ... ACKED``), so the
floor is computed here; the checkpoint condition would be needed on 8.2 too.

The append script caps every log at ``PARTITION_LOG_MAX_ENTRIES`` whatever happens here, so a stopped
projector cannot let Redis grow without bound; recovery notices a log trimmed past its checkpoint and
re-synchronises that partition from the account streams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from projector.partition_log import redis_errors
from shared.keys import KeySpace
from shared.redis_client import text

# KEYS: lease, log, checkpoints. ARGV: lease value, group, our checkpoint.
# Reply: {-1} lease lost | {0, why} nothing trimmed | {1, floor, entries removed}
_TRIM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function older(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local floor = ARGV[3]
for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
  local group = {}
  for i = 1, #info, 2 do group[info[i]] = info[i + 1] end
  local recorded = redis.call('HGET', KEYS[3], group['name'])
  if not recorded then return {0, 'group ' .. group['name'] .. ' has recorded no checkpoint'} end
  if older(recorded, floor) then floor = recorded end
  if older(group['last-delivered-id'], floor) then floor = group['last-delivered-id'] end
  if tonumber(group['pending']) > 0 then
    local oldest = redis.call('XPENDING', KEYS[2], group['name'])[2]
    if older(oldest, floor) then floor = oldest end
  end
end
if floor == '0-0' then return {0, 'no group is past the start of the log'} end
return {1, floor, redis.call('XTRIM', KEYS[2], 'MINID', floor)}
"""


@dataclass(frozen=True, slots=True)
class Trimmed:
    #: The oldest entry kept (None: nothing trimmed, for the reason in ``held_by``).
    floor: str | None
    removed: int = 0
    held_by: str = ""


class LogTrimmer:
    def __init__(self, client: redis.Redis, keys: KeySpace, group: str) -> None:
        self._keys, self._group = keys, group
        self._script: Any = client.register_script(_TRIM)

    def trim(self, lease: str, partition: int, checkpoint: str) -> Trimmed:
        """Trim ``partition``'s log behind every group, ours at ``checkpoint`` (our read model's, now)."""
        keys = [self._keys.lease(partition, self._group), self._keys.partition_log(partition),
                self._keys.checkpoints(partition)]
        with redis_errors(partition):
            reply: Any = self._script(keys=keys, args=[lease, self._group, checkpoint])
        if int(reply[0]) < 0:  # the next owner trims
            return Trimmed(None, 0, "lease lost")
        if int(reply[0]) == 0:
            return Trimmed(None, 0, text(reply[1]))
        return Trimmed(text(reply[1]), int(reply[2]))
