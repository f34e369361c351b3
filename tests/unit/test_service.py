"""The service's load -> decide -> append loop, on the in-memory store (no I/O)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from shared import account
from shared.account import Account, Deposit, OpenAccount, Withdraw
from shared.errors import (
    AccountNotFound,
    IdempotencyKeyReused,
    InsufficientFunds,
    OutcomeUnknown,
    PreconditionFailed,
    StoreUnavailable,
    VersionConflict,
)
from shared.event_store import AppendOutcome, AppendUnknown, Conflict, IdempotencyWrite, Loaded, NotDurable
from shared.events import NewEvent
from shared.preconditions import IfMatch
from shared.principal import ANONYMOUS
from shared.service import AccountService, CommandContext, CommandResult
from tests.fakes import InMemoryEventStore
from tests.support.events import history, new_event


def ctx(key: str | None = None, if_match: IfMatch | None = None) -> CommandContext:
    return CommandContext(request_id="req", actor=ANONYMOUS, idempotency_key=key, if_match=if_match)


def make_service(store: InMemoryEventStore, attempts: int = 5) -> AccountService:
    return AccountService(store, max_attempts=attempts, sleep=lambda _: None)


@pytest.fixture
def store() -> InMemoryEventStore:
    return InMemoryEventStore()


def funded(store: InMemoryEventStore, amount: int) -> AccountService:
    service = make_service(store)
    service.execute("acc", OpenAccount(), ctx())
    service.execute("acc", Deposit(amount), ctx())
    return service


class Interleaving(InMemoryEventStore):
    """Lets a concurrent writer's command land just before our append, as a race would."""

    def __init__(self) -> None:
        super().__init__()
        self.intruders: list[Deposit | Withdraw] = []

    def append(self, account_id: str, expected_version: int, events: Sequence[NewEvent],
               idempotency: IdempotencyWrite | None = None, snapshot: Account | None = None) -> AppendOutcome:
        while self.intruders:
            command = self.intruders.pop()
            state = account.rebuild(account_id, self.streams[account_id])
            decided = command.decide(state)
            super().append(account_id, state.version, [new_event(account_id, decided.type, command.amount)])
        return super().append(account_id, expected_version, events, idempotency, snapshot)


def test_commands_update_the_balance(store: InMemoryEventStore) -> None:
    service = funded(store, 500)
    result = service.execute("acc", Withdraw(200), ctx())
    assert (result.amount, result.balance, result.version, result.replayed) == (200, 300, 3, False)
    assert service.get("acc", ANONYMOUS).balance == 300


def test_conflict_re_decides_against_fresh_state() -> None:
    store = Interleaving()
    service = funded(store, 100)
    store.intruders.append(Withdraw(60))
    # Our withdrawal of 50 was valid against the state we read (100), but not after the intruder's 60.
    with pytest.raises(InsufficientFunds):
        service.execute("acc", Withdraw(50), ctx())
    assert service.get("acc", ANONYMOUS).balance == 40


def test_conflict_then_success_uses_the_new_version() -> None:
    store = Interleaving()
    service = funded(store, 100)
    store.intruders.append(Deposit(5))
    result = service.execute("acc", Deposit(10), ctx())
    assert (result.balance, result.version) == (115, 4)


class AlwaysConflicts(InMemoryEventStore):
    def append(self, account_id: str, expected_version: int, events: Sequence[NewEvent],
               idempotency: IdempotencyWrite | None = None, snapshot: Account | None = None) -> AppendOutcome:
        return Conflict(expected_version + 1)


def test_retries_are_bounded() -> None:
    store = AlwaysConflicts()
    InMemoryEventStore.append(store, "acc", 0, [new_event("acc", "AccountOpened")])
    sleeps: list[float] = []
    service = AccountService(store, max_attempts=4, sleep=sleeps.append)
    with pytest.raises(VersionConflict):
        service.execute("acc", Deposit(1), ctx())
    assert len(sleeps) == 3  # a back-off between attempts, none after the last
    assert all(0 <= s <= 0.05 for s in sleeps)


def test_idempotent_retry_replays_instead_of_re_deciding(store: InMemoryEventStore) -> None:
    service = funded(store, 100)
    first = service.execute("acc", Withdraw(100), ctx("k1"))
    again = service.execute("acc", Withdraw(100), ctx("k1"))  # would be insufficient funds if re-decided
    assert (again.balance, again.version, again.amount) == (first.balance, first.version, first.amount)
    assert again.replayed
    assert len(store.streams["acc"]) == 3


def test_idempotency_key_with_another_request_is_refused(store: InMemoryEventStore) -> None:
    service = funded(store, 100)
    service.execute("acc", Withdraw(10), ctx("k1"))
    with pytest.raises(IdempotencyKeyReused):
        service.execute("acc", Withdraw(11), ctx("k1"))
    with pytest.raises(IdempotencyKeyReused):
        service.execute("acc", Deposit(10), ctx("k1"))


class LosesFirstReply(InMemoryEventStore):
    """Applies the first append but reports a conflict, like a reply lost to a dropped connection that the
    client library then retried."""

    lost = False

    def append(self, account_id: str, expected_version: int, events: Sequence[NewEvent],
               idempotency: IdempotencyWrite | None = None, snapshot: Account | None = None) -> AppendOutcome:
        outcome = super().append(account_id, expected_version, events, idempotency, snapshot)
        if not self.lost and expected_version == 2:
            self.lost = True
            return Conflict(expected_version + 1)
        return outcome


def test_an_applied_append_whose_reply_was_lost_is_not_applied_twice() -> None:
    store = LosesFirstReply()
    service = funded(store, 100)
    result = service.execute("acc", Deposit(7), ctx())
    assert (result.balance, result.version) == (107, 3)
    assert len(store.streams["acc"]) == 3


def test_our_own_append_found_after_a_lost_reply_is_not_called_a_replay() -> None:
    """Idempotent-Replayed marks a client's retry; a request sent once whose lost reply the service recovered
    from the store itself is answered as the first answer it is, even though its key's record exists."""
    store = LosesFirstReply()
    service = funded(store, 100)
    result = service.execute("acc", Deposit(7), ctx("once"))
    assert (result.balance, result.version, result.replayed) == (107, 3, False)
    retried = service.execute("acc", Deposit(7), ctx("once"))  # the client's retry of it
    assert (retried.balance, retried.version, retried.replayed) == (107, 3, True)


def test_if_match(store: InMemoryEventStore) -> None:
    service = funded(store, 100)
    at_two = IfMatch(versions=frozenset({2}))
    assert service.execute("acc", Deposit(1), ctx(if_match=at_two)).version == 3
    with pytest.raises(PreconditionFailed, match="at version 3, not 2"):
        service.execute("acc", Deposit(1), ctx(if_match=at_two))
    assert service.execute("acc", Deposit(1), ctx(if_match=IfMatch(any_version=True))).version == 4
    with pytest.raises(PreconditionFailed, match="does not exist"):
        service.execute("missing", Deposit(1), ctx(if_match=IfMatch(any_version=True)))
    with pytest.raises(PreconditionFailed, match=r'only weak entity tags .W/"4".*If-Match: "4"'):
        service.execute("acc", Deposit(1), ctx(if_match=IfMatch(weak_tags=('W/"4"',))))


def test_reads(store: InMemoryEventStore) -> None:
    service = funded(store, 100)
    assert [e.version for e in service.events("acc", 1, 10, ANONYMOUS)] == [2]
    assert service.events("acc", 2, 10, ANONYMOUS) == []
    with pytest.raises(AccountNotFound):
        service.get("nobody", ANONYMOUS)
    with pytest.raises(AccountNotFound):
        service.events("nobody", 0, 10, ANONYMOUS)


class RecordsSnapshots(InMemoryEventStore):
    def __init__(self) -> None:
        super().__init__()
        self.snapshot_versions: list[int] = []

    def append(self, account_id: str, expected_version: int, events: Sequence[NewEvent],
               idempotency: IdempotencyWrite | None = None, snapshot: Account | None = None) -> AppendOutcome:
        if snapshot is not None:
            self.snapshot_versions.append(snapshot.version)
        return super().append(account_id, expected_version, events, idempotency, snapshot)


def test_snapshots_at_each_interval() -> None:
    store = RecordsSnapshots()
    service = AccountService(store, snapshot_interval=4, sleep=lambda _: None)
    service.execute("acc", OpenAccount(), ctx())
    for _ in range(8):
        service.execute("acc", Deposit(1), ctx())
    assert store.snapshot_versions == [4, 8]
    loaded = store.load("acc")
    assert loaded.snapshot == account.rebuild("acc", store.read("acc", 0, 8))
    assert [e.version for e in loaded.events] == [9]


def test_an_account_without_snapshots_gets_one_on_its_next_write() -> None:
    store = RecordsSnapshots()
    InMemoryEventStore.append(store, "old", 0, history("old", 6))  # written before snapshots existed
    service = AccountService(store, snapshot_interval=4, sleep=lambda _: None)
    service.execute("old", Deposit(1), ctx())
    assert store.snapshot_versions == [7]
    assert [e.version for e in store.load("old").events] == []


class Clock:
    """A monotonic clock that moves only when the service sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class LosesReplies(InMemoryEventStore):
    """Appends whose replies never come: ``applies`` says whether the append took anyway; after a lost
    reply, ``down`` loads fail as if Redis stopped answering."""

    def __init__(self, applies: bool, lost: int = 1, down: int = 0) -> None:
        super().__init__()
        self.applies, self.lost, self.down = applies, lost, down

    def append(self, account_id: str, expected_version: int, events: Sequence[NewEvent],
               idempotency: IdempotencyWrite | None = None, snapshot: Account | None = None) -> AppendOutcome:
        if expected_version == 0 or self.lost <= 0:
            return super().append(account_id, expected_version, events, idempotency, snapshot)
        self.lost -= 1
        if self.applies:
            super().append(account_id, expected_version, events, idempotency, snapshot)
        raise AppendUnknown("no reply")

    def load(self, account_id: str, idempotency_key: str | None = None) -> Loaded:
        if self.down > 0 and self.lost == 0:
            self.down -= 1
            raise StoreUnavailable("Redis is unavailable: TimeoutError")
        return super().load(account_id, idempotency_key)


def _service(store: InMemoryEventStore, clock: Clock, deadline: float = 8.0) -> AccountService:
    return AccountService(store, sleep=clock.sleep, monotonic=lambda: clock.now, deadline_seconds=deadline)


@pytest.mark.parametrize("applies", [True, False], ids=["it-landed", "it-did-not"])
def test_a_lost_reply_is_resolved_by_reading_again(applies: bool) -> None:
    store = LosesReplies(applies=applies, down=3)  # and Redis is away for three loads on top
    service = _service(store, Clock())
    service.execute("acc", OpenAccount(), ctx())
    result = service.execute("acc", Deposit(250), ctx("k1"))
    assert (result.balance, result.version) == (250, 2)
    assert [e.type for e in store.streams["acc"]] == ["AccountOpened", "FundsDeposited"]  # once, either way


def test_an_outcome_nobody_can_learn_in_time_is_outcome_unknown_with_advice() -> None:
    store = LosesReplies(applies=True, down=10_000)
    clock = Clock()
    service = _service(store, clock, deadline=3.0)
    service.execute("acc", OpenAccount(), ctx())
    with pytest.raises(OutcomeUnknown) as unknown:
        service.execute("acc", Deposit(250), CommandContext("req-9", ANONYMOUS, idempotency_key="k-42"))
    assert "retry with the same Idempotency-Key" in unknown.value.detail
    assert "k-42" not in unknown.value.detail  # the detail is logged, and keys are never logged
    assert clock.now >= 3.0
    fresh = _service(LosesReplies(applies=False, down=10_000), Clock(), deadline=3.0)
    fresh.execute("acc", OpenAccount(), ctx())
    with pytest.raises(OutcomeUnknown) as keyless:
        fresh.execute("acc", Deposit(1), CommandContext("req-10", ANONYMOUS, correlation_id="corr-7"))
    assert "correlation id corr-7" in keyless.value.detail and "/accounts/acc/events" in keyless.value.detail


def test_store_unavailable_before_anything_was_sent_stays_store_unavailable() -> None:
    class Down(InMemoryEventStore):
        def load(self, account_id: str, idempotency_key: str | None = None) -> Loaded:
            raise StoreUnavailable("Redis is unavailable: ConnectionError")

    with pytest.raises(StoreUnavailable) as raised:
        _service(Down(), Clock()).execute("acc", Deposit(1), ctx())
    assert not isinstance(raised.value, OutcomeUnknown)


class Replicas(InMemoryEventStore):
    """Appends that the primary takes but ``unconfirmed`` times no replica confirms in time."""

    def __init__(self, unconfirmed: int) -> None:
        super().__init__()
        self.unconfirmed = unconfirmed
        self.waits = 0

    def append(self, account_id: str, expected_version: int, events: Sequence[NewEvent],
               idempotency: IdempotencyWrite | None = None, snapshot: Account | None = None) -> AppendOutcome:
        outcome = super().append(account_id, expected_version, events, idempotency, snapshot)
        if expected_version > 0:
            self.confirm_durable(account_id)
        return outcome

    def confirm_durable(self, account_id: str) -> None:
        self.waits += 1
        if self.unconfirmed > 0:
            self.unconfirmed -= 1
            raise NotDurable(0, 1)


def test_a_write_the_replicas_confirm_late_is_answered_once_they_do() -> None:
    store = Replicas(unconfirmed=2)
    service = _service(store, Clock())
    service.execute("acc", OpenAccount(), ctx())
    assert service.execute("acc", Deposit(5), ctx("k1")).balance == 5
    assert store.waits == 3 and len(store.streams["acc"]) == 2


def test_a_write_no_replica_confirms_is_outcome_unknown_and_its_retry_waits_again() -> None:
    store = Replicas(unconfirmed=10_000)
    clock = Clock()
    service = _service(store, clock, deadline=2.0)
    service.execute("acc", OpenAccount(), ctx())
    with pytest.raises(OutcomeUnknown, match="stored on the primary"):
        service.execute("acc", Deposit(5), ctx("k1"))
    store.unconfirmed = 0  # the replica caught up
    clock.now = 0.0
    replay = service.execute("acc", Deposit(5), ctx("k1"))
    assert (replay.balance, replay.replayed) == (5, True)
    assert len(store.streams["acc"]) == 2  # the retry found the first one and waited for it: nothing twice


def test_no_idempotency_key_reaches_a_log_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A run with an outcome-unknown (its detail is logged as a WARNING) and a replay: the key is in no line,
    and the warning names the request."""
    from shared import logs
    from shared.api import Dependencies
    from shared.auth import OpenAccess
    from shared.config import Settings
    from tests.support.apigw import Api, body_of

    logs.configure("INFO")
    clock = Clock()
    service = _service(LosesReplies(applies=True, down=10_000), clock, deadline=3.0)
    dependencies = Dependencies(Settings(), lambda: service, OpenAccess())
    api = Api(lambda: dependencies)
    key = "secret-looking-key-7f3a"
    assert api.call("create_account", "acc", headers={"Idempotency-Key": key})["statusCode"] == 201
    unknown = api.call("deposit", "acc", {"amount": 1}, headers={"Idempotency-Key": key + "-2"})
    assert body_of(unknown)["code"] == "outcome-unknown"
    logged = capsys.readouterr().err
    warning = [line for line in logged.splitlines() if '"level":"WARNING"' in line]
    assert warning and unknown["headers"]["X-Request-Id"] in warning[0]
    assert key not in logged


@pytest.mark.parametrize("result", [CommandResult("acc", 1050, 7, 250), CommandResult("acc", 0, 1, None)])
def test_a_recorded_result_answers_exactly_what_the_first_request_did(result: CommandResult) -> None:
    assert CommandResult.from_record(result.to_record(), "acc") == result._replace(replayed=True)


def test_results_recorded_as_json_before_2026_12_05_still_read() -> None:
    legacy = '{"account_id":"acc","amount":null,"balance":0,"version":1}'
    assert CommandResult.from_record(legacy, "acc") == CommandResult("acc", 0, 1, None, replayed=True)
