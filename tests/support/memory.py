"""Route dependencies on the in-memory store: the whole HTTP path with no server behind it."""

from __future__ import annotations

from shared.api import Dependencies
from shared.auth import OpenAccess
from shared.config import Settings
from shared.consistency import ConsistencyTokens
from shared.principal import Authenticator
from shared.service import AccountService
from tests.fakes import InMemoryEventStore
from tests.support.memory_queries import empty_queries


def memory_dependencies(store: InMemoryEventStore | None = None, settings: Settings | None = None,
                        authenticator: Authenticator | None = None) -> Dependencies:
    """On ``authenticator`` (default: nobody is asked, as with AUTH_MODE=none)."""
    service = AccountService(store or InMemoryEventStore(), snapshot_interval=4, sleep=lambda _: None)
    config = settings or Settings()
    tokens = ConsistencyTokens("memory-consistency-token-key-0123456789", config.key_prefix, config.partitions)
    queries = empty_queries(config.partitions)
    return Dependencies(config, lambda: service, authenticator or OpenAccess(), tokens=tokens,
                        queries_provider=lambda: queries)
