"""Routes for the models on the nodes' disks (:mod:`modelmanager.model_disk`).

``POST /api/v1/models/status``, ``POST /api/v1/models/download`` (202),
``DELETE /api/v1/models``, ``GET /api/v1/models/list`` and ``GET /api/v1/models/space``
(both with an optional ``?node=``). Errors leave in the one error shape, as everywhere.
(``GET /api/models``, the scheduler's catalog of sizes and residency, is another route.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request

from .api import Api


def register_model_routes(app: Flask, api: Api, body: Callable[[], Any]) -> None:
    """Add the model-disk routes to ``app``; ``body`` reads a request's JSON (or raises
    400)."""

    def answer(payload: Any, status: int = 200) -> Response:
        text = json.dumps(payload, separators=(",", ":"))
        return Response(text, status=status, mimetype="application/json")

    @app.post("/api/v1/models/status")
    def model_status() -> Response:
        return answer(api.model_status(body()))

    @app.post("/api/v1/models/download")
    def model_download() -> Response:
        return answer(api.model_download(body()), 202)

    @app.delete("/api/v1/models")
    def model_delete() -> Response:
        return answer(api.model_delete(body()))

    @app.get("/api/v1/models/list")
    def model_list() -> Response:
        return answer(api.model_list(request.args.to_dict(flat=False)))

    @app.get("/api/v1/models/space")
    def model_space() -> Response:
        return answer(api.model_space(request.args.to_dict(flat=False)))
