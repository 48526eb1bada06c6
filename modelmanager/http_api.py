"""Flask app factory: routes, JSON in and out, the one error shape.

``create_app(api, config)`` registers routes and error handlers only: no thread, no
database, no GPU at import or creation. Every error leaves as
``{"error": {"code", "message", "details"}}`` with its status -- except on the front
doors' paths (Ollama's API, ``/v1/...``), which answer in their own API's shape
(:mod:`.frontdoors.errors`); nothing a client sends can produce a 500 or a stack trace.
"""

from __future__ import annotations

import hmac
import json
import math
import uuid
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from config import Config

from . import dashboard, metrics
from .api import Api
from .errors import (
    ApiError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from .fleet import INSTANCE_HEADER
from .frontdoors import register_front_doors
from .frontdoors.errors import as_response, door_error, door_of
from .frontdoors.errors import http_error as door_http_error
from .logger import get_logger
from .models_api import register_model_routes
from .nodes_api import register_node_routes
from .waiting import parse_wait

log = get_logger("API")

MAX_BODY_BYTES = 32 * 1024 * 1024


def payload_too_large() -> PayloadTooLarge:
    """The 413 of a body over MAX_BODY_BYTES (from Flask, or from the server itself)."""
    return PayloadTooLarge(f"the request body is larger than {MAX_BODY_BYTES} bytes")


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":"))
    return Response(body, status=status, headers=headers, mimetype="application/json")


def _body() -> Any:
    """The request's JSON body, or a 400 that says what is wrong with it."""
    return parse_body(request.get_data(cache=False))


def parse_body(raw: bytes) -> Any:
    """Decode a JSON request body, or raise a 400 that says what is wrong with it."""
    if not raw:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("the request body is nested too deeply") from None


def _no_constant(name: str) -> Any:
    # Python reads NaN and Infinity, which JSON lacks; stored, they would be echoed back
    # as invalid JSON
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


_JSON_HEADERS = [("Content-Type", "application/json")]
_REASONS = {
    200: "OK",
    400: "BAD REQUEST",
    401: "UNAUTHORIZED",
    404: "NOT FOUND",
    409: "CONFLICT",
    413: "REQUEST ENTITY TOO LARGE",
    429: "TOO MANY REQUESTS",
    500: "INTERNAL SERVER ERROR",
    501: "NOT IMPLEMENTED",
    503: "SERVICE UNAVAILABLE",
}


class FastPaths:
    """WSGI middleware that answers the two hottest routes without Flask's machinery.

    ``GET /api/job/<id>`` (polling) and ``POST /api/submit`` with a declared length carry
    almost all traffic; Flask's per-request setup costs more than the work itself (about
    2,100 vs 5,400 requests/s for an empty answer on 2 cores). They call the same ``Api``
    methods, validation and error JSON as the Flask routes; anything else -- other routes
    and methods, chunked or oversized bodies, a wrong API key, odd ids -- goes to Flask.

    Every answer, fast or Flask's, carries ``X-Model-Manager: <instance>``, so that a
    Model Manager registered as another one's Ollama node is recognised (and refused) by
    the registration's probe (:mod:`modelmanager.fleet`).
    """

    def __init__(
        self,
        flask_wsgi: Any,
        api: Api,
        expected_auth: tuple[bytes, ...],
        instance: str | None = None,
    ) -> None:
        self.flask_wsgi = flask_wsgi
        self.api = api
        self.expected = expected_auth
        self.mark = (INSTANCE_HEADER, instance or uuid.uuid4().hex[:16])

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        plain_start = start_response

        def marked(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            return plain_start(status, [*headers, self.mark], *exc)

        return self._answer(environ, marked)

    def _answer(self, environ: dict[str, Any], start_response: Any) -> Any:
        method = environ.get("REQUEST_METHOD")
        path: str = environ.get("PATH_INFO", "")
        if self.expected and not key_accepted(
            environ.get("HTTP_AUTHORIZATION", "").encode(), self.expected
        ):
            return self.flask_wsgi(environ, start_response)  # Flask answers the 401
        try:
            # with a query string (?wait=S) Flask answers
            if method == "GET" and path.startswith("/api/job/") and not environ.get("QUERY_STRING"):
                job_id = path[9:]
                if job_id and job_id.isascii() and job_id.isprintable() and "/" not in job_id:
                    return _send(start_response, 200, self.api.get_encoded(job_id))
            elif method == "POST" and path == "/api/submit":
                length = environ.get("CONTENT_LENGTH") or ""
                chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
                if length.isdigit() and 0 < int(length) <= MAX_BODY_BYTES and not chunked:
                    raw = environ["wsgi.input"].read(int(length))
                    return _reply(start_response, 200, self.api.submit(parse_body(raw)))
        except ApiError as exc:
            return _reply(start_response, exc.status, exc.to_json(), exc.headers)
        except Exception:
            log.exception("unexpected error on %s %s", method, path)
            err = ApiError("internal error; see the service log")
            return _reply(start_response, err.status, err.to_json())
        return self.flask_wsgi(environ, start_response)


def _reply(
    start_response: Any, status: int, payload: Any, headers: dict[str, str] | None = None
) -> list[bytes]:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _send(start_response, status, body, headers)


def _send(
    start_response: Any, status: int, body: bytes, headers: dict[str, str] | None = None
) -> list[bytes]:
    extra = list(headers.items()) if headers else []
    start_response(
        f"{status} {_REASONS.get(status, 'ERROR')}",
        [*_JSON_HEADERS, ("Content-Length", str(len(body))), *extra],
    )
    return [body]


def key_accepted(given: bytes, expected: tuple[bytes, ...]) -> bool:
    """Whether ``given`` (an Authorization header) is one of ``expected``, each compared
    in constant time, all of them every time."""
    found = False
    for candidate in expected:
        found |= hmac.compare_digest(given, candidate)
    return found


def create_app(api: Api, config: Config) -> Flask:
    app = Flask("modelmanager", static_folder=None)  # an API: no static files
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    expected = tuple(f"Bearer {key}".encode() for key in config.api_keys)

    @app.before_request
    def authenticate() -> None:
        """With API keys set, every endpoint but health and ``/`` (Ollama's "is running",
        or the dashboard's page, which holds no data) needs a bearer token."""
        if not expected or request.path in ("/api/health", "/"):
            return
        given = request.headers.get("Authorization", "").encode()
        if not key_accepted(given, expected):
            raise Unauthorized(
                "missing or wrong API key; send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": 'Bearer realm="modelmanager"'},
            )

    @app.post("/api/submit")
    def submit() -> Response:
        return _json(api.submit(_body()))

    @app.post("/api/submit_batch")
    def submit_batch() -> Response:
        return _json(api.submit_batch(_body()))

    @app.get("/api/job/<job_id>")
    def get_job(job_id: str) -> Response:
        unknown = sorted(set(request.args) - {"wait"})
        if unknown:  # a misspelt ?wait would otherwise answer at once, silently
            raise InvalidRequest(
                f"unknown query parameter(s): {', '.join(unknown)} (only 'wait' is known)",
                field=unknown[0],
            )
        if "wait" not in request.args:
            return _json(api.get(job_id))
        try:
            seconds = parse_wait(request.args.getlist("wait"))
        except ValueError as exc:
            raise InvalidRequest(str(exc), field="wait") from None
        body, outcome = api.wait(job_id, seconds)
        return Response(body, headers={"X-Wait": outcome.value}, mimetype="application/json")

    @app.get("/api/jobs")
    def list_jobs() -> Response:
        return _json(api.list_jobs(request.args.to_dict(flat=False)))

    @app.post("/api/job/<job_id>/cancel")
    def cancel(job_id: str) -> Response:
        return _json(api.cancel(job_id))

    @app.post("/api/job/<job_id>/retry")
    def retry(job_id: str) -> Response:
        return _json(api.retry(job_id))

    @app.get("/api/health")
    def health() -> Response:
        return _json(api.health())

    @app.get("/api/models")
    def models() -> Response:
        return _json(api.models())

    @app.get("/api/stats")
    def stats() -> Response:
        return _json(api.stats())

    register_node_routes(app, api, _body)
    register_model_routes(app, api, _body)

    @app.get("/api/openapi.json")
    def openapi() -> Response:
        from .contract.openapi import openapi_document  # built on first use

        return _json(openapi_document())

    metrics.register(app, api)  # GET /metrics
    dashboard.register(app, api)  # GET /, GET /api/dashboard
    register_front_doors(app, api, config)  # Ollama's and OpenAI's APIs

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        # a front door's path that no route took (the 401 of a path under /v1/ that
        # does not exist) answers in its door's shape
        door = door_error(request.method, request.path, exc.status, exc.message, exc.headers)
        if door is not None:
            return as_response(door)
        return _json(exc.to_json(), exc.status, exc.headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        if door_of(request.path) is not None:  # routing's 404/405 on a front door's path
            return door_http_error(exc)
        err: ApiError
        if code == 404:
            err = NotFound(f"no such endpoint: {request.method} {request.path}")
        elif code == 405:
            allowed = exc.valid_methods if hasattr(exc, "valid_methods") else None
            err = MethodNotAllowed(
                f"{request.method} is not allowed on {request.path}",
                details={"allowed": sorted(allowed or [])},
                headers={"Allow": ", ".join(sorted(allowed or []))},  # RFC 9110 §15.5.6
            )
        elif code == 413:
            err = payload_too_large()
        elif code < 500:
            err = InvalidRequest(exc.description or "bad request")
        else:
            err = ApiError("internal error")
        return _json(err.to_json(), err.status, err.headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _json(ApiError("internal error; see the service log").to_json(), 500)

    fleet = getattr(api, "fleet", None)
    instance = fleet.instance_id if fleet is not None else None
    app.wsgi_app = FastPaths(  # type: ignore[method-assign]
        app.wsgi_app, api, expected, instance
    )
    return app
