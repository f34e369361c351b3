"""What the projector reports about itself, and the HTTP endpoints that serve it.

* ``/healthz`` (liveness): 503 once the loop has not turned, or has not made progress, for
  ``PROJECTOR_STALL_SECONDS`` while it has work. Progress means entries settled (applied, skipped or
  parked), or nothing to do. Backing off during an outage counts as progress: restarting would not help.
* ``/readyz``: 503 while Redis or MongoDB is out of reach, or while a partition's read model is known to
  disagree with its log (a repair or re-projection is under way).
* ``/metrics``: Prometheus text (``projector/metrics.py``).

Both answer JSON with the details, so a human can read the same thing the platform acts on.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import partial
from http.server import ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shared import probe_server
from shared.probe_server import ProbeAnswer


@dataclass(slots=True)
class Health:
    """Updated by the loop, read by the health server's thread (single values: no lock needed)."""

    stall_s: float = 60.0
    started: float = field(default_factory=time.monotonic)
    last_beat: float = field(default_factory=time.monotonic)
    last_progress: float = field(default_factory=time.monotonic)
    has_work: bool = False
    redis_up: bool = True
    mongo_up: bool = True
    owned: tuple[int, ...] = ()
    #: partition -> why its read model is known to disagree with its log right now
    diverged: dict[int, str] = field(default_factory=dict)
    batches: int = 0
    events_applied: int = 0
    #: Documents rewritten from history because the read model had them wrong (``BatchReport.repaired``).
    repairs: int = 0
    #: Entries applied again by a re-projection (after a wiped or restored read model).
    reprojected: int = 0
    #: Partitions taken from a replica that had not handed them back (killed, or cut off).
    takeovers: int = 0
    #: Partition-log entries this replica trimmed, behind every group's checkpoint.
    trimmed: int = 0
    #: Events this replica moved to the archive, and the accounts it could not archive (refused or failed).
    archived: int = 0
    archive_refused: int = 0
    archive_failures: int = 0

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def progressed(self) -> None:
        self.last_progress = time.monotonic()

    def taken_over(self, partition: int) -> None:
        self.takeovers += 1

    def live(self) -> tuple[bool, dict[str, object]]:
        now = time.monotonic()
        silent, stuck = now - self.last_beat, now - self.last_progress
        ok = silent < self.stall_s and not (self.has_work and stuck >= self.stall_s)
        return ok, {"status": "ok" if ok else "stalled", "seconds_since_beat": round(silent, 3),
                    "seconds_since_progress": round(stuck, 3), "has_work": self.has_work,
                    "owned_partitions": list(self.owned), "batches": self.batches,
                    "events_applied": self.events_applied}

    def ready(self) -> tuple[bool, dict[str, object]]:
        ok = self.redis_up and self.mongo_up and not self.diverged
        return ok, {"status": "ready" if ok else "not ready", "redis_up": self.redis_up, "mongo_up": self.mongo_up,
                    "diverged": {str(p): why for p, why in sorted(self.diverged.items())},
                    "owned_partitions": list(self.owned)}


def answer(health: Health, path: str, metrics: CollectorRegistry | None = None) -> ProbeAnswer:
    if path == "/metrics" and metrics is not None:
        return 200, {"Content-Type": CONTENT_TYPE_LATEST}, generate_latest(metrics)
    if path == "/healthz":
        ok, body = health.live()
    elif path == "/readyz":
        ok, body = health.ready()
    else:
        return 404, _JSON, json.dumps({"status": "not found", "paths": ["/healthz", "/readyz", "/metrics"]}).encode()
    return 200 if ok else 503, _JSON, json.dumps(body).encode()


_JSON = {"Content-Type": "application/json"}


def serve(health: Health, bind: str, port: int, metrics: CollectorRegistry | None = None) -> ThreadingHTTPServer:
    return probe_server.serve(bind, port, partial(answer, health, metrics=metrics))
