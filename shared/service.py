"""The application service: load the account's events, rebuild, decide, append. Nothing is cached.

On a version conflict the command is re-decided against fresh state (so the business rule is checked
again), a bounded number of times with jittered back-off. An idempotency key is checked before deciding,
so a retried withdrawal of the whole balance replays its first answer instead of failing.

Every operation first asks whether the caller reaches the account (``principal.authorize``), before it
replays, decides or reads: a caller who does not is answered as for a missing account, and never sees a
replayed answer that was someone else's.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from typing import NamedTuple

import orjson

from shared import account, deadlines, metrics, tracing
from shared.account import Account, Command, DomainEvent, OpenAccount
from shared.clock import new_id, utc_now
from shared.errors import (
    AccountNotFound,
    IdempotencyKeyReused,
    LedgerError,
    OutcomeUnknown,
    StoreFull,
    StoreUnavailable,
    VersionConflict,
)
from shared.event_store import (
    Appended,
    AppendUnknown,
    Conflict,
    Duplicate,
    EventStore,
    IdempotencyRecord,
    IdempotencyWrite,
    Loaded,
    NotDurable,
    Position,
)
from shared.events import Metadata, NewEvent, RecordedEvent
from shared.metrics import NO_METRICS, Metrics
from shared.preconditions import IfMatch
from shared.principal import Principal, authorize


class CommandContext(NamedTuple):
    """Where a command came from (who sent it, in which request), and the client's conditions on it."""

    request_id: str
    actor: Principal
    correlation_id: str | None = None
    idempotency_key: str | None = None
    if_match: IfMatch | None = None


class CommandResult(NamedTuple):
    """The outcome of a command: the account after it, and the money it moved (None when it moved none)."""

    account_id: str
    balance: int
    version: int
    amount: int | None = None
    replayed: bool = False
    #: Where the command's event (or, when it wrote none, the account's partition log) stands: what the
    #: answer's consistency token names. Never part of an idempotency record.
    position: Position | None = None

    def to_record(self) -> str:
        """What an idempotency record keeps to answer a retry exactly: ``balance:version:amount`` (the
        account is in the record's key; an amount of None is empty). Every byte is kept for a day per write."""
        return f"{self.balance}:{self.version}:{'' if self.amount is None else self.amount}"

    @classmethod
    def from_record(cls, text: str, account_id: str) -> CommandResult:
        """A result as ``to_record`` wrote it, or as the JSON object records held before 2026-12-05."""
        if text.startswith("{"):
            raw = orjson.loads(text)
            return cls(raw["account_id"], raw["balance"], raw["version"], raw["amount"] or None, replayed=True)
        balance, version, amount = text.split(":")
        return cls(account_id, int(balance), int(version), int(amount) if amount else None, replayed=True)


class AccountService:
    def __init__(self, store: EventStore, *, max_attempts: int = 10, snapshot_interval: int = 0,
                 deadline_seconds: float = 8.0,
                 clock: Callable[[], str] = utc_now,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic,
                 new_id: Callable[[], str] = new_id, metrics: Metrics = NO_METRICS) -> None:
        self._store = store
        self._metrics = metrics
        self._max_attempts = max_attempts
        self._deadline = deadline_seconds
        self._monotonic = monotonic
        self._snapshot_interval = snapshot_interval
        self._clock = clock
        self._sleep = sleep
        self._new_id = new_id

    def get(self, account_id: str, actor: Principal) -> Account:
        loaded = self._store.load(account_id)
        state = account.rebuild(account_id, loaded.events, loaded.snapshot)
        authorize(actor, account_id, state.owner, state.exists)
        return state

    def events(self, account_id: str, after_version: int, limit: int, actor: Principal) -> list[RecordedEvent]:
        self.get(account_id, actor)  # who owns it is in its history: fold that first, then read the page
        return self._store.read(account_id, after_version, limit)

    def execute(self, account_id: str, command: Command, context: CommandContext) -> CommandResult:
        budget = deadlines.start(self._deadline)  # every store call inside gets only what is left of it
        try:
            result, outcome = self._execute(account_id, command, context)
            if result.position is None:  # a replay, or nothing written now: the log's end covers the answer
                result = result._replace(position=self._log_tail(account_id))
        except LedgerError as exc:
            self._metrics.append(_outcome_of(exc))
            raise
        finally:
            deadlines.end(budget)
        self._metrics.append(outcome)
        return result

    def _execute(self, account_id: str, command: Command, context: CommandContext) -> tuple[CommandResult, str]:
        # Fingerprints exist only to compare a retry with its original, so only requests with a key pay.
        fingerprint = (_fingerprint(account_id, command, context.actor)
                       if context.idempotency_key is not None else "")
        # One event id for every attempt: if an append's reply is lost and Redis did apply it, the next
        # load finds this id in the history and we answer with that outcome instead of appending again.
        event_id = self._new_id()
        deadline = self._monotonic() + self._deadline
        expected: int | None = None  # the version our last append expected
        unsure = False  # an append went out without a reply: until a load says otherwise, it may have landed
        conflicts = 0
        while True:
            loaded = self._load(account_id, command, context, unsure, deadline)
            state = account.rebuild(account_id, loaded.events, loaded.snapshot)
            _authorize(state, command, context)
            if expected is not None:  # our own append, landed although its reply was lost, is no replay
                landed = self._find_landed(account_id, loaded, expected, event_id)
                if landed is not None:
                    return self._durable(account_id, landed, command, context, deadline), metrics.APPENDED
            if loaded.idempotency is not None:  # another request's, with the same key: the client's retry
                replayed = _replay(loaded.idempotency, fingerprint, context, account_id)
                return self._durable(account_id, replayed, command, context, deadline), metrics.IDEMPOTENT_REPLAY
            unsure = False
            if context.if_match is not None:
                context.if_match.check(state)
            decided: DomainEvent | None = command.decide(state)
            if decided is None:  # nothing to change (an owner assigned again): the state as it is
                return CommandResult(account_id, state.balance, state.version), metrics.UNCHANGED
            # Never before the account's last event, whatever this writer's clock says: an account's events are
            # in time order, so a statement's time range is a range of versions.
            at = max(self._clock(), state.updated_at or "")
            after = account.apply(state, decided, state.version + 1, at)
            result = CommandResult(account_id, after.balance, after.version, account.amount_of(decided))
            event = NewEvent(type=decided.type, account_id=account_id, data=decided.data(), event_id=event_id,
                             recorded_at=at, metadata=_metadata(context))
            idempotency = None if context.idempotency_key is None else IdempotencyWrite(
                context.idempotency_key, IdempotencyRecord(fingerprint, result.to_record()))
            expected = state.version
            try:
                outcome = self._store.append(account_id, state.version, [event], idempotency,
                                             self._snapshot(loaded, after))
            except AppendUnknown as exc:
                if self._monotonic() >= deadline:
                    raise OutcomeUnknown(_unknown(command, account_id, context, "its reply never came")) from exc
                unsure = True
                continue  # the next load says whether it landed
            except NotDurable:
                return self._durable(account_id, result, command, context, deadline), metrics.APPENDED
            if isinstance(outcome, Appended):  # built anew: half what _replace costs, on every write
                return CommandResult(account_id, result.balance, result.version, result.amount,
                                     position=outcome.position), metrics.APPENDED
            if isinstance(outcome, Duplicate):
                replayed = _replay(outcome.record, fingerprint, context, account_id)
                return self._durable(account_id, replayed, command, context, deadline), metrics.IDEMPOTENT_REPLAY
            assert isinstance(outcome, Conflict)
            conflicts += 1
            if conflicts >= self._max_attempts:
                raise VersionConflict(
                    f"account {account_id} changed concurrently {self._max_attempts} times; retry the request")
            self._metrics.append(metrics.CONFLICT_RETRY)
            self._backoff(conflicts - 1)

    def _log_tail(self, account_id: str) -> Position | None:
        """The log's end, or None if Redis does not answer now: the command's outcome is settled, so a read
        failing after it must not turn its answer into an error (the answer then carries no token)."""
        try:
            return self._store.log_tail(account_id)
        except StoreUnavailable:
            return None

    def _load(self, account_id: str, command: Command, context: CommandContext, unsure: bool,
              deadline: float) -> Loaded:
        """Load; while an append of ours may have landed, keep trying until the deadline instead of saying
        "unavailable" (which promises that nothing happened)."""
        attempt = 0
        while True:
            try:
                return self._store.load(account_id, context.idempotency_key)
            except StoreUnavailable as exc:
                if not unsure:
                    raise
                if self._monotonic() >= deadline:
                    raise OutcomeUnknown(_unknown(command, account_id, context, "Redis stopped answering")) from exc
                self._sleep(min(0.5, 0.05 * 2**attempt, max(0.0, deadline - self._monotonic())))
                attempt += 1

    def _durable(self, account_id: str, result: CommandResult, command: Command, context: CommandContext,
                 deadline: float) -> CommandResult:
        """Answer ``result`` only once the store confirms it is durable (a no-op unless replicas must confirm)."""
        attempt = 0
        while True:
            try:
                self._store.confirm_durable(account_id)
                return result
            except (NotDurable, StoreUnavailable) as exc:
                if self._monotonic() >= deadline:
                    why = str(exc) if isinstance(exc, NotDurable) else "Redis stopped answering"
                    raise OutcomeUnknown(_unknown(command, account_id, context, f"it is stored, but {why}",
                                                  stored=True)) from exc
                self._sleep(min(0.5, 0.05 * 2**attempt, max(0.0, deadline - self._monotonic())))
                attempt += 1

    def _find_landed(self, account_id: str, loaded: Loaded, expected: int, event_id: str) -> CommandResult | None:
        """Our own event, if an earlier attempt's append was applied although its reply never reached us."""
        candidates = loaded.events
        if loaded.snapshot is not None and loaded.snapshot.version > expected:
            # That append may have written the snapshot too, hiding our event behind it: look past it.
            candidates = self._store.read(account_id, expected)
        for event in candidates:
            if event.version > expected and event.event_id == event_id:
                state = account.rebuild(account_id, self._store.read(account_id, 0, event.version))
                moved = event.data.get("amount_minor")
                return CommandResult(account_id, state.balance, state.version, moved)
        return None

    def _snapshot(self, loaded: Loaded, after: Account) -> Account | None:
        """Keep a snapshot at every multiple of the interval, and whenever this load had to read more events
        than the interval (history from before snapshots, or a raised interval), so the next one will not."""
        interval = self._snapshot_interval
        if interval and (after.version % interval == 0 or len(loaded.events) >= interval):
            return after
        return None

    def _backoff(self, attempt: int) -> None:
        # Full jitter: spreads colliding writers apart instead of making them collide again in lockstep.
        self._sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))


def _authorize(state: Account, command: Command, context: CommandContext) -> None:
    """``principal.authorize`` for a command: a caller who does not reach the account gets what a missing
    account answers, the 412 of an If-Match that cannot match included."""
    try:
        authorize(context.actor, state.id, state.owner, state.exists, isinstance(command, OpenAccount))
    except AccountNotFound:
        if context.if_match is not None:
            context.if_match.check(Account(state.id))
        raise


def _outcome_of(error: LedgerError) -> str:
    """The ``ledger_appends_total`` outcome of a command that ended in ``error``."""
    if isinstance(error, OutcomeUnknown):  # before StoreUnavailable: these are ones, and mean something else
        return metrics.OUTCOME_UNKNOWN
    if isinstance(error, StoreFull):
        return metrics.STORE_FULL
    if isinstance(error, StoreUnavailable):
        return metrics.STORE_UNAVAILABLE
    if isinstance(error, VersionConflict):
        return metrics.CONFLICT_EXHAUSTED
    return metrics.REJECTED


def _metadata(context: CommandContext) -> Metadata:
    return Metadata(correlation_id=context.correlation_id or context.request_id, causation_id=context.request_id,
                    idempotency_key=context.idempotency_key, actor=context.actor.actor,
                    traceparent=tracing.current_traceparent())


def _fingerprint(account_id: str, command: Command, actor: Principal) -> str:
    """What a retry must repeat to be replayed: the account, the command and, when callers are known, who sent
    it (another principal reusing a key gets a 422, never the first caller's answer)."""
    text = f"{account_id}\n{command.fingerprint()}"
    if actor.authenticated:
        text += f"\n{actor.owner.issuer}\n{actor.owner.subject}"
    return hashlib.sha256(text.encode()).hexdigest()


_NAMES = {"OpenAccount": "account opening", "Deposit": "deposit", "Withdraw": "withdrawal",
          "AssignOwner": "owner assignment"}


def _unknown(command: Command, account_id: str, context: CommandContext, why: str, stored: bool = False) -> str:
    """What a client can do about an outcome nobody can tell it: the words of the 503 outcome-unknown."""
    what = _NAMES.get(type(command).__name__, "request")
    state = ("was stored on the primary but is not yet safe from a crash" if stored
             else "was sent to the event store, and whether it was applied is not known")
    correlation = context.correlation_id or context.request_id
    if context.idempotency_key is not None:  # not echoed: this detail is logged, and keys are never logged
        advice = ("retry with the same Idempotency-Key: a retry can never apply it twice, and answers with its "
                  "outcome")
    else:
        advice = ("send it with an Idempotency-Key next time, so a retry is always safe; before sending it again, "
                  f"look for correlation id {correlation} in GET /accounts/{account_id}/events")
    return f"the {what} {state} ({why}); {advice}"


def _replay(record: IdempotencyRecord, fingerprint: str, context: CommandContext, account_id: str
            ) -> CommandResult:
    if record.fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {context.idempotency_key!r} was already used for a different request"
        )
    return CommandResult.from_record(record.result, account_id)
