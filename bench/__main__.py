"""``python -m bench [name ...]``: run the benchmarks (all by default) and print a results table.

Names: handler, http, instructions, telemetry, store-size, history, append, cold-start, projector, takeover,
lag, durability, scale-out, record-size, ryw, queries, memory.
Each figure is printed next to the limit it is compared with, measured in the same run, and each run ends
with a correctness check.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import secrets
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bench import (
    common,
    durability,
    http_load,
    inprocess,
    instructions,
    memory,
    projector_load,
    queries,
    record_size,
    scale_out,
    telemetry,
)

BENCHMARKS: dict[str, Callable[[], Any]] = {
    "handler": inprocess.handler_cost,
    "http": http_load.http_throughput,
    "instructions": instructions.instructions_per_request,
    "telemetry": telemetry.telemetry_cost,
    "store-size": inprocess.store_size_independence,
    "history": inprocess.long_histories,
    "append": inprocess.append_path,
    "cold-start": inprocess.cold_start,
    "projector": projector_load.backlog_throughput,
    "takeover": projector_load.takeover,
    "lag": projector_load.end_to_end_lag,
    "durability": durability.durability_costs,
    "scale-out": scale_out.scale_out,
    "record-size": record_size.record_size,
    "ryw": queries.read_your_writes_wait,
    "queries": queries.query_throughput,
    "memory": memory.memory,
}


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as info:
        cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                                   check=False).stdout.split()[2:3]
    return (f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"redis-server {''.join(redis_version).removeprefix('v=')}, MongoDB stand-in nx-27017")


def _no_authentication_unless_asked() -> None:
    """The benchmarks that measure the request path (1, 2, 2b, 2c) carry bearer tokens of a local issuer they
    start (bench/auth.py); the others run, like the tests that are not about authentication, with
    AUTH_MODE=none, and nothing from the shell's AUTH_* variables leaks into either."""
    for name in [n for n in os.environ if n.startswith("AUTH_")]:
        del os.environ[name]
    os.environ["AUTH_MODE"] = "none"
    # The service refuses to start without a key for its consistency tokens: the benchmarks' own.
    os.environ["CONSISTENCY_TOKEN_SECRET"] = secrets.token_urlsafe(32)


def main(argv: list[str] | None = None) -> int:
    _no_authentication_unless_asked()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", choices=[*BENCHMARKS, []], metavar="name",
                        help=f"one or more of: {', '.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    for name in args.names or list(BENCHMARKS):
        BENCHMARKS[name]()
    print(f"\n## Results ({datetime.now(UTC):%Y-%m-%d}, {machine()})\n")
    print(common.summary_table())
    return 0 if all(r.passed for r in common.RESULTS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
