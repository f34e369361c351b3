"""The query side: what the read model answers (``GET /accounts``, statements), and how fresh the answer is.

The read model is asynchronous. A query that carries consistency tokens (``consistency.py``) is answered
only from a read model that has applied every write they cover. For each partition a token names, the
read model's checkpoint must be at or past the token's position, *and* no entry at or before it may still be
waiting in the projector's group (an entry being retried is passed by the checkpoint: "reached" must mean
"applied"). The checkpoint is read before the group, so an entry retried after the checkpoint moved is seen.
An entry at or before the position that the projector parked will not be applied without an operator: that
is ``ProjectionParked`` at once, never a wait. Otherwise the query blocks on the partition's progress stream
(the projector announces every settlement there) until the next settlement, and checks again, up to
``QUERY_WAIT_SECONDS``; then it is ``ProjectionBehind`` (503), or, when the client prefers, a stale answer
that says so.

Every answer says how far behind the projection of the partitions it covers was: the age of the oldest
entry it had not applied, from the log ids' timestamps. Pure apart from the two ports.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol

from shared.consistency import LogPosition, entry_id_of
from shared.errors import AccountNotFound, ProjectionBehind, ProjectionParked
from shared.keys import KeySpace
from shared.principal import Owner, Principal, authorize

#: The longest Retry-After a query answers with: the projection is behind by more only in an outage, and
#: the client should then come back within the alerting's time, not hours later.
MAX_RETRY_AFTER_SECONDS = 30


class AccountRow(NamedTuple):
    id: str
    balance: int
    version: int
    opened_at: datetime | None
    updated_at: datetime | None
    owner: Owner | None


class TransactionRow(NamedTuple):
    version: int
    event_id: str
    type: str
    amount: int
    balance: int
    at: datetime


class LogState(NamedTuple):
    """What Redis says about one partition's log, beside the read model's checkpoint."""

    #: The first entry after the checkpoint (None: the checkpoint is at the log's end).
    first_unapplied: LogPosition | None
    #: The oldest entry the group still holds pending (delivered, not yet applied, or being retried).
    oldest_pending: LogPosition | None
    #: Entries of this log the group has parked (their original positions; the oldest, at most a hundred).
    parked: tuple[LogPosition, ...]


class ReadModelQueries(Protocol):
    """The read model, read-only (``mongo_queries.MongoQueries``; an in-memory one in ``tests/support``)."""

    def checkpoints(self, partitions: Iterable[int]) -> dict[int, LogPosition]:
        """Each partition's checkpoint, (0, 0) for one that has none yet."""
        ...

    def account(self, account_id: str) -> AccountRow | None: ...

    def accounts(self, owner: Owner | None, only: str | None, min_funds: int | None, max_funds: int | None,
                 after: str | None, limit: int) -> list[AccountRow]:
        """Accounts by id, after ``after``: ``owner``'s (None: anybody's), or just ``only``."""
        ...

    def transactions(self, account_id: str, start: datetime | None, end: datetime | None,
                     after: tuple[datetime, int] | None, limit: int) -> list[TransactionRow]:
        """The account's transactions with ``start <= at < end``, in order, after ``after`` (at, version)."""
        ...

    def balance_before(self, account_id: str, moment: datetime | None) -> int:
        """The balance after the account's last transaction before ``moment`` (None: the last one at all)."""
        ...


class ProjectionProgress(Protocol):
    """The projector's progress as Redis shows it (``projection_progress.RedisProjectionProgress``)."""

    def inspect(self, checkpoints: Mapping[int, LogPosition]) -> dict[int, LogState]: ...

    def cursors(self, partitions: Iterable[int]) -> dict[int, str]:
        """The id of each partition's latest progress announcement: a wait starts after it."""
        ...

    def wait(self, partition: int, cursor: str, timeout: float) -> str:
        """Block until a progress announcement after ``cursor`` (or ``timeout`` seconds); the latest id seen."""
        ...


@dataclass(frozen=True, slots=True)
class Consistency:
    """What a query asks of the read model's freshness: the positions its tokens name (merged), and whether
    a stale answer is better than none."""

    wanted: Mapping[int, LogPosition]
    allow_stale: bool = False


class Freshness(NamedTuple):
    #: Age of the oldest write, in the partitions the answer covers, that the read model had not applied.
    lag_seconds: float
    #: True when the answer may lack writes its tokens covered (``Prefer: allow-stale`` after the wait).
    stale: bool = False


class Page(NamedTuple):
    rows: list[AccountRow]
    more: bool


class Statement(NamedTuple):
    opening: int
    closing: int
    rows: list[TransactionRow]
    more: bool


class QueryService:
    def __init__(self, model: ReadModelQueries, progress: ProjectionProgress, keys: KeySpace, wait_seconds: float,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._model = model
        self._progress = progress
        self._keys = keys
        self._wait = wait_seconds
        self._clock = clock
        self._monotonic = monotonic

    def accounts(self, actor: Principal, owner: Owner | None, min_funds: int | None, max_funds: int | None,
                 after: str | None, limit: int, consistency: Consistency) -> tuple[Page, Freshness]:
        """The accounts ``actor`` reaches: one delegated account, its own, or (an administrator) all, or
        ``owner``'s."""
        freshness = self.settle(range(self._keys.partitions), consistency)
        if actor.account is not None:
            only, whose = actor.account, None
        elif actor.is_admin:
            only, whose = None, owner
        else:
            only, whose = None, actor.owner
        rows = self._model.accounts(whose, only, min_funds, max_funds, after, limit + 1)
        return Page(rows[:limit], len(rows) > limit), freshness

    def statement(self, account_id: str, actor: Principal, start: datetime | None, end: datetime | None,
                  after: tuple[datetime, int] | None, limit: int,
                  consistency: Consistency) -> tuple[Statement, Freshness]:
        freshness = self.settle([self._keys.partition_of(account_id)], consistency)
        found = self._model.account(account_id)
        if found is None:
            raise AccountNotFound(f"account {account_id} does not exist")
        authorize(actor, account_id, found.owner, exists=True)
        rows = self._model.transactions(account_id, start, end, after, limit + 1)
        opening = 0 if start is None else self._model.balance_before(account_id, start)
        closing = self._model.balance_before(account_id, end)
        return Statement(opening, closing, rows[:limit], len(rows) > limit), freshness

    def settle(self, covered: Iterable[int], consistency: Consistency) -> Freshness:
        """Wait until the read model has applied what ``consistency`` asks for; how fresh it then is."""
        wanted = consistency.wanted
        partitions = sorted(set(covered) | set(wanted))
        deadline = self._monotonic() + self._wait
        cursors = self._progress.cursors(sorted(wanted)) if wanted else {}
        while True:
            checkpoints = self._model.checkpoints(partitions)  # before the log: see the module's docstring
            states = self._progress.inspect(checkpoints)
            _refuse_parked(wanted, states)
            lag = self._lag(states)
            behind = [p for p, position in wanted.items() if not _applied(position, checkpoints[p], states[p])]
            if not behind:
                return Freshness(lag)
            left = deadline - self._monotonic()
            if left <= 0:
                if consistency.allow_stale:
                    return Freshness(lag, stale=True)
                raise ProjectionBehind(
                    f"the read model has not yet applied every write your consistency token covers (partitions "
                    f"{', '.join(map(str, behind))}; {lag:.1f} s behind) after waiting {self._wait:g} s; retry "
                    "after the time Retry-After gives, or send Prefer: allow-stale to be answered with what it "
                    "has", max(1, min(MAX_RETRY_AFTER_SECONDS, math.ceil(lag))))
            first = behind[0]
            cursors[first] = self._progress.wait(first, cursors[first], left)

    def _lag(self, states: Mapping[int, LogState]) -> float:
        oldest = [position[0] for state in states.values()
                  for position in (state.first_unapplied, state.oldest_pending) if position is not None]
        return 0.0 if not oldest else max(0.0, self._clock() - min(oldest) / 1000)


def _applied(position: LogPosition, checkpoint: LogPosition, state: LogState) -> bool:
    return checkpoint >= position and (state.oldest_pending is None or state.oldest_pending > position)


def _refuse_parked(wanted: Mapping[int, LogPosition], states: Mapping[int, LogState]) -> None:
    for partition, position in wanted.items():
        parked: Sequence[LogPosition] = [p for p in states[partition].parked if p <= position]
        if parked:
            raise ProjectionParked(
                f"the projector parked entry {entry_id_of(parked[0])} of partition {partition}, which your "
                "consistency token covers: it will not be in the read model until an operator replays it (the "
                "write itself is stored; GET /accounts/{id} shows it)")
