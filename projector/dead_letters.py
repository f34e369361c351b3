"""The projector's dead letters: entries parked because they could not be applied (``ConsumerGroup.park`` puts
them there), and the accounts quarantined behind them. Read by ``status`` and ``parked list``; emptied by
``parked replay`` once a fix lets them apply."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from projector.partition_log import redis_errors
from shared.keys import KeySpace
from shared.redis_client import text

#: The fields parking adds to a parked entry, beside the original entry's own.
PARKING_FIELDS = (b"original_id", b"error", b"deliveries", b"parked_at", b"group")


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


class DeadLetters:
    def __init__(self, client: redis.Redis, keys: KeySpace, group: str) -> None:
        self._redis = client
        self.keys = keys
        self.group = group

    def parked(self, partitions: Iterable[int]) -> list[ParkedEntry]:
        found = []
        for partition in partitions:
            with redis_errors():
                entries: Any = self._redis.xrange(self.keys.parked(partition, self.group)) or []
            for raw_id, fields in entries:
                found.append(ParkedEntry(
                    partition, text(raw_id), text(fields.get(b"original_id", b"")),
                    text(fields.get(b"error", b"")), int(fields.get(b"deliveries", b"0")), fields))
        return found

    def unpark(self, entry: ParkedEntry) -> None:
        with redis_errors():
            self._redis.xdel(self.keys.parked(entry.partition, self.group), entry.parked_id)

    def quarantined(self, partition: int) -> dict[str, str]:
        with redis_errors():
            found: Any = self._redis.hgetall(self.keys.quarantine(partition, self.group))
        return {text(k): text(v) for k, v in found.items()}

    def lift(self, partition: int, account_id: str) -> None:
        with redis_errors():
            self._redis.hdel(self.keys.quarantine(partition, self.group), account_id)
