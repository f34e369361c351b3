"""gunicorn settings for the gateway, from the environment (GUNICORN_BIND, WEB_CONCURRENCY, ...).

gunicorn reads this file itself; it is configuration, not application code, so it reads os.environ directly.
"""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "10"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
# The application logs one JSON line per request; gunicorn's own access log would double it.
accesslog = None
errorlog = "-"
control_socket_disable = True
