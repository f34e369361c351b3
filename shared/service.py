"""The application service: load the account's events, rebuild, decide, append. Nothing is cached.

On a version conflict the command is re-decided against fresh state (so the business rule is checked
again), a bounded number of times with jittered back-off. An idempotency key is checked before deciding,
so a retried withdrawal of the whole balance replays its first answer instead of failing.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from shared import account
from shared.account import Account, Command
from shared.errors import (
    AccountNotFound,
    IdempotencyKeyReused,
    PreconditionFailed,
    VersionConflict,
)
from shared.event_store import Appended, Claim, Conflict, Duplicate, EventStore, IdempotencyRecord, Loaded
from shared.events import Metadata, NewEvent, RecordedEvent


@dataclass(frozen=True)
class CommandContext:
    """Where a command came from, and the client's conditions on it."""

    request_id: str
    correlation_id: str | None = None
    idempotency_key: str | None = None
    #: From If-Match: the write happens only if the account is at one of these versions.
    #: ``()`` means "any existing version" (``If-Match: *``); ``None`` means no condition.
    if_match: tuple[int, ...] | None = None


@dataclass(frozen=True)
class CommandResult:
    account_id: str
    amount: int
    balance: int
    version: int
    replayed: bool = False

    def to_json(self) -> str:
        return orjson.dumps({"account_id": self.account_id, "amount": self.amount,
                             "balance": self.balance, "version": self.version}).decode()

    @classmethod
    def from_json(cls, text: str) -> CommandResult:
        raw = orjson.loads(text)
        return cls(raw["account_id"], raw["amount"], raw["balance"], raw["version"], replayed=True)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class AccountService:
    def __init__(self, store: EventStore, *, max_attempts: int = 10, snapshot_interval: int = 0,
                 clock: Callable[[], str] = utc_now,
                 sleep: Callable[[float], None] = time.sleep,
                 new_id: Callable[[], str] = lambda: str(uuid.uuid4())) -> None:
        self._store = store
        self._max_attempts = max_attempts
        self._snapshot_interval = snapshot_interval
        self._clock = clock
        self._sleep = sleep
        self._new_id = new_id

    def get(self, account_id: str) -> Account:
        loaded = self._store.load(account_id)
        state = account.rebuild(account_id, loaded.events, loaded.snapshot)
        if not state.exists:
            raise AccountNotFound(f"account {account_id} does not exist")
        return state

    def events(self, account_id: str, after_version: int, limit: int) -> list[RecordedEvent]:
        events = self._store.read(account_id, after_version, limit)
        if not events and not self._store.read(account_id, 0, 1):
            raise AccountNotFound(f"account {account_id} does not exist")
        return events

    def execute(self, account_id: str, command: Command, context: CommandContext) -> CommandResult:
        fingerprint = _fingerprint(account_id, command)
        # One event id for every attempt: if an append's reply is lost and Redis did apply it, the next
        # load finds this id in the history and we answer with that outcome instead of appending again.
        event_id = self._new_id()
        expected: int | None = None
        for attempt in range(self._max_attempts):
            loaded = self._store.load(account_id, context.idempotency_key)
            if loaded.idempotency is not None:
                return _replay(loaded.idempotency, fingerprint, context)
            if expected is not None:
                landed = self._find_landed(account_id, loaded, expected, event_id, command)
                if landed is not None:
                    return landed
            state = account.rebuild(account_id, loaded.events, loaded.snapshot)
            _check_precondition(state, context)
            change = command.decide(state)
            at = self._clock()
            new_version = state.version + 1
            after = account.apply(state, change.type, change.data, new_version, at)
            result = CommandResult(account_id, command.amount, after.balance, new_version)
            event = NewEvent(
                type=change.type, account_id=account_id, data=change.data, event_id=event_id, recorded_at=at,
                metadata=Metadata(correlation_id=context.correlation_id or context.request_id,
                                  causation_id=context.request_id, idempotency_key=context.idempotency_key),
            )
            claim = None
            if context.idempotency_key is not None:
                claim = Claim(context.idempotency_key, IdempotencyRecord(fingerprint, result.to_json()))
            expected = state.version
            outcome = self._store.append(account_id, state.version, [event], claim,
                                         self._snapshot(loaded, after))
            if isinstance(outcome, Appended):
                return result
            if isinstance(outcome, Duplicate):
                return _replay(outcome.record, fingerprint, context)
            assert isinstance(outcome, Conflict)
            self._backoff(attempt)
        raise VersionConflict(
            f"account {account_id} changed concurrently {self._max_attempts} times; retry the request"
        )

    def _find_landed(self, account_id: str, loaded: Loaded, expected: int, event_id: str,
                     command: Command) -> CommandResult | None:
        """Our own event, if an earlier attempt's append was applied although its reply never reached us."""
        candidates = loaded.events
        if loaded.snapshot is not None and loaded.snapshot.version > expected:
            # That append may have written the snapshot too, hiding our event behind it: look past it.
            candidates = self._store.read(account_id, expected)
        for event in candidates:
            if event.version > expected and event.event_id == event_id:
                state = account.rebuild(account_id, self._store.read(account_id, 0, event.version))
                return CommandResult(account_id, command.amount, state.balance, state.version)
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


def _fingerprint(account_id: str, command: Command) -> str:
    return hashlib.sha256(f"{account_id}\n{command.fingerprint()}".encode()).hexdigest()


def _replay(record: IdempotencyRecord, fingerprint: str, context: CommandContext) -> CommandResult:
    if record.fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {context.idempotency_key!r} was already used for a different request"
        )
    return CommandResult.from_json(record.result)


def _check_precondition(state: Account, context: CommandContext) -> None:
    if context.if_match is None:
        return
    if not state.exists:  # RFC 9110: If-Match fails when there is no current representation
        raise PreconditionFailed(f"account {state.id} does not exist, so If-Match cannot match")
    if context.if_match and state.version not in context.if_match:
        raise PreconditionFailed(
            f"account {state.id} is at version {state.version}, not {_versions(context.if_match)}"
        )


def _versions(versions: tuple[int, ...]) -> str:
    return " or ".join(str(v) for v in versions)
