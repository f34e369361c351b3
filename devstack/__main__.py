"""Run the whole service locally with one command: ``python -m devstack`` (or ``make run``).

Starts what is not configured, then the HTTP gateway under gunicorn, with interleaved, prefixed logs
(honcho); Ctrl-C stops everything. Embedded defaults:

* Redis: ``REDIS_URL`` if set; otherwise a ``redis-server`` on 127.0.0.1:$DEV_REDIS_PORT (6379) with its
  data (AOF) in ``.devstack/redis``, reused if one from an earlier run still answers there.
* MongoDB: ``MONGODB_URI`` if set; otherwise the nx-27017 stand-in on 127.0.0.1:$DEV_MONGO_PORT (27017)
  with its data in ``.devstack/mongo``, reused if one still answers there.
* The gateway on http://127.0.0.1:$PORT (8080) and the projector (health on $PROJECTOR_HEALTH_PORT, 8081).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

from honcho.manager import Manager
from honcho.printer import Printer

from devstack.mongo_standin import answers as mongo_answers
from devstack.mongo_standin import command as mongo_command
from devstack.redis_server import answers

STATE_DIR = Path(".devstack")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
    parser.add_argument("--redis-port", type=int, default=int(os.environ.get("DEV_REDIS_PORT", "6379")))
    parser.add_argument("--mongo-port", type=int, default=int(os.environ.get("DEV_MONGO_PORT", "27017")))
    args = parser.parse_args(argv)

    manager = Manager(Printer(sys.stdout))
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")

    if env.get("REDIS_URL"):
        print(f"devstack: using REDIS_URL from the environment ({_redacted(env['REDIS_URL'])})")
    else:
        env["REDIS_URL"] = f"redis://127.0.0.1:{args.redis_port}/0"
        if answers(env["REDIS_URL"]):
            print(f"devstack: reusing the Redis already answering on port {args.redis_port}")
        else:
            manager.add_process("redis", _redis_command(args.redis_port))

    if env.get("MONGODB_URI"):
        print(f"devstack: using MONGODB_URI from the environment ({_redacted(env['MONGODB_URI'])})")
    else:
        env["MONGODB_URI"] = f"mongodb://127.0.0.1:{args.mongo_port}"
        if mongo_answers(env["MONGODB_URI"]):
            print(f"devstack: reusing the MongoDB already answering on port {args.mongo_port}")
        else:
            data = STATE_DIR / "mongo"
            data.mkdir(parents=True, exist_ok=True)
            manager.add_process("mongo", shlex.join(mongo_command(args.mongo_port, data.resolve())))

    manager.add_process("projector", f"{sys.executable} -m projector run", env=env)
    api_env = {**env, "GUNICORN_BIND": f"127.0.0.1:{args.port}", "WEB_CONCURRENCY": str(args.workers),
               "GUNICORN_GRACEFUL_TIMEOUT": "5"}
    manager.add_process(
        "api", f"{sys.executable} -m gunicorn --config gateway/gunicorn.conf.py 'gateway:create_app()'", env=api_env)
    print(f"devstack: API on http://127.0.0.1:{args.port} (Ctrl-C stops everything)")
    manager.loop()
    return int(manager.returncode or 0)


def _redis_command(port: int) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("devstack: redis-server not found; install it (apt-get install redis-server) "
                         "or set REDIS_URL to a Redis you run yourself")
    data = STATE_DIR / "redis"
    data.mkdir(parents=True, exist_ok=True)
    # AOF on, as in production, so local data survives a restart of the stack.
    return (f"{binary} --port {port} --bind 127.0.0.1 --dir {data.resolve()} --appendonly yes "
            f"--appendfsync everysec --save ''")


def _redacted(url: str) -> str:
    head, sep, tail = url.rpartition("@")
    return f"{head.split('//')[0]}//***@{tail}" if sep else url


if __name__ == "__main__":
    raise SystemExit(main())
