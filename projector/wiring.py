"""Assembling the projector's parts from the settings (the projector's composition root)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from projector.leases import PartitionLeases
from projector.read_model import ReadModel, connect_mongo
from projector.reader import LogReader
from projector.selfcheck import History
from shared.config import ProjectorSettings, Settings
from shared.events import RecordedEvent
from shared.keys import KeySpace
from shared.redis_client import build_client, is_cluster
from shared.redis_store import RedisEventStore


@dataclass(frozen=True)
class Wiring:
    client: redis.Redis
    keys: KeySpace
    reader: LogReader
    leases: PartitionLeases
    model: ReadModel
    history: History
    node_of: Callable[[int], str]


def wire(settings: Settings, projector: ProjectorSettings) -> Wiring:
    keys = KeySpace(settings.key_prefix, settings.partitions)
    return assemble(build_client(settings), keys, projector, settings.idempotency_ttl_seconds)


def assemble(client: redis.Redis, keys: KeySpace, projector: ProjectorSettings, ttl_seconds: int = 86_400,
             owner: str | None = None) -> Wiring:
    # Each process gets an identity of its own: two replicas can never be mistaken for one another, and a
    # restarted one is a new consumer (the lease, not its name, says who owns a partition).
    owner = owner or f"{projector.name}-{secrets.token_hex(3)}"
    store = RedisEventStore(client, keys, ttl_seconds)

    def history(account_id: str, after: int, up_to: int | None) -> list[RecordedEvent]:
        return store.read(account_id, after, None if up_to is None else up_to - after)

    def node_of(partition: int) -> str:
        if not is_cluster(client):
            return "redis"
        cluster: Any = client
        return str(cluster.get_node_from_key(keys.partition_log(partition)).name)

    model = ReadModel(connect_mongo(projector), projector.mongodb_database, projector.mongodb_collection,
                      projector.timestamps_kept, projector.group, owner)
    return Wiring(client, keys, LogReader(client, keys, projector.group, owner),
                  PartitionLeases(client, keys, projector.group, owner, projector.lease_ttl_ms),
                  model, history, node_of)

