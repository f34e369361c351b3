"""Route dependencies on the in-memory store: the whole HTTP path with no server behind it."""

from __future__ import annotations

from shared.api import Dependencies
from shared.config import Settings
from shared.service import AccountService
from tests.fakes import InMemoryEventStore


def memory_dependencies(store: InMemoryEventStore | None = None, settings: Settings | None = None) -> Dependencies:
    service = AccountService(store or InMemoryEventStore(), snapshot_interval=4, sleep=lambda _: None)
    return Dependencies(settings or Settings(), lambda: service)
