"""The HTTP gateway: a Flask app that turns each request into an API Gateway event for the same handlers
that run on Lambda. Serve it with ``gunicorn 'gateway:create_app()'``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from gateway.proxy import to_event, to_response
from gateway.routes import ROUTES, GatewayRoute
from shared import errors, runtime
from shared.api import Dependencies
from shared.http import RouteHandler, json_response, problem_response, serve


def create_app(dependencies: Callable[[], Dependencies] = runtime.dependencies,
               readiness: Callable[[], None] = runtime.check_ready) -> Flask:
    """``dependencies`` and ``readiness`` default to the process's real wiring; tests pass their own."""
    settings = runtime.settings()  # fail at start-up, not on the first request, if the config is bad
    app = Flask("ledgerstream")
    # Bounded memory per request; the handler applies the same limit to report a 413 itself.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    for route in ROUTES:
        _register(app, route, dependencies)
    app.add_url_rule("/healthz", "healthz", _healthz)
    app.add_url_rule("/readyz", "readyz", lambda: _readyz(readiness))
    app.register_error_handler(HTTPException, _http_error)
    return app


def _register(app: Flask, route: GatewayRoute, dependencies: Callable[[], Dependencies]) -> None:
    handle: RouteHandler[Dependencies] = importlib.import_module(route.module).handle

    def view(**path_parameters: str) -> Response:
        return to_response(serve(to_event(request, route, path_parameters), handle, dependencies))

    app.add_url_rule(route.flask_rule, route.function, view, methods=[route.method])


def _healthz() -> Response:
    """Liveness: the process serves HTTP. Deliberately independent of Redis."""
    return to_response(json_response(200, {"status": "ok"}))


def _readyz(readiness: Callable[[], None]) -> Response:
    """Readiness: Redis answers, so requests can succeed."""
    try:
        readiness()
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
