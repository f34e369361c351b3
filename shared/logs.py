"""Structured logs: one JSON object per line, with the fields a log pipeline can index.

Formatting runs once per request on the hot path, so it uses orjson and the clock's once-a-second
timestamp formatting.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

from shared.clock import utc_millis


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": utc_millis(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(level: str) -> None:
    """Send JSON lines to stderr. Idempotent, so every entry point may call it at start-up."""
    # The JSON lines show neither the caller nor the thread, so those are not collected (the logging
    # documentation's advice, "Optimization"; a walk up the stack less per line). These switches are
    # process-wide: the process id stays, because gunicorn's own lines in this process format it with %d,
    # which fails on the None a switched-off field holds (tests/unit/test_logs.py).
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        root.setLevel(level)
        return
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    root.handlers = [handler]
    root.setLevel(level)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now, not what it was at start-up: a test runner swaps it per test
    and closes the old one, and a handler holding that would fail every later line (the standard library's
    own last-resort handler does the same)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        # Python's own stderr is line-buffered (3.9+): writing a whole line already reaches the file
        # descriptor, so the separate flush (and the lock it takes again) is only for other streams.
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            if not getattr(stream, "line_buffering", False):
                stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
