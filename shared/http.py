"""API Gateway (REST, v1) proxy events in, proxy responses out, and the one error -> HTTP table.

``serve`` wraps every route: it parses the event, runs the route, maps ``LedgerError`` subclasses to
RFC 9457 problem responses and turns anything unexpected into a bare 500 (logged, never shown).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from shared import errors
from shared.errors import LedgerError

log = logging.getLogger("ledgerstream.http")

ProxyEvent = Mapping[str, Any]
ProxyResponse = dict[str, Any]
PROBLEM_TYPE_BASE = "urn:ledgerstream:problem:"
JSON_TYPE = "application/json"
PROBLEM_JSON_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = "1"

#: The only place where errors meet HTTP statuses. Lookup walks the class's MRO, so a subclass without an
#: entry gets its parent's status.
STATUS_BY_ERROR: dict[type[LedgerError], int] = {
    errors.RequestError: 400,
    errors.RouteNotFound: 404,
    errors.MethodNotAllowed: 405,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.AccountNotFound: 404,
    errors.AccountAlreadyExists: 409,
    errors.DomainError: 422,
    errors.IdempotencyKeyReused: 422,
    errors.VersionConflict: 409,
    errors.PreconditionFailed: 412,
    errors.StoreUnavailable: 503,
    errors.LedgerError: 500,
}


def status_of(error: LedgerError) -> int:
    for cls in type(error).__mro__:
        status = STATUS_BY_ERROR.get(cls)
        if status is not None:
            return status
    return 500


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    headers: Mapping[str, str]  # lower-cased names
    path_parameters: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes
    request_id: str

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
        return cls(
            method=str(event.get("httpMethod") or "GET").upper(),
            path=str(event.get("path") or "/"),
            headers=headers,
            path_parameters={str(k): str(v) for k, v in (event.get("pathParameters") or {}).items()},
            query={str(k): str(v) for k, v in (event.get("queryStringParameters") or {}).items()},
            body=body,
            request_id=str(context.get("requestId") or uuid.uuid4()),
        )

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

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
        try:
            parsed = json.loads(self.body, parse_float=Decimal, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise errors.MalformedJson(f"request body is not valid JSON: {_short(exc)}") from None
        if not isinstance(parsed, dict):
            raise errors.InvalidBody(f"request body must be a JSON object, not {_json_kind(parsed)}")
        return parsed


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120]


def _json_kind(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def json_response(status: int, body: object, headers: Mapping[str, str] | None = None) -> ProxyResponse:
    return {
        "statusCode": status,
        "headers": {"Content-Type": JSON_TYPE, **(headers or {})},
        "body": json.dumps(body, separators=(",", ":")),
        "isBase64Encoded": False,
    }


def problem_response(error: LedgerError, request: ApiRequest | None = None) -> ProxyResponse:
    status = status_of(error)
    body: dict[str, object] = {
        "type": PROBLEM_TYPE_BASE + error.code,
        "title": error.title,
        "status": status,
        "detail": error.detail,
        "code": error.code,
    }
    if request is not None:
        body["instance"] = request.path
        body["request_id"] = request.request_id
    headers = {"Content-Type": PROBLEM_JSON_TYPE}
    if status == 503:
        headers["Retry-After"] = RETRY_AFTER_SECONDS
    return {"statusCode": status, "headers": headers, "body": json.dumps(body, separators=(",", ":")),
            "isBase64Encoded": False}


Deps = TypeVar("Deps")
RouteHandler = Callable[[ApiRequest, Deps], ProxyResponse]


def serve(event: ProxyEvent, route: RouteHandler[Deps], dependencies: Callable[[], Deps]) -> ProxyResponse:
    """Run one route for one API Gateway event. Never raises; never leaks a stack trace.

    ``dependencies`` is called inside the error handling, so wiring that fails (Redis unreachable while the
    client is built) is answered like any other failure, with a problem response.
    """
    started = time.perf_counter()
    request: ApiRequest | None = None
    code = "ok"
    try:
        request = ApiRequest.from_event(event)
        response = route(request, dependencies())
    except LedgerError as exc:
        code = exc.code
        response = problem_response(exc, request)
        if status_of(exc) >= 500:
            # An outage is expected and repeats: one compact line with its cause, not a trace per request.
            cause = exc.__cause__
            log.warning("request failed: %s", exc.detail, extra={"fields": {
                "cause": None if cause is None else f"{type(cause).__name__}: {cause}"[:300]}})
    except Exception:
        code = "internal-error"
        log.exception("unhandled error")
        response = problem_response(errors.LedgerError("the server failed to handle this request"), request)
    if request is not None:
        response["headers"].setdefault("X-Request-Id", request.request_id)
    if log.isEnabledFor(logging.INFO):
        _log_request(request, response, code, started)
    return response


def _log_request(request: ApiRequest | None, response: ProxyResponse, code: str, started: float) -> None:
    log.info("request", extra={"fields": {
        "request_id": request.request_id if request else None,
        "method": request.method if request else None,
        "path": request.path if request else None,
        "account_id": request.path_parameters.get("id") if request else None,
        "status": response["statusCode"],
        "code": code,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
    }})
