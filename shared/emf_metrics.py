"""The metrics port as CloudWatch embedded-metric-format log lines (AWS Lambda Powertools), for Lambda: the
function's log is the transport, so counting adds no network call to a request. One line per metric, each
with its own dimensions, under the names the Prometheus adapter uses."""

from __future__ import annotations

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from shared import metrics

NAMESPACE = "Ledgerstream"


class EmfMetrics:
    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        dimensions = {"route": route, "method": method}
        with single_metric(name=metrics.REQUESTS_TOTAL, unit=MetricUnit.Count, value=1, namespace=NAMESPACE,
                           default_dimensions={**dimensions, "status": str(status)}):
            pass
        with single_metric(name=metrics.REQUEST_DURATION, unit=MetricUnit.Seconds, value=seconds,
                           namespace=NAMESPACE, default_dimensions=dimensions):
            pass

    def append(self, outcome: str) -> None:
        with single_metric(name=metrics.APPENDS_TOTAL, unit=MetricUnit.Count, value=1, namespace=NAMESPACE,
                           default_dimensions={"outcome": outcome}):
            pass
