"""Start a server as a child process and wait until it answers; stop it politely, then firmly."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def spawn(command: list[str], ready: Callable[[], bool], timeout: float, what: str, *,
          log: Path | None = None, own_session: bool = False, cwd: Path | None = None,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``command`` and wait (up to ``timeout``) until ``ready()``.

    ``own_session`` keeps the child out of the terminal's process group, so Ctrl-C reaches only us and we
    decide the order in which things stop.
    """
    output = subprocess.DEVNULL if log is None else log.open("ab")
    try:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=own_session,
                                   cwd=cwd, env=env)
    finally:
        if log is not None:
            output.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            terminate(process)
            raise RuntimeError(f"{what} did not start" + (f" (see {log})" if log else ""))
        time.sleep(0.05)
    return process


def terminate(process: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on ``port``. SO_REUSEADDR, as every server sets it: the sockets a stopped
    server leaves in TIME-WAIT would otherwise refuse the probe, though a restarted server binds fine."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False
