"""HTTP request -> API Gateway REST (v1) proxy event, and proxy response -> HTTP response.

Modelled on what ``sam local start-api`` does, so a handler cannot tell the gateway from API Gateway.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from typing import Any

from flask import Request, Response

from gateway.routes import GatewayRoute

_TRUSTED_ID = re.compile(r"[A-Za-z0-9-]{8,64}")


def new_request_id() -> str:
    return str(uuid.uuid4())


def request_id_of(request: Request, trust_header: bool) -> str:
    """The proxy's X-Request-Id when it is trusted to set one (it overwrites any a client sent), else a new id."""
    if trust_header:
        given = request.headers.get("X-Request-Id")
        if given is not None and _TRUSTED_ID.fullmatch(given):
            return given
    return new_request_id()


def to_event(request: Request, route: GatewayRoute, path_parameters: dict[str, str],
             trust_request_id: bool = False) -> dict[str, Any]:
    raw = request.get_data(cache=False)
    try:
        body: str | None = raw.decode("utf-8") if raw else None
        is_base64 = False
    except UnicodeDecodeError:
        body, is_base64 = base64.b64encode(raw).decode("ascii"), True
    multi_headers: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        multi_headers.setdefault(name, []).append(value)
    multi_query = {name: request.args.getlist(name) for name in request.args}
    now = time.time()
    return {
        "resource": route.path,
        "path": request.path,
        "httpMethod": request.method,
        "headers": {name: values[-1] for name, values in multi_headers.items()},
        "multiValueHeaders": multi_headers,
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": path_parameters or None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": route.path,
            "httpMethod": request.method,
            "path": request.path,
            "stage": "local",
            "requestId": request_id_of(request, trust_request_id),
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "requestTimeEpoch": int(now * 1000),
            "protocol": request.environ.get("SERVER_PROTOCOL", "HTTP/1.1"),
            "identity": {"sourceIp": request.remote_addr, "userAgent": request.user_agent.string},
        },
        "body": body,
        "isBase64Encoded": is_base64,
    }


def to_response(proxy: dict[str, Any]) -> Response:
    body = proxy.get("body") or ""
    data = base64.b64decode(body) if proxy.get("isBase64Encoded") else body.encode("utf-8")
    response = Response(data, status=int(proxy.get("statusCode", 200)))
    response.headers.remove("Content-Type")
    for name, value in (proxy.get("headers") or {}).items():
        response.headers[name] = str(value)
    for name, values in (proxy.get("multiValueHeaders") or {}).items():
        response.headers.remove(name)
        for value in values:
            response.headers.add(name, str(value))
    return response
