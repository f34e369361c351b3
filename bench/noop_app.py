"""A Flask app whose one route does nothing: the ceiling the gateway is compared with."""

from __future__ import annotations

from flask import Flask, Response, request


def create_app() -> Flask:
    app = Flask("noop")

    @app.post("/noop")
    def noop() -> Response:
        request.get_data()
        return Response('{"ok":true}', content_type="application/json")

    return app
