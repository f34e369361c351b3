"""2c. Instructions per request, counted by callgrind: the gateway's deposit/withdraw mix vs the no-op route,
both called in process as WSGI apps (no gunicorn, no sockets on the HTTP side; Redis over TCP as usual).

Timings on a shared 2-core machine move by ±10 % between runs; instruction counts repeat to within a few
hundredths of a percent, so this is the figure to compare changes by. Each app runs twice under
``valgrind --tool=callgrind`` on the same starting data, once with ``WARM`` requests and once with ``WARM +
MEASURED``; the difference divided by ``MEASURED`` is what one request costs, start-up and imports cancelled
out. The warm-up makes every account reach its steady state (a snapshot every ``SNAPSHOT_INTERVAL``
versions) before counting. User-space instructions only: the kernel's share is in 2b.
"""

from __future__ import annotations

import gc
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import redis

from bench.auth import BenchAuth, local_issuer
from bench.common import ROOT, Result, redis_server, report, seed_accounts
from shared.keys import KeySpace
from tests.support.wsgi import post_environ

ACCOUNTS = 100
SEED_EVENTS = 10
PREFIX = "b2c"
#: Requests before counting starts: enough for every account to pass a snapshot (every 2 versions by default).
WARM = 600
MEASURED = 1000
APPS = {"ours": "gateway:create_app", "noop": "bench.noop_app:create_app"}
_TOTAL = re.compile(rb"^(?:summary|totals): (\d+)", re.MULTILINE)


def instructions_per_request() -> Result:
    if shutil.which("valgrind") is None:
        raise SystemExit("the instruction count needs valgrind (Debian/Ubuntu: apt-get install valgrind)")
    with redis_server() as server, local_issuer() as auth, TemporaryDirectory(prefix="callgrind-") as tmp:
        databases = {"ours": 1, "noop": 2}
        with ThreadPoolExecutor(max_workers=2) as pool:  # a count does not depend on what else runs
            counts = dict(zip(APPS, pool.map(
                lambda app: per_request(server.url, databases[app], app, Path(tmp), auth), APPS), strict=True))
    ours, noop = counts["ours"], counts["noop"]
    return report(Result(
        "2c. interpreter instructions per request, in process (callgrind; no gunicorn)",
        f"{ours:,.0f} per deposit/withdrawal", f"{noop:,.0f} per no-op request", ours / noop,
        "reported (deterministic: compare changes by it)", True,
        [f"{MEASURED:,} requests counted after {WARM:,} warm-up requests over {ACCOUNTS} accounts; user space "
         "only, INFO logging to /dev/null"]))


def per_request(url: str, database: int, app: str, folder: Path, auth: BenchAuth,
                 extra_env: dict[str, str] | None = None) -> float:
    totals = [_count(url, database, app, requests, folder, auth, extra_env) for requests in (WARM, WARM + MEASURED)]
    return (totals[1] - totals[0]) / MEASURED


def _count(url: str, database: int, app: str, requests: int, folder: Path, auth: BenchAuth,
           extra_env: dict[str, str] | None = None) -> int:
    """Total instructions of one child process serving ``requests`` requests from freshly seeded data, with
    ``extra_env`` added to its environment."""
    db_url = f"{url.rsplit('/', 1)[0]}/{database}"
    client = redis.Redis.from_url(db_url)
    client.flushdb()
    seed_accounts(client, KeySpace(PREFIX, 16), [f"acct-{i}" for i in range(ACCOUNTS)], SEED_EVENTS,
                  owner=auth.owner)
    out = folder / f"{app}.{database}.{requests}.out"
    env = {**os.environ, "REDIS_URL": db_url, "LEDGER_KEY_PREFIX": PREFIX, "LEDGER_PARTITIONS": "16",
           "LOG_LEVEL": "INFO", "PYTHONHASHSEED": "0", **auth.env, "AUTHORIZATION": auth.header, **(extra_env or {})}
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
                    "bench.instructions", app, str(requests)], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = _TOTAL.search(out.read_bytes())
    if found is None:
        raise RuntimeError(f"callgrind wrote no total to {out}")
    return int(found.group(1))


def _requests(app: str, count: int) -> Iterable[dict[str, Any]]:
    draw = random.Random(7)  # the same requests in both runs of an app
    token = os.environ["AUTHORIZATION"]  # the same bearer token on every request, as one client sends it
    for _ in range(count):
        if app == "noop":
            yield post_environ("/noop", b'{"amount":"2.00"}', HTTP_AUTHORIZATION=token)
        elif draw.random() < 0.6:
            yield post_environ(f"/accounts/acct-{draw.randrange(ACCOUNTS)}/deposits", b'{"amount":"2.00"}',
                               HTTP_AUTHORIZATION=token)
        else:
            yield post_environ(f"/accounts/acct-{draw.randrange(ACCOUNTS)}/withdrawals", b'{"amount":"1.00"}',
                               HTTP_AUTHORIZATION=token)


def _serve(app: str, count: int) -> None:
    """The child: build the app as a gunicorn worker does, then answer ``count`` requests; none may fail."""
    module, factory = APPS[app].split(":")
    wsgi: Callable[..., Iterable[bytes]] = getattr(__import__(module, fromlist=[factory]), factory)()
    gc.freeze()  # as gateway/gunicorn.conf.py does once a worker has loaded the app
    statuses: list[str] = []
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115  (the log lines are formatted and written, then dropped)
    for environ in _requests(app, count):
        for _ in wsgi(environ, lambda status, headers, exc_info=None: statuses.append(status)):
            pass
    failed = [status for status in statuses if status.startswith("5")]
    if failed or len(statuses) != count:
        raise SystemExit(f"{len(failed)} of {count} requests failed ({failed[:3]}), {len(statuses)} answered")


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]))
