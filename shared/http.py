"""API Gateway (REST, v1) proxy events in, proxy responses out, and the one error -> HTTP table.

``serve`` wraps every route: it parses the event, authenticates the caller and checks the scope the method
needs (so no route can forget either), runs the route, maps ``LedgerError`` subclasses to RFC 9457 problem
responses and turns anything unexpected into a bare 500 (logged, never shown).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, NamedTuple, Protocol, TypeVar

import orjson

from shared import errors, metrics, tracing
from shared.clock import new_id
from shared.config import ConfigError
from shared.errors import LedgerError
from shared.logs import FieldsRecord
from shared.metrics import Metrics
from shared.principal import NOBODY, SCOPE_BY_METHOD, WRITE, Authenticator, Principal, require_scope

log = logging.getLogger("ledgerstream.http")

ProxyEvent = Mapping[str, Any]
ProxyResponse = dict[str, Any]
PROBLEM_TYPE_BASE = "urn:ledgerstream:problem:"
JSON_TYPE = "application/json"
PROBLEM_JSON_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = "1"
STORE_FULL_RETRY_AFTER_SECONDS = "30"

#: The only place where errors meet HTTP statuses. Lookup walks the class's MRO, so a subclass without an
#: entry gets its parent's status.
STATUS_BY_ERROR: dict[type[LedgerError], int] = {
    errors.RequestError: 400,
    errors.AuthenticationError: 401,
    errors.InsufficientScope: 403,
    errors.AuthUnavailable: 503,
    errors.RouteNotFound: 404,
    errors.MethodNotAllowed: 405,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.IdempotencyKeyRequired: 428,
    errors.AccountNotFound: 404,
    errors.AccountAlreadyExists: 409,
    errors.DomainError: 422,
    errors.IdempotencyKeyReused: 422,
    errors.VersionConflict: 409,
    errors.PreconditionFailed: 412,
    errors.StoreUnavailable: 503,
    errors.ReadModelUnavailable: 503,
    errors.ArchiveUnavailable: 503,
    errors.ProjectionBehind: 503,
    errors.ProjectionParked: 409,
    errors.LedgerError: 500,
}


def status_of(error: LedgerError) -> int:
    for cls in type(error).__mro__:
        status = STATUS_BY_ERROR.get(cls)
        if status is not None:
            return status
    return 500


_NO_REPEATS: frozenset[str] = frozenset()


class ApiRequest(NamedTuple):
    method: str
    path: str
    headers: Mapping[str, str]  # lower-cased names
    path_parameters: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes
    request_id: str
    #: Query parameters given more than once (API Gateway keeps only the last in ``query``).
    query_repeats: frozenset[str] = frozenset()
    #: The route's template (API Gateway's ``resource``, ``/accounts/{id}``): what metrics are labelled with.
    route: str = metrics.UNMATCHED
    #: The event's ``multiValueHeaders`` as it came (every value of a header sent more than once; ``headers``
    #: keeps one): looked through only by the routes that take such a header, not on every request.
    multi_headers: Mapping[str, Any] = {}
    #: Who sent it, once ``serve`` has authenticated it (until then: nobody, with no scope).
    principal: Principal = NOBODY

    @classmethod
    def from_event(cls, event: ProxyEvent) -> ApiRequest:
        headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
        context = event.get("requestContext") or {}
        raw_body = event.get("body") or ""
        if event.get("isBase64Encoded"):
            try:
                body = base64.b64decode(raw_body, validate=True)
            except (binascii.Error, ValueError):
                body = b"\x00"  # not base64: let body parsing report it as malformed
        else:
            body = raw_body.encode("utf-8", "surrogatepass")
        multi_query = event.get("multiValueQueryStringParameters")
        return cls(
            method=str(event.get("httpMethod") or "GET").upper(),
            path=str(event.get("path") or "/"),
            headers=headers,
            path_parameters={str(k): str(v) for k, v in (event.get("pathParameters") or {}).items()},
            query={str(k): str(v) for k, v in (event.get("queryStringParameters") or {}).items()},
            body=body,
            request_id=str(context.get("requestId") or new_id()),
            query_repeats=frozenset(str(k) for k, v in multi_query.items() if isinstance(v, list) and len(v) > 1)
            if multi_query else _NO_REPEATS,
            route=str(event.get("resource") or metrics.UNMATCHED),
            multi_headers=event.get("multiValueHeaders") or {},
        )

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def header_values(self, name: str) -> tuple[str, ...]:
        """Every value of a header that may be sent more than once (none when it was not sent)."""
        lowered = name.lower()
        for key, values in self.multi_headers.items():
            if str(key).lower() == lowered and isinstance(values, list) and len(values) > 1:
                return tuple(str(v) for v in values)
        value = self.headers.get(lowered)
        return () if value is None else (value,)

    def by(self, principal: Principal) -> ApiRequest:
        """This request, sent by ``principal`` (what ``_replace`` does, without walking the fields in Python)."""
        return tuple.__new__(ApiRequest, (*self[:-1], principal))

    def json_object(self, max_bytes: int) -> dict[str, Any]:
        """The body as a JSON object, numbers as ``int``/``Decimal`` (never ``float``)."""
        if len(self.body) > max_bytes:
            raise errors.PayloadTooLarge(f"request body is {len(self.body)} bytes; the limit is {max_bytes}")
        content_type = (self.header("content-type") or JSON_TYPE).split(";")[0].strip().lower()
        if content_type != JSON_TYPE and not (content_type.startswith("application/")
                                              and content_type.endswith("+json")):
            raise errors.UnsupportedMediaType(f"send the body as {JSON_TYPE}, not {content_type[:80]!r}")
        if not self.body.strip():
            raise errors.MalformedJson("request body is empty; expected a JSON object")
        if self.body.startswith(_UTF8_BOM):
            raise errors.MalformedJson("request body starts with a byte order mark; send plain UTF-8 (RFC 8259 8.1)")
        try:
            parsed = _DECODER.decode(self.body.decode("utf-8"))
        except _DuplicateKey as exc:
            raise errors.DuplicateKey(f"the key {exc.args[0][:80]!r} appears more than once in one object; "
                                      "send each key once (RFC 8259 4)") from None
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise errors.MalformedJson(f"request body is not valid JSON: {_short(exc)}") from None
        if not isinstance(parsed, dict):
            raise errors.InvalidBody(f"request body must be a JSON object, not {_json_kind(parsed)}")
        if b"\\u" in self.body:  # strict UTF-8 decoding refused encoded surrogates: only an escape makes one
            _refuse_lone_surrogates(parsed)
        return parsed


_UTF8_BOM = b"\xef\xbb\xbf"


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuse an object that names a key twice: readers disagree on which one wins (the last, here; the
    first, for some proxies), and a body must mean one thing to everyone who reads it."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _refuse_lone_surrogates(value: object) -> None:
    """A string escape like "\\ud800" with no partner is not Unicode text (RFC 8259 8.2)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise errors.MalformedJson("request body holds a \\u escape that is not a whole Unicode "
                                       "character (an unpaired surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_lone_surrogates(key)
            _refuse_lone_surrogates(item)
    elif isinstance(value, list):
        for item in value:
            _refuse_lone_surrogates(item)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


#: One decoder for every body (json.loads with options would build a new one per call).
_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120]


def _json_kind(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def json_response(status: int, body: object, headers: Mapping[str, str] | None = None) -> ProxyResponse:
    return {
        "statusCode": status,
        "headers": {"Content-Type": JSON_TYPE, **(headers or {})},
        "body": orjson.dumps(body).decode(),
        "isBase64Encoded": False,
    }


#: What a client is told about a failure of ours: nothing internal, ever (the details go to the log).
_INTERNAL = errors.LedgerError("the server failed to handle this request; it has been logged")


def problem_response(error: LedgerError, request: ApiRequest | None = None, path: str | None = None,
                     request_id: str | None = None) -> ProxyResponse:
    """An RFC 9457 problem for ``error``. A 5xx other than 503 is always the generic ``internal-error``."""
    status = status_of(error)
    shown = error if status < 500 or status == 503 else _INTERNAL
    body: dict[str, object] = {
        "type": PROBLEM_TYPE_BASE + shown.code,
        "title": shown.title,
        "status": status,
        "detail": shown.detail,
        "code": shown.code,
    }
    instance = request.path if request is not None else path
    request_id = request.request_id if request is not None else request_id
    if instance is not None:
        body["instance"] = instance
    if request_id is not None:
        body["request_id"] = request_id
    headers = {"Content-Type": PROBLEM_JSON_TYPE}
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    if status == 503:
        # A full store frees no memory in a second: ask for a longer pause than for an outage.
        headers["Retry-After"] = _retry_after(error)
    challenge = _challenge(error)
    if challenge is not None:
        headers["WWW-Authenticate"] = challenge
    return {"statusCode": status, "headers": headers, "body": orjson.dumps(body).decode(),
            "isBase64Encoded": False}


def _retry_after(error: LedgerError) -> str:
    if isinstance(error, errors.ProjectionBehind):  # as long as the projection was behind: it tells best
        return str(error.retry_after)
    # A full store frees no memory in a second: ask for a longer pause than for an outage.
    return STORE_FULL_RETRY_AFTER_SECONDS if isinstance(error, errors.StoreFull) else RETRY_AFTER_SECONDS


def _challenge(error: LedgerError) -> str | None:
    """RFC 6750's ``WWW-Authenticate`` for an answer about the bearer token: a bare challenge when none was
    sent, ``invalid_token`` when it was refused, ``insufficient_scope`` (with the scope) when it lacks one."""
    if isinstance(error, errors.InvalidToken):
        return 'Bearer error="invalid_token"'
    if isinstance(error, errors.AuthenticationError):
        return "Bearer"
    if isinstance(error, errors.InsufficientScope):
        return f'Bearer error="insufficient_scope", scope="{error.scope}"'
    return None


class Authenticating(Protocol):
    """What ``serve`` needs of a route's dependencies: who to ask about a request's caller, and what counts
    the answers."""

    @property
    def authenticator(self) -> Authenticator: ...

    @property
    def metrics(self) -> Metrics: ...


Deps = TypeVar("Deps", bound=Authenticating)
RouteHandler = Callable[[ApiRequest, Deps], ProxyResponse]


def serve(event: ProxyEvent, route: RouteHandler[Deps], dependencies: Callable[[], Deps]) -> ProxyResponse:
    """Run one route for one API Gateway event. Never raises; never leaks a stack trace.

    The caller is authenticated, and the scope the method needs checked, before the route runs: a route
    receives its request with ``principal`` set, and never runs for a caller without a valid token.

    ``dependencies`` is called inside the error handling, so wiring that fails (Redis unreachable while the
    client is built) is answered like any other failure, with a problem response.
    """
    started = time.perf_counter()
    request: ApiRequest | None = None
    deps: Deps | None = None
    try:
        request = ApiRequest.from_event(event)
        deps = dependencies()
    except Exception as exc:
        response, code = _failure(exc, request)
    else:
        if tracing.SWITCH.on:
            response, code, request = _traced(request, deps, route)
        else:
            response, code, request = _run(request, deps, route)
    if request is not None:
        response["headers"].setdefault("X-Request-Id", request.request_id)
        if deps is not None:  # else the process is not configured, and says so in its log
            deps.metrics.request(request.route, request.method, response["statusCode"],
                                 time.perf_counter() - started)
    if log.isEnabledFor(logging.INFO):
        _log_request(request, response, code, started)
    return response


def _run(request: ApiRequest, deps: Deps, route: RouteHandler[Deps]) -> tuple[ProxyResponse, str, ApiRequest]:
    """Authenticate, check the scope, run the route: its answer, its problem code, and the request as sent by
    whoever it was (for the log line)."""
    try:
        principal = deps.authenticator.authenticate(request.headers.get("authorization"))
        request = request.by(principal)
        require_scope(principal, SCOPE_BY_METHOD.get(request.method, WRITE))
        return route(request, deps), "ok", request
    except Exception as exc:
        return (*_failure(exc, request), request)


def _traced(request: ApiRequest, deps: Deps, route: RouteHandler[Deps]) -> tuple[ProxyResponse, str, ApiRequest]:
    from shared.otel_tracing import answered, request_span

    with request_span(request.method, request.route, request.headers) as span:
        response, code, request = _run(request, deps, route)
        answered(span, response["statusCode"], code)
    return response, code, request


def _failure(exc: Exception, request: ApiRequest | None) -> tuple[ProxyResponse, str]:
    """The answer to a request that failed with ``exc``, and its problem code: a problem document, logged as
    its status deserves."""
    if isinstance(exc, LedgerError):
        status = status_of(exc)
        if status == 503:
            # An outage is expected and repeats: one compact line with its cause, not a trace per request.
            cause = exc.__cause__
            log.warning("request failed: %s", exc.detail, extra={"fields": {
                "request_id": request.request_id if request else None, "code": exc.code,
                "cause": None if cause is None else f"{type(cause).__name__}: {cause}"[:300]}})
        elif status >= 500:
            log.error("request failed: %s: %s", exc.code, exc.detail, exc_info=exc.__cause__ is not None)
        return problem_response(exc, request), exc.code
    if isinstance(exc, ConfigError):  # a process that should not have started: say why, once per request
        log.error("the service is not configured: %s", exc)
        return problem_response(errors.LedgerError("not configured"), request), "internal-error"
    log.error("unhandled error", exc_info=exc)
    return problem_response(errors.LedgerError("unhandled error"), request), "internal-error"


def _log_request(request: ApiRequest | None, response: ProxyResponse, code: str, started: float) -> None:
    log.handle(FieldsRecord(log.name, logging.INFO, "request", {
        "request_id": request.request_id if request else None,
        "method": request.method if request else None,
        "path": request.path if request else None,
        "account_id": request.path_parameters.get("id") if request else None,
        # The caller's subject only: never the token, never its other claims.
        "subject": request.principal.subject or None if request else None,
        "status": response["statusCode"],
        "code": code,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
    }))
