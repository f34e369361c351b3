"""A WSGI environ as gunicorn hands one to the app, for calling the gateway (or any WSGI app) in process."""

from __future__ import annotations

import io
import sys
from typing import Any


def post_environ(path: str, body: bytes, **extra: str) -> dict[str, Any]:
    """A JSON POST of ``body`` to ``path``; ``extra`` adds or replaces environ keys (``HTTP_*`` headers...)."""
    return {"REQUEST_METHOD": "POST", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)), "HTTP_HOST": "127.0.0.1:8000",
            "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
            "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0),
            **extra}
