"""The JSON log lines: one object per line, written through to the file descriptor at once."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import logs


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Call ``logs.configure("INFO")`` as an entry point does, on a root logger put back afterwards."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    previous = root.level
    try:
        logs.configure("INFO")
        yield
    finally:
        root.setLevel(previous)


@pytest.mark.parametrize("line_buffered", [True, False])
@pytest.mark.usefixtures("configure")
def test_each_line_reaches_the_file_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           line_buffered: bool) -> None:
    """Python's stderr is line-buffered; a stream that is not (a test runner's, a redirected one) is flushed,
    so a crash right after a line never loses it."""
    path = tmp_path / "stderr.log"
    with open(path, "w", encoding="utf-8", buffering=1 if line_buffered else 8192) as stream:
        monkeypatch.setattr(sys, "stderr", stream)  # the handler writes to whatever sys.stderr is now
        logging.getLogger("ledgerstream.test").info("request", extra={"fields": {"status": 200}})
        written = path.read_text(encoding="utf-8")  # before the stream is closed or flushed by anyone else
    entry = json.loads(written)
    assert written.endswith("}\n") and written.count("\n") == 1
    assert (entry["message"], entry["level"], entry["status"]) == ("request", "INFO", 200)


@pytest.mark.usefixtures("configure")
def test_gunicorn_lines_still_format_after_configure() -> None:
    """Our switches are process-wide: gunicorn's lines in a worker ("Worker exiting", "Error handling
    request", ...) format ``%(process)d`` and came out as "--- Logging error ---" tracebacks when the process
    id was switched off."""
    from gunicorn.glogging import Logger as GunicornLogger

    gunicorn_log = logging.getLogger("gunicorn.error")
    record = gunicorn_log.makeRecord(gunicorn_log.name, logging.INFO, "(unknown file)", 0,
                                     "Worker exiting (pid: %s)", (123,), None)
    line = logging.Formatter(GunicornLogger.error_fmt, GunicornLogger.datefmt).format(record)
    assert line.endswith(f"[{os.getpid()}] [INFO] Worker exiting (pid: 123)")


def test_a_fields_record_reads_like_the_standard_one() -> None:
    """The request line's record: the same JSON line as ``logger.info(message, extra={"fields": ...})``,
    and every attribute the logging documentation lists is there for any other formatter."""
    logger = logging.getLogger("ledgerstream.test")
    fields: dict[str, object] = {"request_id": "r-1", "status": 200, "duration_ms": 1.5}
    standard = logger.makeRecord(logger.name, logging.INFO, "(unknown file)", 0, "request", (), None,
                                 extra={"fields": fields})
    ours = logs.FieldsRecord(logger.name, logging.INFO, "request", fields)
    formatter = logs.JsonFormatter()
    standard_line, our_line = json.loads(formatter.format(standard)), json.loads(formatter.format(ours))
    assert standard_line.keys() == our_line.keys()
    assert {k: v for k, v in our_line.items() if k != "time"} == {k: v for k, v in standard_line.items() if k != "time"}
    every = " ".join(f"%({name})s" for name in (
        "args", "asctime", "created", "exc_info", "filename", "funcName", "levelname", "levelno", "lineno",
        "message", "module", "msecs", "msg", "name", "pathname", "process", "processName", "relativeCreated",
        "stack_info", "thread", "threadName"))
    assert logging.Formatter(every).format(ours).split(" ")[11] == "request"  # message, after asctime's two words
    assert abs(ours.relativeCreated - standard.relativeCreated) < 1000
    assert set(standard.__dict__) <= set(ours.__dict__)  # %-style formats read the record's __dict__
    assert ours.process == standard.process
