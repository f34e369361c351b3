"""Start a server as a child process and wait until it answers; stop it politely, then firmly."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


def spawn(command: list[str], ready: Callable[[], bool], timeout: float, what: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            terminate(process)
            raise RuntimeError(f"{what} did not start")
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
