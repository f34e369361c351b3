"""The query side for the fast tier: a read model that has projected nothing yet (no checkpoint, no account,
no transaction) and a projector that has settled nothing. The queries' rules are tested with faked ports in
``tests/unit/test_queries.py`` and end to end on MongoDB and Redis in ``test_read_your_writes.py``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from shared.consistency import LogPosition
from shared.keys import KeySpace
from shared.principal import Owner
from shared.queries import AccountRow, LogState, QueryService, TransactionRow


class NothingProjected:
    def checkpoints(self, partitions: Iterable[int]) -> dict[int, LogPosition]:
        return dict.fromkeys(partitions, (0, 0))

    def account(self, account_id: str) -> AccountRow | None:
        return None

    def accounts(self, owner: Owner | None, only: str | None, min_funds: int | None, max_funds: int | None,
                 after: str | None, limit: int) -> list[AccountRow]:
        return []

    def transactions(self, account_id: str, start: datetime | None, end: datetime | None,
                     after: tuple[datetime, int] | None, limit: int) -> list[TransactionRow]:
        return []

    def balance_before(self, account_id: str, moment: datetime | None) -> int:
        return 0

    def inspect(self, checkpoints: Mapping[int, LogPosition]) -> dict[int, LogState]:
        return {p: LogState(None, None, ()) for p in checkpoints}

    def cursors(self, partitions: Iterable[int]) -> dict[int, str]:
        return dict.fromkeys(partitions, "0-0")

    def wait(self, partition: int, cursor: str, timeout: float) -> str:
        return cursor


def empty_queries(partitions: int = 16) -> QueryService:
    nothing = NothingProjected()
    return QueryService(nothing, nothing, KeySpace("memory", partitions), wait_seconds=0.0)
