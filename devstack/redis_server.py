"""Find a Redis that answers, or start a throwaway ``redis-server`` on a free port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import redis

from devstack.process import spawn, terminate


def answers(url: str, timeout: float = 0.5) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def durability(url: str, timeout: float = 0.5) -> str | None:
    """How the Redis at ``url`` persists, when that falls short of an AOF fsynced before every reply (what
    ``make run`` starts): e.g. "appendonly no, RDB snapshots off". None when it is that durable, or when its
    configuration cannot be read (CONFIG may be renamed or forbidden on a managed server)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                  decode_responses=True)
    try:
        config = client.config_get("append*") | client.config_get("save")
    except redis.RedisError:
        return None
    finally:
        client.close()
    if config.get("appendonly") == "yes" and config.get("appendfsync") == "always":
        return None
    aof = (f"appendonly yes, appendfsync {config.get('appendfsync')}" if config.get("appendonly") == "yes"
           else "appendonly no")
    return f"{aof}, RDB snapshots {config.get('save') or 'off'}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisProcess:
    """A ``redis-server`` child process with no persistence, in its own temporary directory."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    extra_args: tuple[str, ...] = ()

    @property
    def directory(self) -> Path:
        assert self.workdir is not None
        return Path(self.workdir.name)

    def start(self, timeout: float = 10.0, extra_args: tuple[str, ...] = ()) -> RedisProcess:
        """Start (or, after ``kill``, start again on the same port and directory)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")
        if self.workdir is None:
            self.workdir = tempfile.TemporaryDirectory(prefix="ledgerstream-redis-")
            self.extra_args = extra_args
        log = self.directory / "redis.log"
        # Later arguments win, so extra_args may turn persistence on.
        self.process = spawn(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--logfile", str(log), *self.extra_args],
            lambda: answers(self.url, 0.2), timeout, f"redis-server on port {self.port} (see {log})")
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, keeping the directory (and whatever it persisted) for a restart."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        terminate(self.process)
        self.process = None
        if self.workdir is not None:
            self.workdir.cleanup()
            self.workdir = None
