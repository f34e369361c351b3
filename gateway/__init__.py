"""The HTTP gateway: a Flask app that turns each request into an API Gateway event for the same handlers
that run on Lambda. Serve it with ``gunicorn 'gateway:create_app()'``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from gateway.proxy import to_event, to_response
from gateway.routes import ROUTES, Route
from shared import errors, runtime
from shared.event_store import translate_unavailable
from shared.http import json_response, problem_response

Handler = Callable[[dict[str, Any], object], dict[str, Any]]


def create_app() -> Flask:
    settings = runtime.settings()  # fail at start-up, not on the first request, if the config is bad
    app = Flask("ledgerstream")
    # Bounded memory per request; the handler applies the same limit to report a 413 itself.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    for route in ROUTES:
        _register(app, route)
    app.add_url_rule("/healthz", "healthz", _healthz)
    app.add_url_rule("/readyz", "readyz", _readyz)
    app.register_error_handler(HTTPException, _http_error)
    return app


def _register(app: Flask, route: Route) -> None:
    handler: Handler = importlib.import_module(route.module).lambda_handler

    def view(**path_parameters: str) -> Response:
        return to_response(handler(to_event(request, route, path_parameters), None))

    app.add_url_rule(route.flask_rule, route.function, view, methods=[route.method])


def _healthz() -> Response:
    """Liveness: the process serves HTTP. Deliberately independent of Redis."""
    return to_response(json_response(200, {"status": "ok"}))


def _readyz() -> Response:
    """Readiness: Redis answers, so requests can succeed."""
    try:
        with translate_unavailable():
            runtime.redis_client().ping()
    except errors.StoreUnavailable as exc:
        return to_response(problem_response(exc))
    return to_response(json_response(200, {"status": "ready"}))


def _http_error(exc: HTTPException) -> Response:
    error: errors.LedgerError
    if isinstance(exc, NotFound):
        error = errors.RouteNotFound(f"no route for {request.method} {request.path[:200]}")
    elif isinstance(exc, MethodNotAllowed):
        error = errors.MethodNotAllowed(f"{request.method} is not allowed on {request.path[:200]}")
    elif isinstance(exc, RequestEntityTooLarge):
        error = errors.PayloadTooLarge(f"request body exceeds {request.max_content_length} bytes")
    else:
        error = errors.RequestError(exc.description or exc.name)
    response = to_response(problem_response(error))
    response.status_code = exc.code or 400
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response
