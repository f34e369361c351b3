"""Run the whole service locally with one command: python -m devstack (or make run).

Starts what is not configured, then the HTTP gateway under gunicorn and the projector, with interleaved,
prefixed logs (honcho). Ctrl-C stops the API and the projector first, then the servers it started.

  Redis    REDIS_URL if set; else a redis-server on 127.0.0.1:$DEV_REDIS_PORT (6379), data in
           $DEV_STATE_DIR/redis (.devstack/redis), reused if one from an earlier run still answers there.
  MongoDB  MONGODB_URI if set; else the nx-27017 stand-in on 127.0.0.1:$DEV_MONGO_PORT (27017), data in
           $DEV_STATE_DIR/mongo, reused likewise.
  Issuer   AUTH_ISSUER (and AUTH_AUDIENCE) if set, or AUTH_MODE=none; else a local OIDC issuer on
           127.0.0.1:$DEV_ISSUER_PORT (8083), its signing key in $DEV_STATE_DIR/issuer, which the API trusts.
  API      http://127.0.0.1:$PORT (8080), $WEB_CONCURRENCY workers (the gateway's default:
           the usable cores + 1); its health process (/healthz, /readyz, /metrics) on $DEV_HEALTH_PORT (8082,
           0 for none); projector health and metrics on $PROJECTOR_HEALTH_PORT (8081).

Every API request needs a bearer token; with the local issuer, print one with
  python -m devstack token <subject> [--scope accounts:read --scope ...] [--account ID] [--ttl 1h]

With --cluster, Redis is a 3-master Redis Cluster instead: redis-server processes on 127.0.0.1:7000-7002
($DEV_CLUSTER_PORT moves the first; cluster bus on port + 10000), data (AOF) in $DEV_STATE_DIR/cluster,
and the read model its own database (accountDB_cluster, unless MONGODB_DATABASE is set).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from honcho.manager import Manager
from honcho.printer import Printer

from devstack import local_secrets
from devstack.issuer import DEFAULT_SCOPES, LOCAL_AUDIENCE, LocalIssuer, local_url
from devstack.mongo_standin import answers as mongo_answers
from devstack.mongo_standin import command as mongo_command
from devstack.process import port_in_use, spawn, terminate
from devstack.redis_cluster import LocalCluster
from devstack.redis_server import answers, durability
from devstack.settings import DevSettings, load_dev_settings
from shared.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
GUNICORN_CONFIG = ROOT / "gateway" / "gunicorn.conf.py"
#: The read model's database under --cluster (MONGODB_DATABASE wins); the single-node stack keeps the default.
CLUSTER_DATABASE = "accountDB_cluster"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", action="store_true", help="run Redis as a local 3-master Redis Cluster")
    commands = parser.add_subparsers(dest="command", metavar="{token}")
    token = commands.add_parser("token", help="print a bearer token of the local issuer",
                                description="Print an access token signed by the local issuer that `make run` "
                                            "starts, for Authorization: Bearer <token>.")
    token.add_argument("subject", help="who the token is for (the owner of the accounts it opens)")
    token.add_argument("--scope", action="append", metavar="SCOPE",
                       help="a scope (repeatable, or several separated by spaces); default: "
                            f"{' '.join(DEFAULT_SCOPES)}. accounts:admin reaches every account")
    token.add_argument("--account", metavar="ID", help="a delegated token: it reaches this account only (acct)")
    token.add_argument("--ttl", default="1h", help="lifetime, like 90s, 30m, 1h or 2d (default 1h)")
    args = parser.parse_args(argv)
    try:
        dev = load_dev_settings()
    except ConfigError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 2
    if args.command == "token":
        return _token(args, dev)
    return _run(args, dev)


def _token(args: argparse.Namespace, dev: DevSettings) -> int:
    ttl = _seconds(args.ttl)
    if ttl is None:
        print(f"devstack token: --ttl must be a number of seconds, minutes, hours or days (90s, 30m, 1h, 2d), "
              f"got {args.ttl!r}", file=sys.stderr)
        return 2
    scopes = [s for item in (args.scope or DEFAULT_SCOPES) for s in item.split()]
    issuer = LocalIssuer.from_directory(dev.state_dir, local_url(dev.issuer_port))
    print(issuer.token(args.subject, scopes, ttl_seconds=ttl, account=args.account))
    return 0


def _seconds(text: str) -> int | None:
    match = re.fullmatch(r"([0-9]{1,7})([smhd]?)", text.strip())
    if match is None or int(match[1]) == 0:
        return None
    return int(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def _run(args: argparse.Namespace, dev: DevSettings) -> int:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    local_issuer = not (env.get("AUTH_ISSUER") or env.get("AUTH_MODE"))
    busy = _busy_port(dev, local_issuer)
    if busy:
        print(f"devstack: {busy}", file=sys.stderr)
        return 1

    started: list[subprocess.Popen[bytes]] = []
    cluster: LocalCluster | None = None
    try:
        if args.cluster:
            cluster = _cluster(env, dev)
        else:
            env["REDIS_URL"] = redis_for_run(env, dev, started)
        env["MONGODB_URI"] = _mongo(env, dev, started)
        manager = Manager(Printer(sys.stdout))
        if local_issuer:
            issuer = LocalIssuer.from_directory(dev.state_dir, local_url(dev.issuer_port))  # makes the key once
            manager.add_process("issuer", f"{shlex.quote(sys.executable)} -m devstack.issuer --port "
                                          f"{dev.issuer_port} --state-dir {shlex.quote(str(dev.state_dir))}")
            env.update({"AUTH_ISSUER": issuer.url, "AUTH_AUDIENCE": LOCAL_AUDIENCE})
            print(f"devstack: API tokens come from the local issuer {issuer.url} (key in "
                  f"{dev.state_dir / 'issuer'}): .venv/bin/python -m devstack token <subject>")
        else:
            print("devstack: authentication as configured by the AUTH_* variables in the environment")
        if local_secrets.provide(env, dev.state_dir):
            print(f"devstack: consistency tokens signed with the key in {dev.state_dir / 'consistency-token-secret'}")
        if "ARCHIVE_URL" not in env:  # accounts' older events leave Redis as they would in production
            env["ARCHIVE_URL"] = (dev.state_dir / "archive").resolve().as_uri()
        print(f"devstack: accounts' archived history in {env['ARCHIVE_URL']}")
        # Health on loopback: a laptop is not a container behind a platform probe.
        manager.add_process("projector", f"{sys.executable} -m projector run",
                            env={**env, "PROJECTOR_HEALTH_BIND": env.get("PROJECTOR_HEALTH_BIND", "127.0.0.1")})
        api_env = {**env, "GUNICORN_BIND": f"127.0.0.1:{dev.port}", "GUNICORN_GRACEFUL_TIMEOUT_SECONDS": "5"}
        if dev.health_port and not env.get("GATEWAY_HEALTH_BIND"):
            api_env["GATEWAY_HEALTH_BIND"] = f"127.0.0.1:{dev.health_port}"
        manager.add_process("api", f"{sys.executable} -m gunicorn --config {GUNICORN_CONFIG} "
                                   "'gateway:create_app()'", env=api_env)
        metrics = f", its metrics on http://127.0.0.1:{dev.health_port}/metrics" if dev.health_port else ""
        print(f"devstack: API on http://127.0.0.1:{dev.port}{metrics}, projector health on "
              f"http://127.0.0.1:{dev.projector_health_port}/healthz (Ctrl-C stops everything)", flush=True)
        manager.loop()
        return int(manager.returncode or 0)
    except RuntimeError as exc:  # a server we started did not come up
        print(f"devstack: {exc}", file=sys.stderr)
        return 1
    finally:
        for process in reversed(started):  # the API and the projector are gone by now: servers last
            terminate(process)
        if cluster is not None:
            cluster.stop()


def _busy_port(dev: DevSettings, local_issuer: bool) -> str | None:
    ports = [(dev.port, "the API", "PORT"),
             (dev.projector_health_port, "the projector's health endpoint", "PROJECTOR_HEALTH_PORT"),
             (dev.health_port, "the API's health process", "DEV_HEALTH_PORT")]
    if local_issuer:
        ports.append((dev.issuer_port, "the local issuer", "DEV_ISSUER_PORT"))
    for port, what, variable in ports:
        if port and port_in_use(port):
            return (f"port {port} for {what} is in use (is another `make run` still running?); "
                    f"stop it, or set {variable} to a free port")
    return None


def redis_for_run(env: dict[str, str], dev: DevSettings, started: list[subprocess.Popen[bytes]]) -> str:
    if env.get("REDIS_URL"):
        print(f"devstack: using REDIS_URL from the environment ({_redacted(env['REDIS_URL'])})")
        return env["REDIS_URL"]
    url = f"redis://127.0.0.1:{dev.redis_port}/0"
    if answers(url):
        print(f"devstack: reusing the Redis already answering on port {dev.redis_port}")
        weaker = durability(url)
        if weaker is not None:
            print(f"devstack: WARNING: that Redis is not the durable one make run starts ({weaker}; make run's "
                  "own is appendonly yes, appendfsync always): an acknowledged write may be lost if it crashes. "
                  "Stop it, or set DEV_REDIS_PORT to a free port for a Redis of make run's own", file=sys.stderr)
        return url
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found; install it (apt-get install redis-server) "
                           "or set REDIS_URL to a Redis you run yourself")
    data = dev.state_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    # AOF fsynced before every reply (the durable default, see the README): an acknowledged write survives a
    # crash of the Redis process or the machine.
    command = [binary, "--port", str(dev.redis_port), "--bind", "127.0.0.1", "--dir", str(data),
               "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    started.append(spawn(command, lambda: answers(url, 0.2), 20, f"redis-server on port {dev.redis_port}",
                         log=data / "redis.log", own_session=True))
    print(f"devstack: started redis-server on port {dev.redis_port} (log: {data / 'redis.log'})")
    return url


def _cluster(env: dict[str, str], dev: DevSettings) -> LocalCluster | None:
    """Start the local cluster (or reuse one still running) and point the stack at it; None when reused."""
    if env.get("REDIS_URL"):
        raise RuntimeError("--cluster starts its own Redis Cluster: unset REDIS_URL, or run without --cluster "
                           "and set REDIS_CLUSTER=true to use a cluster of your own")
    ports = [dev.cluster_port + n for n in range(3)]
    addresses = cluster_environment(env, ports)
    print(f"devstack: for other tools: export REDIS_CLUSTER=true REDIS_URL={env['REDIS_URL']} "
          f"REDIS_CLUSTER_NODES={env['REDIS_CLUSTER_NODES']} MONGODB_DATABASE={env['MONGODB_DATABASE']}")
    if all(answers(f"redis://{address}/0") for address in addresses):
        print(f"devstack: reusing the Redis Cluster already answering on ports {ports[0]}-{ports[-1]}")
        return None
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server not found; install it (apt-get install redis-server)")
    cluster = LocalCluster(masters=3, directory=dev.state_dir / "cluster", ports=ports,
                           extra_args=("--appendonly", "yes", "--appendfsync", "always", "--save", ""))
    cluster.start()
    print(f"devstack: started a 3-master Redis Cluster on ports {ports[0]}-{ports[-1]} "
          f"(data and logs: {dev.state_dir / 'cluster'})")
    return cluster


def cluster_environment(env: dict[str, str], ports: list[int]) -> list[str]:
    """Point ``env`` at the local cluster on ``ports``, with a read model of its own (the single-node stack's
    documents were projected from another Redis); the nodes' addresses."""
    addresses = [f"127.0.0.1:{port}" for port in ports]
    env.setdefault("MONGODB_DATABASE", CLUSTER_DATABASE)
    env.update({"REDIS_URL": f"redis://{addresses[0]}", "REDIS_CLUSTER": "true",
                "REDIS_CLUSTER_NODES": ",".join(addresses[1:])})
    return addresses


def _mongo(env: dict[str, str], dev: DevSettings, started: list[subprocess.Popen[bytes]]) -> str:
    if env.get("MONGODB_URI"):
        print(f"devstack: using MONGODB_URI from the environment ({_redacted(env['MONGODB_URI'])})")
        return env["MONGODB_URI"]
    uri = f"mongodb://127.0.0.1:{dev.mongo_port}"
    if mongo_answers(uri):
        print(f"devstack: reusing the MongoDB already answering on port {dev.mongo_port}")
        return uri
    data = dev.state_dir / "mongo"
    data.mkdir(parents=True, exist_ok=True)
    started.append(spawn(mongo_command(dev.mongo_port, data), lambda: mongo_answers(uri, 200), 30,
                         f"the MongoDB stand-in on port {dev.mongo_port}", own_session=True))
    print(f"devstack: started the MongoDB stand-in nx-27017 on port {dev.mongo_port} "
          f"(log: {data / 'nx-27017.log'})")
    return uri


def _redacted(url: str) -> str:
    head, sep, tail = url.rpartition("@")
    return f"{head.split('//')[0]}//***@{tail}" if sep else url


if __name__ == "__main__":
    raise SystemExit(main())
