"""The gateway's output under gunicorn, start to stop: gunicorn's own lines and ours share the process."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.support.gateway import answers, live_gateway


def test_gunicorn_lines_format_in_workers_that_loaded_the_app(tmp_path: Path) -> None:
    """A worker configures logging when it loads the app; gunicorn's lines from that worker afterwards
    ("Worker exiting", "Error handling request") must still come out as lines, not logging tracebacks."""
    log = tmp_path / "gunicorn.log"
    with live_gateway({}, workers=1, log=log) as base:
        assert answers(f"{base}/healthz")
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:  # gunicorn refuses this itself
            sock.sendall(b"GARBAGE \"}\n{\"level\":\"forged\r\n\r\n")
            while sock.recv(65536):
                pass
    output = log.read_text(encoding="utf-8", errors="replace")
    assert "Worker exiting (pid:" in output
    assert "Logging error" not in output, output[-3000:]
    # Every line, gunicorn's own included (the malformed request line it echoes too), is one JSON object.
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert any("Invalid request" in line["message"] for line in lines)
    assert all(line["level"] != "forged" for line in lines)
