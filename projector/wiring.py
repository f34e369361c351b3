"""Assembling the projector's parts from the settings (the projector's composition root)."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis
from prometheus_client import CollectorRegistry

from projector import metrics, status
from projector.archiving import Archiver, ArchiveWorker
from projector.dead_letters import DeadLetters
from projector.leases import PartitionLeases
from projector.mongo_connection import connect
from projector.mongo_read_model import MongoReadModel
from projector.partition_log import PartitionLog, redis_errors
from projector.projection import History
from projector.read_model import ReadModel
from projector.runner import MAX_BLOCK_MS, Runner
from projector.settings import ProjectorSettings
from projector.store_identity import StoreIdentity
from projector.subscription import ConsumerGroup
from projector.trimming import LogTrimmer
from shared.account import Account
from shared.archive import Archive, open_archive
from shared.config import DEFAULT_ARCHIVE_AFTER_EVENTS, Settings
from shared.errors import ArchiveUnavailable, StoreUnavailable
from shared.events import RecordedEvent
from shared.keys import KeySpace
from shared.redis_client import build_client, is_cluster, memory
from shared.redis_store import RedisEventStore


@dataclass(frozen=True)
class Wiring:
    client: redis.Redis
    keys: KeySpace
    group: ConsumerGroup
    log: PartitionLog
    dead_letters: DeadLetters
    leases: PartitionLeases
    model: ReadModel
    history: History
    node_of: Callable[[int], str]
    settings: ProjectorSettings
    #: How long a fetcher thread may block in one read: well inside the client's socket timeout.
    block_ms: int = MAX_BLOCK_MS
    #: The CloudWatch namespace to report to as EMF log lines (METRICS_FORMAT=EMF); None: no such lines.
    emf_namespace: str | None = None
    #: Where accounts' older events go (ARCHIVE_URL), and what reads them back; None: nothing archived.
    archive: Archive | None = None
    store: RedisEventStore | None = None

    def runner(self) -> Runner:
        return Runner(self.group, self.log, self.dead_letters, self.leases, self.model,
                      archive_as_outage(self.history), self.settings,
                      self.node_of, self.block_ms, identity=self.identity,
                      trimmer=LogTrimmer(self.client, self.keys, self.settings.group))

    def rows(self) -> list[status.PartitionStatus]:
        """Every partition's state, as ``status`` reports it (read from Redis and the read model now)."""
        return status.status(self.log, self.dead_letters, self.leases, self.model, self.settings.stall_seconds)

    def metrics(self, runner: Runner) -> CollectorRegistry:
        """What ``/metrics`` reports: ``runner``'s tallies, and every partition read when scraped."""
        return metrics.registry(runner.health, self.rows, partial(memory, self.client))

    def archive_worker(self, runner: Runner) -> ArchiveWorker | None:
        """The archiver for the partitions ``runner`` owns, when an archive is configured."""
        if self.archive is None or self.store is None:
            return None
        archiver = Archiver(self.client, self.keys, self.settings.group, self.store, self.archive)
        return ArchiveWorker(archiver, lambda: [(n, p.lease) for n, p in list(runner.partitions.items())],
                             self.settings.archive_per_pass, health=runner.health)

    def stored(self, account_id: str) -> tuple[Account | None, int]:
        """An account's snapshot and version record in Redis (what ``verify --deep`` checks)."""
        store = self.store or RedisEventStore(self.client, self.keys, 3600)
        return store.load(account_id).snapshot, store.version_record(account_id)

    @property
    def identity(self) -> StoreIdentity:
        return StoreIdentity(self.client, self.keys, self.model)


def archive_as_outage(history: History) -> History:
    """For the loop: archived history it cannot read now (S3 down, a damaged segment, logged by the archive as
    an ERROR) is an outage of the event store, so it backs off and acknowledges nothing, rather than apply a
    partial history or park an event that is fine. The operator commands see the archive's own error."""
    def read(account_id: str, after: int, up_to: int | None) -> list[RecordedEvent]:
        try:
            return history(account_id, after, up_to)
        except ArchiveUnavailable as exc:
            reason = exc.__cause__ if isinstance(exc.__cause__, ArchiveUnavailable) else exc
            raise StoreUnavailable(f"archived history of {account_id} cannot be read: {reason.detail}") from exc
    return read


def wire(settings: Settings, projector: ProjectorSettings) -> Wiring:
    keys = KeySpace(settings.key_prefix, settings.partitions)
    # A pool, never one kept connection: the fetcher's threads each block in a read of their own.
    client = build_client(dataclasses.replace(settings, redis_single_connection=False))
    block_ms = max(1, min(MAX_BLOCK_MS, int(settings.redis_timeout_seconds * 1000 / 2)))
    archive = open_archive(settings.archive_url, settings.key_prefix)
    wiring = assemble(client, keys, projector, settings.idempotency_ttl_seconds, block_ms=block_ms, archive=archive,
                      archive_every=settings.archive_after_events)
    emf = settings.metrics_namespace if settings.metrics_format == "EMF" else None
    return dataclasses.replace(wiring, emf_namespace=emf)


def assemble(client: redis.Redis, keys: KeySpace, projector: ProjectorSettings, ttl_seconds: int = 86_400,
             owner: str | None = None, model: ReadModel | None = None, block_ms: int = MAX_BLOCK_MS,
             archive: Archive | None = None, archive_every: int = DEFAULT_ARCHIVE_AFTER_EVENTS) -> Wiring:
    """``model`` defaults to MongoDB at the configured address (tests hand in the in-memory one)."""
    # Each process gets an identity of its own: two replicas can never be mistaken for one another, and a
    # restarted one is a new consumer (the lease, not its name, says who owns a partition).
    owner = owner or f"{projector.name}-{secrets.token_hex(3)}"
    store = RedisEventStore(client, keys, ttl_seconds, archive=archive, archive_every=archive_every)

    def history(account_id: str, after: int, up_to: int | None) -> list[RecordedEvent]:
        return store.read(account_id, after, None if up_to is None else up_to - after)

    def node_of(partition: int) -> str:
        if not is_cluster(client):
            return "redis"
        cluster: Any = client
        with redis_errors():
            return str(cluster.get_node_from_key(keys.partition_log(partition)).name)

    if model is None:
        model = MongoReadModel(connect(projector), projector.mongodb_database, projector.mongodb_collection,
                               projector.timestamps_kept, projector.group, owner)
    return Wiring(client, keys, ConsumerGroup(client, keys, projector.group, owner),
                  PartitionLog(client, keys, projector.group), DeadLetters(client, keys, projector.group),
                  PartitionLeases(client, keys, projector.group, owner, projector.lease_ttl_seconds),
                  model, history, node_of, projector, block_ms, archive=archive, store=store)
