"""HTTP request -> API Gateway REST (v1) proxy event, and proxy response -> HTTP response.

Modelled on what ``sam local start-api`` does, so a handler cannot tell the gateway from API Gateway. The
event is built straight from the WSGI environ (headers, query string, client address): asking Werkzeug for
each of them built objects a request never used, a measurable share of its cost.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from flask import Request, Response
from werkzeug.exceptions import RequestEntityTooLarge

from gateway.routes import GatewayRoute
from shared.clock import new_id, request_time

_TRUSTED_ID = re.compile(r"[A-Za-z0-9-]{8,64}")


def new_request_id() -> str:
    return new_id()


#: Header names already converted. Bounded: names come from clients, and an unbounded cache would let one
#: send a new name per request until the worker runs out of memory.
_HEADER_NAMES: dict[str, str] = {}
_HEADER_NAMES_MAX = 512


def _headers(environ: Mapping[str, Any]) -> dict[str, str]:
    headers = {}
    for key, value in environ.items():
        if key[:5] == "HTTP_":
            name = _HEADER_NAMES.get(key)
            if name is None:
                # HTTP_IDEMPOTENCY_KEY -> Idempotency-Key (WSGI already joined repeated headers with commas).
                name = key[5:].replace("_", "-").title()
                if len(_HEADER_NAMES) < _HEADER_NAMES_MAX:
                    _HEADER_NAMES[key] = name
            headers[name] = value
    if environ.get("CONTENT_TYPE"):
        headers["Content-Type"] = environ["CONTENT_TYPE"]
    if environ.get("CONTENT_LENGTH"):
        headers["Content-Length"] = environ["CONTENT_LENGTH"]
    return headers


def request_id_of(headers: Mapping[str, str], trust_header: bool) -> str:
    """The proxy's X-Request-Id when it is trusted to set one (it overwrites any a client sent), else a new id."""
    if trust_header:
        given = headers.get("X-Request-Id")
        if given is not None and _TRUSTED_ID.fullmatch(given):
            return given
    return new_request_id()


def _body(environ: Mapping[str, Any], limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (one more is read to tell a body that is too long)."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    length = environ.get("CONTENT_LENGTH")
    if length and length.isdigit() and int(length) > limit:
        raise RequestEntityTooLarge()
    raw: bytes = stream.read(int(length) if length and length.isdigit() else limit + 1)
    if len(raw) > limit:
        raise RequestEntityTooLarge()
    return raw


def _path(environ: Mapping[str, Any]) -> str:
    # WSGI hands the path over as latin-1 text of the raw bytes; URLs are UTF-8 (what Werkzeug also does).
    return str(environ.get("PATH_INFO") or "/").encode("latin-1").decode("utf-8", "replace")


def to_event(request: Request, route: GatewayRoute, path_parameters: dict[str, str],
             trust_request_id: bool = False, body_limit: int = 16_384) -> dict[str, Any]:
    environ = request.environ
    raw = _body(environ, body_limit)
    try:
        body: str | None = raw.decode("utf-8") if raw else None
        is_base64 = False
    except UnicodeDecodeError:
        body, is_base64 = base64.b64encode(raw).decode("ascii"), True
    headers = _headers(environ)
    query_string = environ.get("QUERY_STRING")
    multi_query = parse_qs(query_string, keep_blank_values=True) if query_string else None
    method, path, now = environ["REQUEST_METHOD"], _path(environ), time.time()
    return {
        "resource": route.path,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} if multi_query else None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": path_parameters or None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": route.path,
            "httpMethod": method,
            "path": path,
            "stage": "local",
            "requestId": request_id_of(headers, trust_request_id),
            "requestTime": request_time(now),
            "requestTimeEpoch": int(now * 1000),
            "protocol": environ.get("SERVER_PROTOCOL", "HTTP/1.1"),
            "identity": {"sourceIp": environ.get("REMOTE_ADDR"), "userAgent": headers.get("User-Agent")},
        },
        "body": body,
        "isBase64Encoded": is_base64,
    }


def to_response(proxy: dict[str, Any]) -> Response:
    body = proxy.get("body") or ""
    data = base64.b64decode(body) if proxy.get("isBase64Encoded") else body.encode("utf-8")
    headers: list[tuple[str, str]] = [(name, str(value)) for name, value in (proxy.get("headers") or {}).items()]
    for name, values in (proxy.get("multiValueHeaders") or {}).items():
        headers = [(n, v) for n, v in headers if n.lower() != name.lower()]
        headers += [(name, str(value)) for value in values]
    return Response(data, status=int(proxy.get("statusCode", 200)), headers=headers)
