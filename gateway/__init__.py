"""The HTTP gateway: a Flask app that turns each request into an API Gateway event for the same handlers
that run on Lambda. Serve it with ``gunicorn 'gateway:create_app()'``."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from gateway.proxy import new_request_id, to_event, to_response
from gateway.routes import ROUTES, GatewayRoute
from gateway.settings import load_gateway_settings
from shared import errors, runtime
from shared.api import Dependencies
from shared.http import RouteHandler, json_response, problem_response, serve
from shared.metrics import UNMATCHED
from shared.redis_client import NodeMemory

log = logging.getLogger("ledgerstream.gateway")


def create_app(dependencies: Callable[[], Dependencies] = runtime.dependencies,
               readiness: Callable[[], None] = runtime.check_ready,
               memory: Callable[[], list[NodeMemory]] = runtime.redis_memory) -> Flask:
    """``dependencies`` and ``readiness`` default to the process's real wiring; tests pass their own."""
    settings = runtime.settings()  # fail at start-up, not on the first request, if the config is bad
    runtime.auth_settings()  # and refuse to start at all rather than serve an open API
    runtime.tracing_started()  # in the worker, after gunicorn's fork: the exporter's thread lives here
    trust_request_id = load_gateway_settings().trust_request_id
    app = Flask("ledgerstream")
    # Bounded memory per request; the handler applies the same limit to report a 413 itself.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    for route in ROUTES:
        _register(app, route, dependencies, trust_request_id, settings.max_body_bytes)
    # No automatic OPTIONS (Flask's is a text/html 200): OPTIONS is a 405 problem like any method a route lacks.
    app.add_url_rule("/healthz", "healthz", _healthz, provide_automatic_options=False)
    app.add_url_rule("/readyz", "readyz", lambda: _readyz(readiness, memory), provide_automatic_options=False)
    metrics = runtime.metrics()
    template_of = {route.flask_rule: route.path for route in ROUTES}

    def counted(response: Response) -> Response:
        """What the gateway answers itself is counted with the handlers' answers. It did no work worth timing:
        the request was refused before any handler ran."""
        rule = request.url_rule.rule if request.url_rule is not None else ""
        metrics.request(template_of.get(rule, UNMATCHED), request.method, response.status_code, 0.0)
        return response

    app.register_error_handler(HTTPException, lambda exc: counted(_http_error(exc)))
    app.register_error_handler(Exception, lambda exc: counted(_unhandled(exc)))
    return app


def _register(app: Flask, route: GatewayRoute, dependencies: Callable[[], Dependencies],
              trust_request_id: bool, body_limit: int) -> None:
    handle: RouteHandler[Dependencies] = importlib.import_module(route.module).handle

    def view(**path_parameters: str) -> Response:
        event = to_event(request, route, path_parameters, trust_request_id, body_limit)
        return to_response(serve(event, handle, dependencies))

    app.add_url_rule(route.flask_rule, route.function, view, methods=[route.method], provide_automatic_options=False)


def _healthz() -> Response:
    """Liveness: the process serves HTTP. Deliberately independent of Redis."""
    return to_response(json_response(200, {"status": "ok"}, {"X-Request-Id": new_request_id()}))


def _readyz(readiness: Callable[[], None], memory: Callable[[], list[NodeMemory]]) -> Response:
    """Readiness: Redis answers, so requests can succeed; with how full its memory is (writes fail with
    503 store-full once it is, while the process stays ready: reads still work)."""
    request_id = new_request_id()
    try:
        readiness()
        nodes = memory()
    except errors.StoreUnavailable as exc:
        return to_response(problem_response(exc, path="/readyz", request_id=request_id))
    return to_response(json_response(200, {"status": "ready", "redis_memory": [node.to_json() for node in nodes]},
                                     {"X-Request-Id": request_id}))


def _http_error(exc: HTTPException) -> Response:
    """What the framework answers itself (no route, wrong method, body too large, ...), as the same problem
    documents the handlers give, with a request id."""
    status = exc.code or 500
    error: errors.LedgerError
    if isinstance(exc, NotFound):
        error = errors.RouteNotFound(f"no route for {request.method} {request.path[:200]}")
    elif isinstance(exc, MethodNotAllowed):
        error = errors.MethodNotAllowed(f"{request.method} is not allowed on {request.path[:200]}")
    elif isinstance(exc, RequestEntityTooLarge):
        error = errors.PayloadTooLarge(f"request body exceeds {request.max_content_length} bytes")
    elif status >= 500:
        log.error("the framework answered %d: %s", status, exc.description)
        error = errors.LedgerError(exc.description or exc.name)
    else:
        error = errors.RequestError(exc.description or exc.name)
    response = to_response(problem_response(error, path=request.path[:200], request_id=new_request_id()))
    response.status_code = status
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def _unhandled(exc: Exception) -> Response:
    """A bug outside the handlers' own error handling: logged with its trace, a generic 500 to the client."""
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    log.exception("unhandled error in the gateway")
    response = to_response(problem_response(errors.LedgerError("unhandled"), path=request.path[:200],
                                            request_id=new_request_id()))
    response.status_code = 500
    return response

