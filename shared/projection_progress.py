"""``RedisProjectionProgress``: what the query side reads of the projector's progress in Redis (its group's
pending entries, its dead letters, the log after a checkpoint) and the progress streams a waiting query
blocks on. Every command touches one partition's keys; the inspection of several partitions is one pipeline
(on a cluster, redis-py sends each node its part)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import redis
from redis.exceptions import ResponseError

from shared.consistency import LogPosition, entry_id_of, position_of
from shared.keys import KeySpace
from shared.queries import LogState
from shared.redis_client import text, unavailable_as_store_error

#: Parked entries looked at per partition: they are parked in log order, so these are the oldest.
PARKED_LOOKED_AT = 100


class RedisProjectionProgress:
    def __init__(self, client: redis.Redis, keys: KeySpace, group: str, socket_timeout: float) -> None:
        self._redis = client
        self._keys = keys
        self._group = group
        # A blocking read must return before the connection's own timeout takes it for a dead server.
        self._longest_block = max(0.01, socket_timeout / 2)

    def inspect(self, checkpoints: Mapping[int, LogPosition]) -> dict[int, LogState]:
        order = sorted(checkpoints)
        with unavailable_as_store_error():
            pipe: Any = self._redis.pipeline(transaction=False)
            for partition in order:
                log = self._keys.partition_log(partition)
                pipe.execute_command("XRANGE", log, f"({entry_id_of(checkpoints[partition])}", "+", "COUNT", 1)
                pipe.execute_command("XPENDING", log, self._group)
                pipe.execute_command("XRANGE", self._keys.parked(partition, self._group), "-", "+",
                                     "COUNT", PARKED_LOOKED_AT)
            replies: list[Any] = pipe.execute(raise_on_error=False)
        states = {}
        for index, partition in enumerate(order):
            after, pending, parked = replies[3 * index:3 * index + 3]
            states[partition] = LogState(_first_id(after), _oldest_pending(pending), _parked(parked))
        return states

    def cursors(self, partitions: Iterable[int]) -> dict[int, str]:
        order = list(partitions)
        with unavailable_as_store_error():
            pipe: Any = self._redis.pipeline(transaction=False)
            for partition in order:
                pipe.execute_command("XREVRANGE", self._keys.progress(partition, self._group), "+", "-", "COUNT", 1)
            replies: list[Any] = pipe.execute()
        return {partition: text(reply[0][0]) if reply else "0-0" for partition, reply in zip(order, replies,
                                                                                                 strict=True)}

    def wait(self, partition: int, cursor: str, timeout: float) -> str:
        block_ms = max(1, int(min(timeout, self._longest_block) * 1000))
        with unavailable_as_store_error():
            client: Any = self._redis
            found: Any = client.execute_command("XREAD", "COUNT", 16, "BLOCK", block_ms, "STREAMS",
                                                     self._keys.progress(partition, self._group), cursor)
        if not found:
            return cursor
        entries = found[0][1] if isinstance(found, list) else next(iter(found.values()))[0]
        return text(entries[-1][0])


def _first_id(reply: Any) -> LogPosition | None:
    if isinstance(reply, Exception):
        raise reply
    return position_of(text(reply[0][0])) if reply else None


def _oldest_pending(reply: Any) -> LogPosition | None:
    if isinstance(reply, ResponseError) and "NOGROUP" in str(reply):
        return None  # no projector has read this log yet: nothing is pending, and the checkpoint says the rest
    if isinstance(reply, Exception):
        raise reply
    # XPENDING's summary: [count, smallest id, greatest id, consumers] (a dict through some clients).
    smallest = reply.get("min") if isinstance(reply, dict) else reply[1]
    return None if not smallest else position_of(text(smallest))


def _parked(reply: Any) -> tuple[LogPosition, ...]:
    if isinstance(reply, Exception):
        raise reply
    found = []
    for _, fields in reply or ():
        values = fields if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2], strict=True))
        original = values.get(b"original_id") or values.get("original_id")
        if original:
            found.append(position_of(text(original)))
    return tuple(sorted(found))
