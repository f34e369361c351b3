"""What the projector's seams share, one floor below them: the back-off, the state of each partition a replica
owns, and the guard that keeps one Redis node's outage to that node's partitions.

The subscription, the processor and recovery each keep their own part of a partition's state (``Reading``,
``Retries``, ``Progress``); none of them imports another, or the runner.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from projector.memo import Written
from projector.projection import LogEntry
from shared.errors import StoreUnavailable

log = logging.getLogger("ledgerstream.projector")
T = TypeVar("T")


class LeaseLost(Exception):
    """The partition's lease is no longer ours: stop acting on it."""


class Settling(Protocol):
    """How the processor settles entries (``ConsumerGroup`` implements it): fenced by the partition's lease,
    ``LeaseLost`` when the lease is gone."""

    def acknowledge_all(self, settlements: Sequence[tuple[str, int, Sequence[str]]]) -> set[int]: ...

    def park(self, lease: str, entry: LogEntry, error: str, deliveries: int, quarantine: bool) -> None: ...


def backoff_delay(initial: float, cap: float, failures: int, jitter: bool = True) -> float:
    """Capped exponential back-off: the one back-off of the projector, for outages and for entries that cannot
    be applied yet alike. Jittered over its upper half when several parties may retry at once (outages);
    not for the entries one replica holds, whose retries must stay in the order they failed in."""
    # The exponent is capped before it is used: 2 ** failures would overflow a float after ~1000 failures.
    delay = min(cap, initial * 2 ** min(failures, 16))
    return random.uniform(delay / 2, delay) if jitter else delay


class Backoff:
    """``backoff_delay`` with the count of failures kept: for a dependency that keeps failing."""

    def __init__(self, initial: float = 0.2, cap: float = 30.0) -> None:
        self._initial, self._cap, self._failures = initial, cap, 0

    def next_delay(self) -> float:
        delay = backoff_delay(self._initial, self._cap, self._failures)
        self._failures = min(self._failures + 1, 16)
        return delay

    def reset(self) -> None:
        self._failures = 0


@dataclass(slots=True)
class Reading:
    """Where the subscription is in the partition's log. ``cursor``: re-reading our own pending entries after
    a takeover or an outage (the id to read after); None once they are all back in hand: on to new ones."""

    cursor: str | None = "0-0"

    def rewind(self) -> None:
        self.cursor = "0-0"


@dataclass(slots=True)
class Held:
    """An entry that could not be applied yet: retried from memory, parked after ``max_deliveries``."""

    entry: LogEntry
    attempts: int
    due: float
    error: str


@dataclass(slots=True)
class Retries:
    """The processor's part: entries held for another try, and the accounts quarantined behind a parked one."""

    held: dict[str, Held] = field(default_factory=dict)
    quarantine: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Progress:
    """Recovery's part: how far the read model is known to have the log, and what is being done about it."""

    #: Everything up to this log entry is in the read model (None: not known yet), and that entry's event id.
    checkpoint: str | None = None
    checkpoint_event: str = ""
    check_due: float = 0.0
    #: An unfinished re-projection of already acknowledged entries: (after, until).
    reproject: tuple[str, str] | None = None
    #: The last entry settled while a re-projection held the checkpoint back.
    settled_meanwhile: LogEntry | None = None
    #: Why the read model is known to disagree with the log right now (None: it does not).
    diverged: str | None = None

    def forget(self) -> None:
        """Believe nothing about the checkpoint until the self-check has looked again, at once."""
        self.checkpoint, self.check_due = None, 0.0


@dataclass(slots=True)
class Partition:
    """A partition this replica owns: its lease (``<owner>|<token>``, what the fenced scripts compare) and
    each seam's state."""

    number: int
    lease: str
    reading: Reading = field(default_factory=Reading)
    retries: Retries = field(default_factory=Retries)
    progress: Progress = field(default_factory=Progress)
    written: Written = field(default_factory=Written)

    def rewind(self) -> None:
        """After an outage: what we held comes back from our pending list, and the self-check runs again
        (Redis may have come back with older data)."""
        self.reading.rewind()
        self.retries.held.clear()
        self.written.clear()
        self.progress.check_due = 0.0


def describe(exc: BaseException) -> str:
    """An outage for the log: the cause an adapter chained to the project's error, when there is one."""
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {cause}"[:300]


@dataclass(slots=True)
class _Down:
    until: float
    backoff: Backoff


class Outages:
    """Redis nodes out of reach. On a cluster, a node's outage stalls only the partitions it holds; each down
    node is tried again on its own back-off."""

    def __init__(self, node_of: Callable[[int], str], clock: Callable[[], float] = time.monotonic) -> None:
        self._node_of = node_of
        self._clock = clock
        self._down: dict[str, _Down] = {}

    @property
    def any(self) -> bool:
        return bool(self._down)

    def node_of(self, partition: int) -> str:
        return self._node_of(partition)

    def reachable(self, partition: int) -> bool:
        down = self._down.get(self._node_of(partition))
        return down is None or down.until <= self._clock()

    def guard(self, partition: int, action: Callable[[], T]) -> tuple[T | None, str | None]:
        """Run ``action`` against the node of ``partition``. Returns (its result, None), or (None, None) when
        the node is out of reach (marked down: its partitions wait, the others go on), or (result, node) when
        the node just came back (its partitions must rewind)."""
        node = self._node_of(partition)
        try:
            result = action()
        except StoreUnavailable as exc:
            self.mark_down(partition, exc)
            return None, None
        if node in self._down:
            del self._down[node]
            log.warning("Redis node of partition %d is back", partition,
                        extra={"fields": {"state": "recovered", "dependency": "redis", "partition": partition}})
            return result, node
        return result, None

    def mark_down(self, partition: int, cause: Exception) -> None:
        node = self._node_of(partition)
        if node not in self._down:
            log.warning("Redis node of partition %d unavailable; its partitions wait: %s", partition,
                        describe(cause),
                        extra={"fields": {"state": "down", "dependency": "redis", "partition": partition}})
        down = self._down.setdefault(node, _Down(0.0, Backoff()))
        down.until = self._clock() + down.backoff.next_delay()
