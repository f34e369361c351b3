"""A command's time budget, seen by the Redis adapter below the service without threading it through every
call: a store call made near the deadline gets only the time that is left (its socket timeout shortened), and
none once it has passed, so ``COMMAND_DEADLINE_SECONDS`` bounds the whole command, not just the gaps between
its round trips. The budget is in real monotonic time, whatever clock the service is given."""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

_DEADLINE: ContextVar[float | None] = ContextVar("command_deadline", default=None)


def start(seconds: float) -> Token[float | None]:
    """The budget of the command starting now; hand the token to ``end`` when it is over. (A pair of calls,
    not a context manager: this runs on every command, and a generator-based one costs ~1 µs.)"""
    return _DEADLINE.set(time.monotonic() + seconds)


def end(token: Token[float | None]) -> None:
    _DEADLINE.reset(token)


def remaining() -> float | None:
    """Seconds left (zero or less once passed), or None outside a command."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()
