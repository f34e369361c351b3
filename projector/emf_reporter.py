"""With ``METRICS_FORMAT=EMF`` (the ECS service in template.yaml) the projector also writes its headline
figures as CloudWatch embedded-metric log lines once a minute: the task's log group is the transport, and
the projection-lag alarm watches them. Every replica reports every partition (as on ``/metrics``), so the
alarm takes the Maximum over replicas, and a dead replica's partitions still show."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from aws_lambda_powertools.metrics import MetricUnit

from projector.status import PartitionStatus, totals
from shared.emf_metrics import emit
from shared.errors import ReadModelUnavailable, StoreUnavailable

log = logging.getLogger("ledgerstream.projector")
#: CloudWatch's standard resolution: one figure per minute is what an alarm period can use.
INTERVAL_SECONDS = 60.0
LAG_SECONDS = "ledger_projector_lag_seconds"


def report(rows: list[PartitionStatus], namespace: str) -> None:
    """One line per figure, for the whole deployment (no dimensions: one metric per namespace)."""
    total = totals(rows)
    emit(namespace, LAG_SECONDS, MetricUnit.Seconds, total.lag_age_s)
    emit(namespace, "ledger_projector_lag_entries", MetricUnit.Count, total.lag)
    emit(namespace, "ledger_projector_parked", MetricUnit.Count, total.parked)
    emit(namespace, "ledger_projector_quarantined", MetricUnit.Count, total.quarantined)
    emit(namespace, "ledger_projector_partitions_unowned", MetricUnit.Count, total.unowned)


class EmfReporter:
    """Reports every ``interval`` seconds in a daemon thread until stopped. A figure that cannot be read (Redis
    or MongoDB out of reach) is not written: the alarm treats missing data as breaching."""

    def __init__(self, rows: Callable[[], list[PartitionStatus]], namespace: str,
                 interval: float = INTERVAL_SECONDS) -> None:
        self._rows, self._namespace, self._interval = rows, namespace, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="emf-reporter", daemon=True)

    def start(self) -> EmfReporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        failing = False
        while not self._stop.wait(self._interval):
            try:
                report(self._rows(), self._namespace)
            except (StoreUnavailable, ReadModelUnavailable) as exc:
                if not failing:
                    log.warning("metrics: cannot read the partitions' state for CloudWatch: %s", exc)
                failing = True
                continue
            failing = False
