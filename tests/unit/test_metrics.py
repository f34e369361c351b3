"""What the API and the projector count: one outcome per command, one request per answer, in the format the
process is configured for (Prometheus, CloudWatch EMF, or nothing)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from projector import emf_reporter
from projector.health import Health
from projector.metrics import registry
from projector.status import PartitionStatus
from shared import metrics
from shared.account import Account, AssignOwner, Deposit, OpenAccount, Withdraw
from shared.api import Dependencies
from shared.auth import OpenAccess
from shared.config import ConfigError, Settings, load_settings
from shared.emf_metrics import EmfMetrics
from shared.errors import InsufficientFunds, OutcomeUnknown, ReadModelUnavailable, StoreUnavailable, VersionConflict
from shared.event_store import AppendOutcome, AppendUnknown, Conflict, IdempotencyWrite, Loaded
from shared.events import NewEvent
from shared.principal import ANONYMOUS, Owner
from shared.prometheus_metrics import PrometheusMetrics
from shared.redis_client import NodeMemory
from shared.service import AccountService, CommandContext
from tests.fakes import InMemoryEventStore
from tests.support.apigw import Api
from tests.support.events import new_event
from tests.support.waiting import wait_until


class Recorded:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, int]] = []
        self.outcomes: Counter[str] = Counter()

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        assert seconds >= 0
        self.requests.append((route, method, status))

    def append(self, outcome: str) -> None:
        self.outcomes[outcome] += 1


def _ctx(key: str | None = None) -> CommandContext:
    return CommandContext(request_id="req", actor=ANONYMOUS, idempotency_key=key)


def _service(store: InMemoryEventStore, recorded: Recorded, attempts: int = 5) -> AccountService:
    return AccountService(store, max_attempts=attempts, sleep=lambda _: None, metrics=recorded)


def test_each_command_counts_one_outcome() -> None:
    recorded = Recorded()
    service = _service(InMemoryEventStore(), recorded)
    service.execute("acc", OpenAccount(), _ctx())
    service.execute("acc", Deposit(100), _ctx("k1"))
    service.execute("acc", Deposit(100), _ctx("k1"))  # the client's retry
    with pytest.raises(InsufficientFunds):
        service.execute("acc", Withdraw(1_000), _ctx())
    owner = Owner("https://issuer.example", "alice")
    service.execute("acc", AssignOwner(owner), _ctx())
    service.execute("acc", AssignOwner(owner), _ctx())  # already hers: nothing to append
    assert recorded.outcomes == {metrics.APPENDED: 3, metrics.IDEMPOTENT_REPLAY: 1, metrics.REJECTED: 1,
                                 metrics.UNCHANGED: 1}


class ConflictsTwice(InMemoryEventStore):
    def __init__(self, conflicts: int) -> None:
        super().__init__()
        self.conflicts = conflicts

    def append(self, account_id: str, expected_version: int, events: Sequence[NewEvent],
               idempotency: IdempotencyWrite | None = None, snapshot: Account | None = None) -> AppendOutcome:
        if self.conflicts and account_id in self.streams:
            self.conflicts -= 1
            return Conflict(expected_version)
        return super().append(account_id, expected_version, events, idempotency, snapshot)


def test_conflicts_count_each_retry_and_an_exhausted_command_once() -> None:
    recorded = Recorded()
    service = _service(ConflictsTwice(2), recorded)
    service.execute("acc", OpenAccount(), _ctx())
    service.execute("acc", Deposit(1), _ctx())
    assert recorded.outcomes == {metrics.APPENDED: 2, metrics.CONFLICT_RETRY: 2}

    exhausted = Recorded()
    store = ConflictsTwice(10)
    InMemoryEventStore.append(store, "acc", 0, [new_event("acc", "AccountOpened")])
    with pytest.raises(VersionConflict):
        _service(store, exhausted, attempts=3).execute("acc", Deposit(1), _ctx())
    assert exhausted.outcomes == {metrics.CONFLICT_RETRY: 2, metrics.CONFLICT_EXHAUSTED: 1}


class Unreachable(InMemoryEventStore):
    def __init__(self, sent: bool) -> None:
        super().__init__()
        self.sent = sent

    def load(self, account_id: str, idempotency_key: str | None = None) -> Loaded:
        if self.sent and account_id in self.streams:
            return super().load(account_id, idempotency_key)
        if not self.sent:
            raise StoreUnavailable.unreachable()
        return super().load(account_id, idempotency_key)

    def append(self, account_id: str, expected_version: int, events: Sequence[NewEvent],
               idempotency: IdempotencyWrite | None = None, snapshot: Account | None = None) -> AppendOutcome:
        raise AppendUnknown("no reply")


def test_outages_count_as_store_unavailable_or_outcome_unknown() -> None:
    recorded = Recorded()
    with pytest.raises(StoreUnavailable):
        _service(Unreachable(sent=False), recorded).execute("acc", OpenAccount(), _ctx())
    clock = iter(float(n) for n in range(100))
    lost = AccountService(Unreachable(sent=True), sleep=lambda _: None, deadline_seconds=3.0,
                          monotonic=lambda: next(clock), metrics=recorded)
    with pytest.raises(OutcomeUnknown):
        lost.execute("acc", OpenAccount(), _ctx())
    assert recorded.outcomes == {metrics.STORE_UNAVAILABLE: 1, metrics.OUTCOME_UNKNOWN: 1}


def test_every_answer_is_counted_under_its_route_template() -> None:
    recorded = Recorded()
    service = _service(InMemoryEventStore(), recorded)
    dependencies = Dependencies(Settings(), lambda: service, OpenAccess(), recorded)
    api = Api(lambda: dependencies)
    api.call("create_account", "acc-1")
    api.call("deposit", "acc-1", {"amount": 5})
    api.call("deposit", "acc-1", {"amount": "lots"})
    api.call("get_account", "nobody")
    assert recorded.requests == [("/accounts", "POST", 201), ("/accounts/{id}/deposits", "POST", 200),
                                 ("/accounts/{id}/deposits", "POST", 400), ("/accounts/{id}", "GET", 404)]
    assert recorded.outcomes == {metrics.APPENDED: 2}


def test_emf_lines_carry_the_same_names_with_their_dimensions(capsys: pytest.CaptureFixture[str]) -> None:
    emf = EmfMetrics()
    emf.request("/accounts/{id}/deposits", "POST", 200, 0.0042)
    emf.append(metrics.APPENDED)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    found = {}
    for line in lines:
        [directive] = line["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "Ledgerstream"
        [metric] = directive["Metrics"]
        found[metric["Name"]] = ({d: line[d] for d in directive["Dimensions"][0]}, line[metric["Name"]])
    assert found == {
        "ledger_http_requests_total": ({"route": "/accounts/{id}/deposits", "method": "POST", "status": "200"}, [1.0]),
        "ledger_http_request_duration_seconds": ({"route": "/accounts/{id}/deposits", "method": "POST"}, [0.0042]),
        "ledger_appends_total": ({"outcome": "appended"}, [1.0]),
    }


def test_prometheus_counts_in_the_process_registry() -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    route = {"route": "/accounts/{id}", "method": "GET"}
    requests, appended = sample("ledger_http_requests_total", **route, status="200"), sample(
        "ledger_appends_total", outcome="appended")
    prometheus = PrometheusMetrics()
    prometheus.request("/accounts/{id}", "GET", 200, 0.003)
    prometheus.request("/accounts/{id}", "GET", 200, 0.2)
    prometheus.append(metrics.APPENDED)
    assert sample("ledger_http_requests_total", **route, status="200") == requests + 2
    assert sample("ledger_appends_total", outcome="appended") == appended + 1
    assert sample("ledger_http_request_duration_seconds_bucket", **route, le="0.005") >= 1


def test_the_format_is_a_validated_setting() -> None:
    assert load_settings({}).metrics_format == "PROMETHEUS"
    assert isinstance(metrics.build(load_settings({"METRICS_FORMAT": "emf"}).metrics_format), EmfMetrics)
    assert metrics.build(load_settings({"METRICS_FORMAT": "off"}).metrics_format) is metrics.NO_METRICS
    with pytest.raises(ConfigError, match="METRICS_FORMAT"):
        load_settings({"METRICS_FORMAT": "statsd"})
    assert Settings().metrics_format == "PROMETHEUS"


def _row(partition: int, lag: int, owner: str | None = "r1", parked: int = 0) -> PartitionStatus:
    return PartitionStatus(partition, owner, 10, lag, 2.5 if lag else None, 0, None, 1.0, "1-0", "2-0", parked, 0,
                           None)


def _text(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_the_projector_reports_its_tallies_and_every_partition() -> None:
    health = Health(owned=(0,), events_applied=7, takeovers=1, repairs=2, reprojected=5, batches=3, trimmed=40,
                    archived=90, archive_refused=2, archive_failures=1)
    waiting = PartitionStatus(2, "r2", 10, 4, 9.0, 4, 7.5, 30.0, "1-0", "2-0", 0, 1, None, archive_due=12)
    rows = [_row(0, 0), _row(1, 3, owner=None, parked=2), waiting]
    text = _text(registry(health, lambda: rows, lambda: [NodeMemory("redis", 1000, 4000)]))
    for line in ('ledger_projector_pending{partition="2"} 4.0',
                 'ledger_projector_oldest_pending_seconds{partition="2"} 7.5',
                 'ledger_projector_oldest_pending_seconds{partition="0"} 0.0',
                 'ledger_projector_progress_age_seconds{partition="2"} 30.0',
                 'ledger_projector_owned{partition="1"} 0.0',
                 'ledger_projector_quarantined 1.0', 'ledger_projector_repairs_total 2.0',
                 'ledger_projector_reprojected_total 5.0', 'ledger_projector_batches_total 3.0',
                 'ledger_projector_log_trimmed_total 40.0', 'ledger_projector_archived_events_total 90.0',
                 'ledger_projector_archive_refused_total 2.0', 'ledger_projector_archive_due{partition="2"} 12.0',
                 'ledger_projector_archive_failures_total 1.0',
                 'ledger_projector_applied_total 7.0', 'ledger_projector_lease_takeovers_total 1.0',
                 'ledger_projector_partitions_owned 1.0', 'ledger_projector_lag_entries{partition="1"} 3.0',
                 'ledger_projector_lag_seconds{partition="1"} 2.5', 'ledger_projector_lag_seconds{partition="0"} 0.0',
                 'ledger_projector_parked 2.0', 'ledger_projector_partitions_unowned 1.0',
                 'ledger_projector_stalled 0.0', 'ledger_projector_status_up 1.0',
                 'ledger_redis_used_memory_bytes{node="redis"} 1000.0',
                 'ledger_redis_maxmemory_bytes{node="redis"} 4000.0'):
        assert line in text.splitlines()


def test_a_scrape_during_an_outage_says_so_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    def down() -> list[PartitionStatus]:
        raise ReadModelUnavailable("no MongoDB")

    def redis_down() -> list[NodeMemory]:
        raise StoreUnavailable.unreachable()

    scraped = registry(Health(), down, redis_down)
    with caplog.at_level(logging.WARNING):
        first, second = _text(scraped), _text(scraped)
    assert "ledger_projector_status_up 0.0" in first and "ledger_redis_up 0.0" in second
    assert "ledger_projector_lag_entries" not in first and "ledger_projector_applied_total 0.0" in first
    assert len([r for r in caplog.records if "cannot read the partitions" in r.getMessage()]) == 1


def _emf(out: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in out.splitlines():
        document = json.loads(line)
        [directive] = document["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "Ledgerstream/test" and directive["Dimensions"] == [[]]
        [metric] = directive["Metrics"]
        found[metric["Name"]] = document[metric["Name"]][0]
    return found


def test_the_projector_reports_its_headline_figures_as_emf(capsys: pytest.CaptureFixture[str]) -> None:
    emf_reporter.report([_row(0, 0), _row(1, 3, owner=None, parked=2)], "Ledgerstream/test")
    assert _emf(capsys.readouterr().out) == {
        "ledger_projector_lag_seconds": 2.5, "ledger_projector_lag_entries": 3.0, "ledger_projector_parked": 2.0,
        "ledger_projector_quarantined": 0.0, "ledger_projector_partitions_unowned": 1.0}


def test_the_emf_reporter_writes_each_interval_and_nothing_it_cannot_read(
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    answers: list[list[PartitionStatus] | Exception] = [StoreUnavailable.unreachable(), StoreUnavailable.unreachable(),
                                                         [_row(0, 0)]]

    def rows() -> list[PartitionStatus]:
        answer = answers.pop(0) if answers else [_row(0, 0)]
        if isinstance(answer, Exception):
            raise answer
        return answer

    reporter = emf_reporter.EmfReporter(rows, "Ledgerstream/test", interval=0.01).start()
    try:
        wait_until(lambda: not answers, 10, "three reports")
    finally:
        reporter.stop()
    figures = _emf(capsys.readouterr().out)
    assert figures["ledger_projector_lag_seconds"] == 0.0
    assert len([r for r in caplog.records if "for CloudWatch" in r.getMessage()]) == 1
