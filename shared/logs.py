"""Structured logs: one JSON object per line, with the fields a log pipeline can index.

Formatting runs once per request on the hot path, so it uses orjson and the clock's once-a-second
timestamp formatting.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
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


#: What the standard records' relativeCreated counts from (the logging module's import).
_LOGGING_STARTED: float = getattr(logging, "_startTime", time.time())


#: A standard record's attributes that never vary for a FieldsRecord (those of a record made once the
#: caller, the thread and the process name are not collected).
_CONSTANT_ATTRIBUTES: dict[str, object] = {
    "args": (), "exc_info": None, "exc_text": None, "stack_info": None, "pathname": "(unknown file)",
    "filename": "(unknown file)", "module": "(unknown file)", "lineno": 0, "funcName": None, "thread": None,
    "threadName": None, "processName": None, "process": None, "taskName": None,
}


class FieldsRecord(logging.LogRecord):
    """A record of a message without arguments plus its ``fields``: what ``logger.info(message,
    extra={"fields": ...})`` makes, for the line every request writes (``logger.handle(FieldsRecord(...))``
    after ``isEnabledFor``, so the logger's level, filters and handlers apply as usual). It skips the work
    around the standard record (the ``extra`` merge, the file name split, the argument checks): a third of
    what a request's log line cost, measured by callgrind. It holds every attribute of a standard record in
    its ``__dict__`` (%-style formats read them from there), those that cannot vary here copied in one step.
    A record factory set with ``setLogRecordFactory`` is not used for these lines."""

    def __init__(self, name: str, level: int, msg: str, fields: dict[str, object]) -> None:
        created = time.time()
        attributes = self.__dict__
        attributes.update(_CONSTANT_ATTRIBUTES)
        attributes["name"], attributes["msg"], attributes["fields"] = name, msg, fields
        attributes["levelno"], attributes["levelname"] = level, logging.getLevelName(level)
        attributes["created"] = created
        attributes["msecs"] = int((created - int(created)) * 1000) + 0.0
        attributes["relativeCreated"] = (created - _LOGGING_STARTED) * 1000
        if logging.logThreads:
            attributes["thread"], attributes["threadName"] = threading.get_ident(), threading.current_thread().name
        if logging.logProcesses:
            attributes["process"] = os.getpid()


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
