"""The metrics port as CloudWatch embedded-metric-format log lines (AWS Lambda Powertools), for Lambda: the
function's log is the transport, so counting adds no network call to a request. One line per metric, each
with its own dimensions, under the names the Prometheus adapter uses."""

from __future__ import annotations

from collections.abc import Mapping

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from shared import metrics


def emit(namespace: str, name: str, unit: MetricUnit, value: float, dimensions: Mapping[str, str] | None = None
         ) -> None:
    """One EMF line on stdout: ``name`` = ``value`` in ``namespace``, with ``dimensions`` (none: a metric of
    the whole namespace)."""
    with single_metric(name=name, unit=unit, value=value, namespace=namespace,
                       default_dimensions=dict(dimensions) if dimensions else None):
        pass


class EmfMetrics:
    def __init__(self, namespace: str = metrics.NAMESPACE) -> None:
        self._namespace = namespace

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        dimensions = {"route": route, "method": method}
        emit(self._namespace, metrics.REQUESTS_TOTAL, MetricUnit.Count, 1, {**dimensions, "status": str(status)})
        emit(self._namespace, metrics.REQUEST_DURATION, MetricUnit.Seconds, seconds, dimensions)

    def append(self, outcome: str) -> None:
        emit(self._namespace, metrics.APPENDS_TOTAL, MetricUnit.Count, 1, {"outcome": outcome})
