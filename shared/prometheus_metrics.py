"""The metrics port on prometheus_client. Under gunicorn each worker writes its counts to files in
``PROMETHEUS_MULTIPROC_DIR`` (set by gateway/gunicorn.conf.py before any worker starts), and the health process
serves their sum on ``/metrics``; in a single process the default registry holds them.

Label children are looked up once per label set and kept: ``labels()`` costs more than the increment itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared import metrics
from shared.errors import StoreUnavailable
from shared.redis_client import NodeMemory

_REQUESTS = Counter(metrics.REQUESTS_TOTAL, "HTTP requests answered, by route template, method and status",
                    ("route", "method", "status"))
_DURATION = Histogram(metrics.REQUEST_DURATION, "Time to answer an HTTP request, in seconds",
                      ("route", "method"), buckets=metrics.DURATION_BUCKETS)
_APPENDS = Counter(metrics.APPENDS_TOTAL, "What became of each command's append", ("outcome",))


class PrometheusMetrics:
    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, int], Counter] = {}
        self._durations: dict[tuple[str, str], Histogram] = {}
        # Every outcome exists from the start, at 0: a rate() over a series that appears late misses its first.
        self._appends = {outcome: _APPENDS.labels(outcome) for outcome in metrics.OUTCOMES}

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = _REQUESTS.labels(route, method, str(status))
        counter.inc()
        duration = self._durations.get((route, method))
        if duration is None:
            duration = self._durations[route, method] = _DURATION.labels(route, method)
        duration.observe(seconds)

    def append(self, outcome: str) -> None:
        self._appends[outcome].inc()


class RedisMemoryCollector(Collector):
    """Redis's memory against its limit, read when scraped (one INFO per master): the number that says how
    long until every write fails with ``noeviction``."""

    def __init__(self, read: Callable[[], list[NodeMemory]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("ledger_redis_up", "1 when Redis answered this scrape's INFO, else 0")
        try:
            nodes = self._read()
        except StoreUnavailable:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        used = GaugeMetricFamily("ledger_redis_used_memory_bytes", "Redis used_memory, per master", labels=["node"])
        limit = GaugeMetricFamily("ledger_redis_maxmemory_bytes", "Redis maxmemory per master (0: no limit)",
                                  labels=["node"])
        for node in nodes:
            used.add_metric([node.node], node.used_bytes)
            limit.add_metric([node.node], node.max_bytes)
        yield from (up, used, limit)
