"""The local MongoDB stand-in: nx-27017, a MongoDB wire-protocol server backed by SQLite.

pymongo talks to it over TCP exactly as to MongoDB. It has limits (no Decimal128, no atomic rename onto an
existing collection, see the README); production code paths stay plain pymongo.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from devstack.redis_server import free_port


def answers(uri: str, timeout_ms: int = 500) -> bool:
    client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=timeout_ms,
                                                         connectTimeoutMS=timeout_ms)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def command(port: int, data_dir: Path) -> list[str]:
    binary = shutil.which("nx-27017") or shutil.which("nx_27017")
    launcher = [binary] if binary else [sys.executable, "-m", "nx_27017.nx_27017"]
    return [*launcher, "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
            "--log-file", str(data_dir / "nx-27017.log"), "--pid-file", str(data_dir / "nx-27017.pid")]


@dataclass
class MongoStandIn:
    data_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> MongoStandIn:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(command(self.port, self.data_dir), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not answers(self.uri, 200):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nx-27017 did not start on port {self.port}; see {self.data_dir}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
