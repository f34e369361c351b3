# syntax=docker/dockerfile:1
# The HTTP gateway image: gunicorn + Flask serving the same handlers as Lambda.
# Build from the repository root: docker build -t ledgerstream-gateway .
FROM python:3.12-slim AS build
WORKDIR /src
RUN python -m venv /venv
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY functions ./functions
COPY gateway ./gateway
COPY projector ./projector
COPY devstack ./devstack
RUN /venv/bin/pip install --no-cache-dir ".[gateway]"

FROM python:3.12-slim
# The mount point of a local archive (ARCHIVE_URL=file://...), owned by the service's user: a new named
# volume mounted there takes this ownership.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway \
    && mkdir -p /var/lib/ledgerstream/archive && chown 10001 /var/lib/ledgerstream/archive
COPY --from=build /venv /venv
COPY gateway/gunicorn.conf.py /etc/ledgerstream/gunicorn.conf.py
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GUNICORN_BIND=0.0.0.0:8080 \
    GATEWAY_HEALTH_BIND=0.0.0.0:8082
USER 10001
# 8080: gunicorn, meant to sit behind the proxy (deploy/nginx); 8082: the probes, answered while workers are busy.
EXPOSE 8080 8082
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8082/healthz', timeout=2)"]
CMD ["gunicorn", "--config", "/etc/ledgerstream/gunicorn.conf.py", "gateway:create_app()"]
