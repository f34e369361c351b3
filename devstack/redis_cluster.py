"""A real Redis Cluster on loopback: N masters (and optional replicas) of ``redis-server --cluster-enabled``.

Used by ``python -m devstack --cluster``, by the test session (``TEST_REDIS_CLUSTER=1``) and by the
benchmarks. Every node gets an explicit client port and cluster-bus port and its own directory; the cluster is
created with ``redis-cli --cluster create`` and is ready when every node reports ``cluster_state:ok``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from devstack.process import port_in_use, spawn, terminate
from devstack.redis_server import answers, free_port


@dataclass
class ClusterNodeProcess:
    port: int
    bus_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout)


@dataclass
class LocalCluster:
    """``masters`` masters splitting the slots evenly, and ``replicas`` replicas of the first master."""

    masters: int = 3
    replicas: int = 0
    node_timeout_ms: int = 5000
    #: Where the nodes keep their files; a temporary directory (removed on stop) when None.
    directory: Path | None = None
    #: Client ports to use (explicit for devstack, so a restart finds the same cluster); free ones when empty.
    ports: list[int] = field(default_factory=list)
    #: Extra redis-server arguments for every node (persistence, say).
    extra_args: tuple[str, ...] = ("--save", "", "--appendonly", "no")
    nodes: list[ClusterNodeProcess] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def seeds(self) -> list[str]:
        return [node.address for node in self.nodes[: self.masters]]

    @property
    def url(self) -> str:
        """A URL for the first master; give the others as REDIS_CLUSTER_NODES (see ``nodes_setting``)."""
        return f"redis://{self.nodes[0].address}"

    @property
    def nodes_setting(self) -> str:
        return ",".join(node.address for node in self.nodes[1: self.masters])

    def start(self, timeout: float = 60.0) -> LocalCluster:
        binary = shutil.which("redis-server")
        if binary is None or shutil.which("redis-cli") is None:
            raise FileNotFoundError("redis-server and redis-cli are needed (Debian/Ubuntu: apt-get install "
                                    "redis-server)")
        if self.directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ledgerstream-cluster-")
            root = Path(self._tmp.name)
        else:
            root = self.directory
        count = self.masters + self.replicas
        ports = self.ports or [_free_pair()[0] for _ in range(count)]
        try:
            for port in ports:
                node = ClusterNodeProcess(port, _bus_port(port), root / str(port))
                node.directory.mkdir(parents=True, exist_ok=True)
                node.process = self._spawn(binary, node)
                self.nodes.append(node)
            if not self._formed():
                self._create()
            self._wait_ok(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, binary: str, node: ClusterNodeProcess) -> subprocess.Popen[bytes]:
        url = f"redis://{node.address}/0"
        command = [binary, "--port", str(node.port), "--cluster-port", str(node.bus_port), "--bind", "127.0.0.1",
                   "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                   "--cluster-node-timeout", str(self.node_timeout_ms), "--dir", str(node.directory),
                   "--logfile", "redis.log", "--repl-diskless-sync-delay", "0",
                   # A master that is down stalls its own slots only, not the whole cluster.
                   "--cluster-require-full-coverage", "no", *self.extra_args]
        return spawn(command, lambda: answers(url, 0.2), 20, f"cluster node on port {node.port}",
                     own_session=True)

    def _formed(self) -> bool:
        """A restarted cluster (devstack) reloads its nodes.conf: no need to create it again."""
        try:
            info = self.nodes[0].client().cluster("INFO")
        except redis.RedisError:
            return False
        return bool(int(_field(info, "cluster_slots_assigned") or 0) == 16384
                    and int(_field(info, "cluster_known_nodes") or 0) == len(self.nodes))

    def _create(self) -> None:
        masters = self.nodes[: self.masters]
        created = subprocess.run(["redis-cli", "--cluster", "create", *(n.address for n in masters),
                                  "--cluster-replicas", "0", "--cluster-yes"],
                                 capture_output=True, text=True, timeout=60, check=False)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {(created.stdout + created.stderr)[-500:]}")
        if not self.replicas:
            return
        first = masters[0].client()
        master_id = first.cluster("MYID").decode()
        for replica in self.nodes[self.masters:]:
            client = replica.client()
            client.cluster("MEET", "127.0.0.1", masters[0].port, masters[0].bus_port)
            deadline = time.monotonic() + 30
            while True:  # REPLICATE needs the master in this node's table first
                try:
                    client.cluster("REPLICATE", master_id)
                    break
                except redis.ResponseError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    def _wait_ok(self, deadline: float) -> None:
        while True:
            if all(self._node_ok(node) for node in self.nodes if node.process is not None):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster on {self.seeds} did not reach cluster_state:ok")
            time.sleep(0.05)

    def _node_ok(self, node: ClusterNodeProcess) -> bool:
        try:
            client = node.client(0.5)
            info = client.cluster("INFO")
            if _field(info, "cluster_state") != "ok" or int(_field(info, "cluster_known_nodes") or 0) != len(
                    self.nodes):
                return False
            for peer in client.cluster("NODES").values():  # redis-py parses CLUSTER NODES into a dict
                if peer.get("connected") is False or any(f in str(peer.get("flags")) for f in ("fail?", "fail")):
                    return False  # some node still sees another as failing: not settled yet
            if node in self.nodes[self.masters:]:  # a replica must have finished its first sync
                return bool(client.info("replication").get("master_link_status") == "up")
            return True
        except redis.RedisError:
            return False

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node reports cluster_state:ok (after a restart, say)."""
        self._wait_ok(time.monotonic() + timeout)

    def describe(self, log_lines: int = 15) -> str:
        """What each node thinks of the cluster, and the end of its log: for a test that times out waiting."""
        parts = []
        for node in self.nodes:
            if node.process is None:
                parts.append(f"{node.address}: not running")
                continue
            try:
                client: Any = node.client(0.5)
                view = client.execute_command("CLUSTER", "NODES").decode()  # the raw text, not redis-py's dict
            except redis.RedisError as exc:
                view = f"(no answer: {exc})"
            log = node.directory / "redis.log"
            tail = log.read_text(errors="replace").splitlines()[-log_lines:] if log.exists() else []
            parts.append(f"{node.address} sees:\n{view}\n  log:\n  " + "\n  ".join(tail))
        return "\n".join(parts)

    def node_at(self, address: str) -> ClusterNodeProcess:
        return next(node for node in self.nodes if node.address == address)

    def kill(self, node: ClusterNodeProcess) -> None:
        """SIGKILL one node: a crash, not a shutdown."""
        if node.process is not None and node.process.poll() is None:
            node.process.send_signal(signal.SIGKILL)
            node.process.wait()
        node.process = None

    def restart(self, node: ClusterNodeProcess) -> None:
        """Start a killed node again on its port and directory: it reloads nodes.conf and rejoins."""
        binary = shutil.which("redis-server")
        assert binary is not None
        node.process = self._spawn(binary, node)

    def stop(self) -> None:
        for node in self.nodes:
            terminate(node.process)
            node.process = None
        self.nodes = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _bus_port(port: int) -> int:
    """The cluster bus port: port + 10000 (Redis's convention) when that is free, else any free port."""
    candidate = port + 10000
    return candidate if candidate <= 65535 and not port_in_use(candidate) else free_port()


def _free_pair() -> tuple[int, int]:
    while True:
        port = free_port()
        if port + 10000 <= 65535 and not port_in_use(port + 10000):
            return port, port + 10000


def _field(info: object, name: str) -> str | None:
    if isinstance(info, dict):
        value = info.get(name)
        return None if value is None else str(value)
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return None
