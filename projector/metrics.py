"""The projector's ``/metrics`` (Prometheus text, on its health port): what this replica did, and how every
partition stands.

Counters come from the loop's own tallies (``Health``). The partition gauges are read from Redis and the read
model when scraped, for **every** partition, not only this replica's: a replica that is paused or dead
reports nothing, so its partitions' lag must show on the others'. Alert on ``max by (partition)``.
Labels are partition numbers only (never an account id).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from projector.health import Health
from projector.status import PartitionStatus, totals
from shared.errors import ReadModelUnavailable, StoreUnavailable
from shared.prometheus_metrics import RedisMemoryCollector
from shared.redis_client import NodeMemory

log = logging.getLogger("ledgerstream.projector")


class ReplicaCollector(Collector):
    """This replica's tallies since it started."""

    def __init__(self, health: Health) -> None:
        self._health = health

    def collect(self) -> Iterator[Metric]:
        health = self._health
        for name, text, value in (
                ("ledger_projector_applied", "Events applied to the read model by this replica", health.events_applied),
                ("ledger_projector_batches", "Batches this replica settled", health.batches),
                ("ledger_projector_repairs", "Read-model documents rewritten from history (found wrong)",
                 health.repairs),
                ("ledger_projector_reprojected", "Entries applied again by a re-projection", health.reprojected),
                ("ledger_projector_log_trimmed", "Partition-log entries trimmed behind every group's checkpoint",
                 health.trimmed),
                ("ledger_projector_archived_events", "Events this replica moved from Redis to the archive",
                 health.archived),
                ("ledger_projector_archive_refused",
                 "Archivings the guarded trim refused (the stream changed under it; retried on a later pass)",
                 health.archive_refused),
                ("ledger_projector_archive_failures",
                 "Archivings that failed (Redis or the archive down, or an unreadable stream: see the log)",
                 health.archive_failures),
                ("ledger_projector_lease_takeovers",
                 "Partitions this replica took from a replica that had not handed them back", health.takeovers)):
            yield CounterMetricFamily(name, text, value=value)
        yield GaugeMetricFamily("ledger_projector_partitions_owned", "Partitions this replica owns",
                                value=len(health.owned))
        live, _ = health.live()
        yield GaugeMetricFamily("ledger_projector_stalled",
                                "1 when this replica's loop has made no progress for PROJECTOR_STALL_SECONDS "
                                "with work to do (its /healthz answers 503)", value=0 if live else 1)


class PartitionCollector(Collector):
    """Every partition's lag, pending entries and parked events, as ``projector status`` reports them."""

    def __init__(self, rows: Callable[[], list[PartitionStatus]]) -> None:
        self._rows = rows
        self._failing = False

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("ledger_projector_status_up",
                               "1 when this scrape could read every partition's state from Redis and the read model")
        try:
            rows = self._rows()
        except (StoreUnavailable, ReadModelUnavailable) as exc:
            if not self._failing:  # once per outage, not once per scrape
                log.warning("metrics: cannot read the partitions' state: %s", exc)
            self._failing = True
            up.add_metric([], 0)
            yield up
            return
        self._failing = False
        up.add_metric([], 1)
        yield up
        gauges: dict[str, tuple[str, Callable[[PartitionStatus], float]]] = {
            "ledger_projector_lag_entries": ("Log entries after the read model's checkpoint (counted up to 10,000)",
                                             lambda r: r.lag),
            "ledger_projector_lag_seconds": ("Age of the oldest entry the read model has not applied (0: none)",
                                             lambda r: r.lag_age_s or 0.0),
            "ledger_projector_pending": ("Entries delivered to a replica and not yet acknowledged",
                                         lambda r: r.pending),
            "ledger_projector_oldest_pending_seconds": ("Age of the oldest pending entry (0: none)",
                                                        lambda r: r.oldest_pending_age_s or 0.0),
            "ledger_projector_progress_age_seconds": ("Seconds since the read model's checkpoint last moved",
                                                      lambda r: r.last_progress_age_s or 0.0),
            "ledger_projector_owned": ("1 when some replica holds the partition's lease", lambda r: int(bool(r.owner))),
            "ledger_projector_log_entries": ("Entries the partition log holds (trimmed behind every group)",
                                             lambda r: r.length),
            "ledger_projector_archive_due": ("Accounts waiting for the archiver to move their older events",
                                             lambda r: r.archive_due),
        }
        for name, (text, read) in gauges.items():
            family = GaugeMetricFamily(name, text, labels=["partition"])
            for row in rows:
                family.add_metric([str(row.partition)], read(row))
            yield family
        total = totals(rows)
        yield GaugeMetricFamily("ledger_projector_parked", "Entries parked, waiting for an operator",
                                value=total.parked)
        yield GaugeMetricFamily("ledger_projector_quarantined",
                                "Accounts quarantined (their events wait behind a parked one)", value=total.quarantined)
        yield GaugeMetricFamily("ledger_projector_partitions_unowned", "Partitions no replica holds a lease on",
                                value=total.unowned)


def registry(health: Health, rows: Callable[[], list[PartitionStatus]],
             memory: Callable[[], list[NodeMemory]]) -> CollectorRegistry:
    registry = CollectorRegistry()
    for collector in (ReplicaCollector(health), PartitionCollector(rows), RedisMemoryCollector(memory)):
        registry.register(collector)
    return registry
