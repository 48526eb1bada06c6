"""Routes for the fleet: nodes (the Ollama servers driven) and this host's GPUs.

``GET /api/v1/nodes``, ``POST /api/v1/nodes`` (register: 201), ``DELETE
/api/v1/nodes/<name>`` (drain, then remove: 202), ``GET /api/v1/instances`` (the Model
Managers sharing this queue), ``GET /api/v1/gpu/devices``, ``GET /api/v1/gpu/driver``.
Errors leave in the one error shape, as everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flask import Flask, Response

from .api import Api


def register_node_routes(app: Flask, api: Api, body: Callable[[], Any]) -> None:
    """Add the fleet's routes to ``app``; ``body`` reads a request's JSON (or raises 400)."""

    def answer(payload: Any, status: int = 200) -> Response:
        text = json.dumps(payload, separators=(",", ":"))
        return Response(text, status=status, mimetype="application/json")

    @app.get("/api/v1/nodes")
    def list_nodes() -> Response:
        return answer(api.nodes())

    @app.post("/api/v1/nodes")
    def add_node() -> Response:
        return answer(api.add_node(body()), 201)

    @app.delete("/api/v1/nodes/<name>")
    def remove_node(name: str) -> Response:
        return answer(api.remove_node(name), 202)

    @app.get("/api/v1/instances")
    def list_instances() -> Response:
        return answer(api.instances())

    @app.get("/api/v1/gpu/devices")
    def gpu_devices() -> Response:
        return answer(api.gpu_devices())

    @app.get("/api/v1/gpu/driver")
    def gpu_driver() -> Response:
        return answer(api.gpu_driver())
