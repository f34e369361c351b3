"""gunicorn's own log lines as the same JSON lines the service writes (``logger_class`` in gunicorn.conf.py).

gunicorn formats its lines as plain text by default, echoing, among others, a malformed request line as the
client sent it. Every line of the gateway is one JSON object, so a log pipeline parses them all the same way
and nothing a client sends can break a line. Only the formatter changes: the access log stays off (the
service logs one line per request), so no request pays for gunicorn's access line.
"""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

from shared.logs import JsonFormatter


class JsonLogger(Logger):  # type: ignore[misc]
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        formatter = JsonFormatter()
        for handler in [*self.error_log.handlers, *self.access_log.handlers]:
            handler.setFormatter(formatter)
