"""Where Redis-backed tests (and benchmarks) run: a single node or a real cluster, described the same way."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import ClusterNode

from shared.keys import KeySpace
from shared.redis_client import is_cluster


@dataclass(frozen=True)
class RedisTarget:
    topology: str  # "standalone" or "cluster"
    url: str
    #: REDIS_CLUSTER_NODES: the other masters, so a client can start while the first is down.
    cluster_nodes: str = ""

    @property
    def cluster(self) -> bool:
        return self.topology == "cluster"

    def env(self) -> dict[str, str]:
        """The settings that point the service, the projector or a subprocess at this Redis."""
        values = {"REDIS_URL": self.url, "REDIS_CLUSTER": "true" if self.cluster else "false"}
        if self.cluster_nodes:
            values["REDIS_CLUSTER_NODES"] = self.cluster_nodes
        return values

    def client(self, **options: Any) -> redis.Redis:
        if not self.cluster:
            return redis.Redis.from_url(self.url, **options)
        seeds = [ClusterNode(*node.rsplit(":", 1)) for node in self.cluster_nodes.split(",") if node]  # type: ignore[no-untyped-call]
        cluster: redis.Redis = redis.RedisCluster(url=self.url, startup_nodes=seeds, **options)  # type: ignore[assignment]
        return cluster


def delete_keys(client: redis.Redis, pattern: str) -> int:
    """Delete every key matching ``pattern``, one by one (a multi-key DEL is cross-slot on a cluster)."""
    deleted = 0
    for key in list(client.scan_iter(match=pattern, count=1000)):
        deleted += int(client.delete(key))
    return deleted


def ids_on_every_master(client: redis.Redis, keys: KeySpace, stem: str = "acct") -> list[str]:
    """Account ids whose keys live on different masters, one per master (one id on a single node), so a test
    that uses them cannot pass because everything happened to land on the node it first talked to."""
    if not is_cluster(client):
        return [f"{stem}-0"]
    cluster: Any = client
    masters = len(cluster.get_primaries())
    found: dict[str, str] = {}
    for n in itertools.count():
        account_id = f"{stem}-{n}"
        found.setdefault(cluster.get_node_from_key(keys.stream(account_id)).name, account_id)
        if len(found) == masters:
            return sorted(found.values())
    raise AssertionError("unreachable")
