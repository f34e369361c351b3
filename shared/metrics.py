"""What the API counts, as one small port: every answered request (route, method, status, how long) and what
became of every command's append. Two adapters: ``prometheus_metrics`` (the containers: scraped from the probe
address, summed over every gunicorn worker) and ``emf_metrics`` (Lambda: CloudWatch embedded-metric log lines,
so counting adds no network call to a request). ``METRICS_FORMAT`` chooses; ``runtime`` builds the one in use.

The names are the ones docs/observability.md lists and deploy/prometheus/alerts.yaml watches. Labels stay
low-cardinality: a route is its template (``/accounts/{id}``), never a path with an account id in it.
"""

from __future__ import annotations

from typing import Final, Protocol

REQUESTS_TOTAL: Final = "ledger_http_requests_total"
REQUEST_DURATION: Final = "ledger_http_request_duration_seconds"
APPENDS_TOTAL: Final = "ledger_appends_total"
#: Seconds: a request answered from Redis takes about a millisecond; a frozen Redis holds one for the command
#: deadline (8 s by default).
DURATION_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: What became of a command (label ``outcome`` of ``ledger_appends_total``). ``conflict_retry`` counts each
#: re-decision after a concurrent writer won; the others, one per command.
APPENDED: Final = "appended"
CONFLICT_RETRY: Final = "conflict_retry"
IDEMPOTENT_REPLAY: Final = "idempotent_replay"
UNCHANGED: Final = "unchanged"  # nothing to append (an owner assigned again)
REJECTED: Final = "rejected"  # the business rules, the caller's reach or a precondition said no
CONFLICT_EXHAUSTED: Final = "conflict_exhausted"
OUTCOME_UNKNOWN: Final = "outcome_unknown"
STORE_UNAVAILABLE: Final = "store_unavailable"
STORE_FULL: Final = "store_full"  # Redis refused the write for lack of memory
OUTCOMES: Final = (APPENDED, CONFLICT_RETRY, IDEMPOTENT_REPLAY, UNCHANGED, REJECTED, CONFLICT_EXHAUSTED,
                   OUTCOME_UNKNOWN, STORE_UNAVAILABLE, STORE_FULL)

#: The route label of a request no route matched (a 404 or 405 answered by the gateway itself).
UNMATCHED: Final = "unmatched"
#: The CloudWatch namespace of EMF lines unless METRICS_NAMESPACE names another.
NAMESPACE: Final = "Ledgerstream"


class Metrics(Protocol):
    def request(self, route: str, method: str, status: int, seconds: float) -> None: ...

    def append(self, outcome: str) -> None: ...


class NoMetrics:
    """``METRICS_FORMAT=OFF``, and the default of code built without a runtime (tests, tools)."""

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        return None

    def append(self, outcome: str) -> None:
        return None


NO_METRICS: Final = NoMetrics()


def build(metrics_format: str, namespace: str = NAMESPACE) -> Metrics:
    """The adapter for ``metrics_format`` (validated by ``shared.config``), imported only when chosen;
    ``namespace`` is CloudWatch's, for EMF."""
    if metrics_format == "PROMETHEUS":
        from shared.prometheus_metrics import PrometheusMetrics

        return PrometheusMetrics()
    if metrics_format == "EMF":
        from shared.emf_metrics import EmfMetrics

        return EmfMetrics(namespace)
    return NO_METRICS
