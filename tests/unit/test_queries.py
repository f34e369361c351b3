"""The query service's wait for the read model: reached only when applied, woken by announcements, refused
at once for a parked write, 503 or marked-stale when the wait runs out. Ports faked; no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest

from shared.consistency import LogPosition
from shared.errors import ProjectionBehind, ProjectionParked
from shared.keys import KeySpace
from shared.queries import Consistency, LogState, QueryService

NOW_MS = 1_800_000_000_000


class World:
    """A read model's checkpoints and a log's state, changed by announcements a wait consumes."""

    def __init__(self) -> None:
        self.checkpoints: dict[int, LogPosition] = {}
        self.pending: dict[int, LogPosition] = {}
        self.parked: dict[int, tuple[LogPosition, ...]] = {}
        self.first_unapplied: dict[int, LogPosition] = {}
        self.announcements: list[dict[str, object]] = []  # each applied when a wait wakes
        self.waits: list[tuple[int, str, float]] = []

    # ReadModelQueries (only what settle uses)
    def checkpoints_of(self, partitions: Iterable[int]) -> dict[int, LogPosition]:
        return {p: self.checkpoints.get(p, (0, 0)) for p in partitions}

    # ProjectionProgress
    def inspect(self, checkpoints: Mapping[int, LogPosition]) -> dict[int, LogState]:
        return {p: LogState(self.first_unapplied.get(p), self.pending.get(p), self.parked.get(p, ()))
                for p in checkpoints}

    def cursors(self, partitions: Iterable[int]) -> dict[int, str]:
        return dict.fromkeys(partitions, "0-0")

    def wait(self, partition: int, cursor: str, timeout: float) -> str:
        self.waits.append((partition, cursor, timeout))
        if not self.announcements:
            clock.now += timeout
            return cursor
        change = self.announcements.pop(0)
        for name, value in change.items():
            getattr(self, name).update(value)
        return f"{len(self.waits)}-0"


class Model:
    def __init__(self, world: World) -> None:
        self._world = world

    def checkpoints(self, partitions: Iterable[int]) -> dict[int, LogPosition]:
        return self._world.checkpoints_of(partitions)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


clock = Clock()


def service(world: World, wait: float = 2.0) -> QueryService:
    clock.now = 0.0
    return QueryService(Model(world), world, KeySpace("t", 16), wait,  # type: ignore[arg-type]
                        clock=lambda: NOW_MS / 1000, monotonic=clock)


def test_no_token_answers_at_once_with_the_lag() -> None:
    world = World()
    world.first_unapplied[3] = (NOW_MS - 1500, 0)
    freshness = service(world).settle([3], Consistency({}))
    assert freshness.lag_seconds == pytest.approx(1.5) and not freshness.stale and world.waits == []


def test_a_reached_checkpoint_answers_at_once() -> None:
    world = World()
    world.checkpoints[3] = (100, 0)
    assert not service(world).settle([3], Consistency({3: (100, 0)})).stale
    assert world.waits == []


def test_a_wait_is_woken_by_the_announcement_and_checks_again() -> None:
    world = World()
    world.checkpoints[3] = (90, 0)
    world.announcements = [{"checkpoints": {3: (95, 0)}}, {"checkpoints": {3: (120, 0)}}]
    freshness = service(world).settle([3], Consistency({3: (100, 0)}))
    assert not freshness.stale and len(world.waits) == 2
    assert world.waits[1][1] == "1-0"  # the second wait starts after the announcement the first one saw


def test_a_checkpoint_past_an_entry_still_being_retried_is_not_reached() -> None:
    world = World()
    world.checkpoints[3] = (200, 0)
    world.pending[3] = (100, 0)  # held for a retry: the checkpoint moved past it, the document did not
    world.announcements = [{"pending": {3: None}}]
    service(world).settle([3], Consistency({3: (100, 0)}))
    assert len(world.waits) == 1


def test_a_pending_entry_after_the_position_does_not_hold_the_answer() -> None:
    world = World()
    world.checkpoints[3] = (200, 0)
    world.pending[3] = (150, 0)
    service(world).settle([3], Consistency({3: (100, 0)}))
    assert world.waits == []


def test_the_wait_runs_out_into_a_503_with_retry_after() -> None:
    world = World()
    world.first_unapplied[3] = (NOW_MS - 4200, 0)
    with pytest.raises(ProjectionBehind) as raised:
        service(world, wait=0.5).settle([3], Consistency({3: (100, 0)}))
    assert raised.value.retry_after == 5 and "4.2 s behind" in raised.value.detail


def test_allow_stale_answers_marked_instead() -> None:
    world = World()
    freshness = service(world, wait=0.5).settle([3], Consistency({3: (100, 0)}, allow_stale=True))
    assert freshness.stale


def test_a_parked_entry_the_token_covers_is_refused_at_once() -> None:
    world = World()
    world.parked[3] = ((90, 0),)
    with pytest.raises(ProjectionParked):
        service(world).settle([3], Consistency({3: (100, 0)}))
    assert world.waits == []


def test_a_parked_entry_after_the_position_does_not_matter() -> None:
    world = World()
    world.checkpoints[3] = (100, 0)
    world.parked[3] = ((150, 0),)
    assert not service(world).settle([3], Consistency({3: (100, 0)})).stale


def test_every_partition_of_a_merged_token_must_be_reached() -> None:
    world = World()
    world.checkpoints.update({3: (100, 0), 5: (10, 0)})
    world.announcements = [{"checkpoints": {5: (60, 0)}}]
    service(world).settle([3], Consistency({3: (100, 0), 5: (50, 0)}))
    assert [w[0] for w in world.waits] == [5]
