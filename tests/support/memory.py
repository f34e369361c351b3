"""Route dependencies on the in-memory store: the whole HTTP path with no server behind it."""

from __future__ import annotations

from shared.api import Dependencies
from shared.auth import OpenAccess
from shared.config import Settings
from shared.principal import Authenticator
from shared.service import AccountService
from tests.fakes import InMemoryEventStore


def memory_dependencies(store: InMemoryEventStore | None = None, settings: Settings | None = None,
                        authenticator: Authenticator | None = None) -> Dependencies:
    """On ``authenticator`` (default: nobody is asked, as with AUTH_MODE=none)."""
    service = AccountService(store or InMemoryEventStore(), snapshot_interval=4, sleep=lambda _: None)
    return Dependencies(settings or Settings(), lambda: service, authenticator or OpenAccess())
