"""The local MongoDB stand-in: nx-27017, a MongoDB wire-protocol server backed by SQLite.

pymongo talks to it over TCP exactly as to MongoDB. It has limits (no Decimal128, no atomic rename onto an
existing collection, see the README); production code paths stay plain pymongo.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from devstack.process import spawn, terminate
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
        self.process = spawn(command(self.port, self.data_dir), lambda: answers(self.uri, 200), timeout,
                             f"nx-27017 on port {self.port} (see {self.data_dir})")
        return self

    def stop(self) -> None:
        terminate(self.process)
        self.process = None
