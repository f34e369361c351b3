"""Where a gateway request's server CPU goes, by layer: py-spy samples the gunicorn workers under wrk load,
each sample is given to one layer, and the shares split the CPU the workers used per request (from /proc).

A sample belongs to the leaf-most frame that is ours (gateway, handler glue, service, event store,
validation) or a library we call on purpose (redis-py, json, logging, uuid/clock). Flask and Werkzeug
frames count for the code of ours that called them (the adapter asking Werkzeug for headers is adapter
cost), and for Flask only when nothing of ours is above them; what gunicorn does around the application
(accept, parse, write, close) is gunicorn's. py-spy leaves out threads blocked in a system call, so time in
the kernel counts only where the CPU was busy in it, and then for the frame that made the call.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

OURS = (
    ("gateway/", "gateway adapter (HTTP ↔ API Gateway event)"),
    ("shared/http.py", "handler glue (event parsing, responses, serve)"),
    ("shared/representations.py", "handler glue (event parsing, responses, serve)"),
    ("shared/api.py", "handler glue (event parsing, responses, serve)"),
    ("functions/", "handler glue (event parsing, responses, serve)"),
    ("shared/validation.py", "validation and money"),
    ("shared/money.py", "validation and money"),
    ("shared/preconditions.py", "validation and money"),
    ("shared/service.py", "service and domain"),
    ("shared/account.py", "service and domain"),
    ("shared/events.py", "service and domain"),
    ("shared/redis_store.py", "event store (arguments, decoding)"),
    ("shared/stream_codec.py", "event store (arguments, decoding)"),
    ("shared/redis_client.py", "event store (arguments, decoding)"),
    ("shared/keys.py", "event store (arguments, decoding)"),
    ("shared/logs.py", "logging"),
)
LIBRARIES = (
    ("redis/", "redis-py (client code, socket I/O)"),
    ("logging/", "logging"),
    ("json/", "JSON"),
    ("uuid.py", "ids and clock"),
)
CLOCK_FUNCTIONS = ("utc_now", "new_request_id", "new_id", "request_time")
TRANSPARENT = ("flask/", "werkzeug/")


def layer_of(frames: list[str]) -> str:
    """The layer of one sampled stack (root first, as py-spy writes it)."""
    framework_seen = False
    for frame in reversed(frames):
        function, _, where = frame.partition(" (")
        path = where.split(":", 1)[0]
        if function.split(".")[-1] in CLOCK_FUNCTIONS:
            return "ids and clock"
        for prefix, layer in LIBRARIES:
            if path.startswith(prefix):
                return layer
        for prefix, layer in OURS:
            if path.startswith(prefix):
                return layer
        if path.startswith(TRANSPARENT):
            framework_seen = True
        elif path.startswith("gunicorn/"):
            return "Flask and Werkzeug" if framework_seen else "gunicorn (accept, parse, write, close)"
    return "Flask and Werkzeug" if framework_seen else "other"


def shares(profiles: list[Path]) -> Counter[str]:
    counted: Counter[str] = Counter()
    for profile in profiles:
        for line in profile.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack:
                counted[layer_of(stack.split(";"))] += int(count)
    return counted


def record(pids: list[int], seconds: int) -> tuple[list[subprocess.Popen[bytes]], list[Path]]:
    """Start py-spy on each worker for ``seconds``; wait on the processes it returns."""
    local = Path(sys.executable).parent / "py-spy"
    spy = str(local) if local.exists() else shutil.which("py-spy")
    if spy is None:
        raise SystemExit("the layer profile needs py-spy (pip install py-spy; it is in the dev extra)")
    folder = Path(tempfile.mkdtemp(prefix="layers-"))
    outputs = [folder / f"{pid}.txt" for pid in pids]
    # --gil: only samples where the thread holds the GIL, i.e. runs Python; time in system calls (the GIL
    # released) is measured apart, as system CPU.
    recorders = [subprocess.Popen([spy, "record", "--gil", "-p", str(pid), "-r", "200", "-d", str(seconds), "--format",
                                   "raw", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for pid, out in zip(pids, outputs, strict=True)]
    return recorders, outputs


def table(ours: Counter[str], ours_cpu_us: float, noop: Counter[str], noop_cpu_us: float) -> list[str]:
    """Markdown rows: µs of server CPU per request, by layer, ours beside the no-op route."""
    total_ours, total_noop = sum(ours.values()) or 1, sum(noop.values()) or 1
    names = sorted(set(ours) | set(noop), key=lambda n: -ours[n])
    rows = ["| layer | deposit/withdraw, µs | no-op route, µs |", "| --- | --- | --- |"]
    for name in names:
        rows.append(f"| {name} | {ours[name] / total_ours * ours_cpu_us:.0f} | "
                    f"{noop[name] / total_noop * noop_cpu_us:.0f} |")
    rows.append(f"| **total server CPU per request** | **{ours_cpu_us:.0f}** | **{noop_cpu_us:.0f}** |")
    return rows
