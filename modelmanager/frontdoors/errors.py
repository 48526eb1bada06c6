"""Errors on the front doors' paths in that API's own shape, whichever layer answers them.

Most errors of a front door come from its own routes (:mod:`.ollama`, :mod:`.openai`).
Some come from layers in front of them, which know only the request's method and path:
waitress refusing an oversized body (``server.py``), Flask's routing (an unknown path, a
wrong method), Flask's ``MAX_CONTENT_LENGTH``, the API key check. For a path of a front
door those answer here, in the door's shape; every other path keeps the job API's
``{"error": {"code", "message", "details"}}``.

* **Ollama's API** (the paths the door serves, and the other paths of Ollama's own API,
  ``server/routes.go`` ``GenerateRoutes``): ``{"error": "<text>"}``. Where Ollama's router
  (Gin, with ``HandleMethodNotAllowed = true``) answers by itself, the answer is Gin's:
  ``405 method not allowed`` as ``text/plain`` for a wrong method (with ``Allow``). A path
  of Ollama's API that the door does not serve (``/api/blobs/...``, ``/api/status``, ...)
  is a 404 ``{"error": "..."}`` saying so. Ollama has no body limit and no API keys: a 413
  or 401 is ``{"error": "<text>"}``. Other paths under ``/api/`` are the job API's.
* **The OpenAI-compatible API** (every path under ``/v1/``): ``{"error": {"message",
  "type", "param", "code"}}``, types as Ollama's compatibility layer writes them
  (``openai/openai.go`` ``NewError``: 400 ``invalid_request_error``, 404
  ``not_found_error``, else ``api_error``), and as OpenAI's API answers what Ollama's layer
  never sees: 401 ``invalid_request_error`` with code ``invalid_api_key``; 405 and 413
  ``invalid_request_error``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from ..errors import ApiError
from ..logger import get_logger

log = get_logger("API")

TEXT = "text/plain; charset=utf-8"
JSON = "application/json; charset=utf-8"

# Paths of Ollama's own API that the door does not serve (routes.go GenerateRoutes)
OLLAMA_UNSERVED = frozenset({"/api/status", "/api/me", "/api/signout"})
OLLAMA_UNSERVED_PREFIXES = ("/api/blobs/", "/api/experimental/", "/api/user/")
OPENAI_PREFIX = "/v1/"
OPENAI_SERVED = "/v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models"

# (status, body, content type, headers) of an answer, for Flask and for waitress alike
Answer = tuple[int, bytes, str, dict[str, str]]


@cache
def ollama_served() -> frozenset[str]:
    """The paths the Ollama door routes (read from :mod:`.ollama`, which imports this
    module)."""
    from .ollama import INFERENCE, MANAGEMENT, PASSTHROUGH

    return frozenset({*INFERENCE, *MANAGEMENT, *PASSTHROUGH, "/api/show"})


def door_of(path: str) -> str | None:
    """``"ollama"``, ``"openai"``, or None (the job API's path, or nobody's) for ``path``
    (the request's path, without its query)."""
    if path.startswith(OPENAI_PREFIX):
        return "openai"
    if (
        path in ollama_served()
        or path in OLLAMA_UNSERVED
        or path.startswith(OLLAMA_UNSERVED_PREFIXES)
    ):
        return "ollama"
    return None


def door_error(
    method: str,
    path: str,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
) -> Answer | None:
    """The answer to an error of ``status`` on ``method path`` in its door's shape, None
    when the path belongs to no door. ``message`` is the job API's sentence for it;
    ``headers`` (``Allow``, ``WWW-Authenticate``, ``Retry-After``) are kept."""
    door = door_of(path)
    extra = dict(headers or {})
    if door == "ollama":
        return _ollama(method, path, status, message, extra)
    if door == "openai":
        return _openai(method, path, status, message, extra)
    return None


def _ollama(method: str, path: str, status: int, message: str, headers: dict[str, str]) -> Answer:
    if status == 405:  # Gin's own answer (gin.go default405Body)
        return 405, b"405 method not allowed", TEXT, headers
    if status == 404 and path not in ollama_served():  # a path of Ollama's the door lacks
        text = (
            f"Model Manager does not serve {method} {path} of Ollama's API: use Ollama "
            "itself (the ollama CLI on the Ollama host, or Ollama's own port)"
        )
        return 404, _dump({"error": text}), JSON, headers
    return status, _dump({"error": message}), JSON, headers


def openai_error_body(status: int, message: str) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` for ``status``."""
    kind = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        404: "not_found_error",
        405: "invalid_request_error",
        413: "invalid_request_error",
    }.get(status, "api_error")
    code = "invalid_api_key" if status == 401 else None
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _openai(method: str, path: str, status: int, message: str, headers: dict[str, str]) -> Answer:
    if status == 404:
        message = (
            f"Invalid URL ({method} {path}): Model Manager's OpenAI-compatible API serves "
            f"{OPENAI_SERVED}"
        )
    elif status == 405:
        allowed = headers.get("Allow", "")
        message = f"Method {method} is not allowed on {path}" + (
            f" (allowed: {allowed})" if allowed else ""
        )
    return status, _dump(openai_error_body(status, message)), JSON, headers


def _dump(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def as_response(answer: Answer) -> Response:
    status, body, content_type, headers = answer
    return Response(body, status=status, headers=headers, content_type=content_type)


def http_error(exc: HTTPException, message: str | None = None) -> Response:
    """A werkzeug error (routing's 404 and 405, ``MAX_CONTENT_LENGTH``'s 413, ...) on a
    front door's path, in the door's shape (the job API's sentence for it, ``message``,
    else werkzeug's description). Needs the Flask request context."""
    status = exc.code or 500
    headers: dict[str, str] = {}
    allowed = getattr(exc, "valid_methods", None)
    if status == 405 and allowed:
        headers["Allow"] = ", ".join(sorted(allowed))  # RFC 9110 15.5.6
    if message is None and status == 413:
        from ..http_api import payload_too_large  # (it imports this package)

        message = payload_too_large().message
    text = message or exc.description or "bad request"
    answer = door_error(request.method, request.path, status, text, headers)
    if answer is None:  # (a door's blueprint answers only on its own paths)
        answer = status, _dump({"error": text}), JSON, headers
    return as_response(answer)


def handle_errors(
    bp: Blueprint,
    on_api_error: Callable[[ApiError], Response],
    error: Callable[[int, str], Response],
) -> None:
    """The error handlers a door's blueprint shares: ``on_api_error`` for the manager's own
    errors, ``error(status, message)`` (the door's shape) for a failed job and anything
    unexpected, :func:`http_error` for routing's (404, 405, 413)."""
    from .relay import JobFailed  # (relay imports nothing of this module's)

    def on_failed(exc: JobFailed) -> Response:
        return error(exc.status, exc.message)

    def on_unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error(500, "internal error; see the service log")

    bp.register_error_handler(ApiError, on_api_error)
    bp.register_error_handler(JobFailed, on_failed)
    bp.register_error_handler(HTTPException, http_error)
    bp.register_error_handler(Exception, on_unexpected)
