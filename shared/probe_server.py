"""The probe endpoints of both containers (the gateway's health process and the projector), served the same
way: a small threaded HTTP server, in a thread, answering GETs with whatever ``answer`` says for the path
(status, headers, body). Probes are not logged: they would flood the log."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: What a probe answers: status, headers, body.
ProbeAnswer = tuple[int, Mapping[str, str], bytes]


def serve(bind: str, port: int, answer: Callable[[str], ProbeAnswer]) -> ThreadingHTTPServer:
    """Start answering probes on ``bind``:``port`` in a daemon thread; ``shutdown()`` the result to stop."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, headers, body = answer(self.path.split("?")[0])
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    return server
