"""Tracing is off unless an OTLP endpoint is configured, and off costs nothing: not even the import of the tracing
adapter or the SDK's tracer (redis-py 7 imports the SDK's metrics package by itself when it is installed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.config import ConfigError, load_settings


def test_the_endpoint_turns_tracing_on_and_must_be_an_http_url() -> None:
    assert load_settings({}).tracing is False
    assert load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}).tracing is True
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"})


def test_a_request_without_tracing_never_imports_the_tracer() -> None:
    code = ("import sys, os\n"
            "os.environ.update(AUTH_MODE='none', LOG_LEVEL='WARNING', REDIS_URL='redis://127.0.0.1:1/0',"
            " REDIS_TIMEOUT_SECONDS='0.1')\n"
            "from functions.get_account import app\n"
            "from tests.support.apigw import make_event\n"
            "app.lambda_handler(make_event('get_account', 'nobody'), None)\n"
            "print(sorted({'shared.otel_tracing', 'opentelemetry.sdk.trace'} & set(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout
