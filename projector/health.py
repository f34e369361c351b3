"""``GET /healthz`` for container platforms: 200 while the loop is turning, 503 once it has stalled."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from projector.worker import Health


def serve(health: Health, port: int, stall_after_s: float) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/healthz":
                self._reply(404, {"status": "not found"})
                return
            silent = time.monotonic() - health.last_beat
            body: dict[str, object] = {"status": "ok" if silent < stall_after_s else "stalled",
                    "seconds_since_beat": round(silent, 3), "redis_up": health.redis_up,
                    "mongo_up": health.mongo_up, "batches": health.batches,
                    "events_applied": health.events_applied}
            self._reply(200 if silent < stall_after_s else 503, body)

        def _reply(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # health probes would flood the log
            return

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # probes come from outside the container
    threading.Thread(target=server.serve_forever, name="healthz", daemon=True).start()
    return server
