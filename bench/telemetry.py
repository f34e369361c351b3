"""2d. What metrics and traces cost per request, in interpreter instructions (callgrind, as 2c counts them):
the deposit/withdrawal mix with no metrics and no traces, then as the gateway ships (Prometheus counts in
multiprocess files, as under gunicorn; traces off), then with traces on, every request sampled and one in
ten. Traces go to an OTLP/HTTP endpoint this benchmark serves itself (outside the counted process, which does
count its exporter's thread: encoding and sending spans is part of their cost)."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from tempfile import TemporaryDirectory

from bench.auth import local_issuer
from bench.common import Result, redis_server, report
from bench.instructions import MEASURED, WARM, per_request


@contextlib.contextmanager
def _otlp_sink() -> Iterator[str]:
    """An OTLP/HTTP endpoint that accepts every export and keeps nothing."""

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def telemetry_cost() -> list[Result]:
    with redis_server() as server, local_issuer() as auth, _otlp_sink() as sink, \
            TemporaryDirectory(prefix="callgrind-") as tmp, TemporaryDirectory(prefix="metrics-") as metrics_dir:
        shipped = {"METRICS_FORMAT": "PROMETHEUS", "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
        traced = {**shipped, "OTEL_EXPORTER_OTLP_ENDPOINT": sink}
        configurations = {
            "bare": {"METRICS_FORMAT": "OFF"},
            "shipped": shipped,
            "traced": traced,
            "sampled": {**traced, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
        }
        with ThreadPoolExecutor(max_workers=2) as pool:  # a count does not depend on what else runs
            counts = dict(zip(configurations, pool.map(
                lambda item: per_request(server.url, 3 + item[0], "ours", Path(tmp), auth, item[1]),
                enumerate(configurations.values())), strict=True))
    bare, shipped_count, traced_count, sampled = (counts[name] for name in configurations)
    note = f"{MEASURED:,} requests counted after {WARM:,} warm-up requests; callgrind, user space only"
    return [
        report(Result("2d. metrics as shipped (Prometheus, multiprocess), traces off",
                      f"{shipped_count:,.0f} instructions per request", f"{bare:,.0f} with metrics off",
                      shipped_count / bare, "reported", True, [note])),
        report(Result("2d. traces on, every request sampled (OTLP/HTTP export included)",
                      f"{traced_count:,.0f} instructions per request", f"{shipped_count:,.0f} with traces off",
                      traced_count / shipped_count, "reported", True, [note])),
        report(Result("2d. traces on, 1 request in 10 sampled",
                      f"{sampled:,.0f} instructions per request", f"{shipped_count:,.0f} with traces off",
                      sampled / shipped_count, "reported", True, [note])),
    ]
