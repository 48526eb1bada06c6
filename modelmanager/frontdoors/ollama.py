"""Ollama's API on the manager's port: existing Ollama clients get scheduling unchanged.

``POST /api/generate``, ``/api/chat``, ``/api/embed``, ``/api/embeddings`` become jobs of
the shared queue (source ``ollama``) and answer as Ollama answers: NDJSON chunks as the
model produces them (one JSON object with ``"stream": false``), errors before the first
chunk as ``{"error": "..."}`` with Ollama's status, errors after it in-band. An empty
prompt (messages, input) loads the model as a job like any other; with ``keep_alive`` 0 it
asks the scheduler to unload the model once nothing needs it and answers at once.
``GET /api/tags``, ``/api/ps``, ``/api/version`` and ``POST /api/show`` are Ollama's own
answers. Model management (pull, delete, create, copy, push) is refused with a 403 that
says what to use instead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, request
from werkzeug.datastructures import EnvironHeaders

from config import Config

from .. import names
from ..api import Api
from ..contract import Submission, keep_alive_seconds
from ..contract import ollama as contract
from ..errors import ApiError, InvalidRequest, QueueFull
from ..events import KeepAliveSet
from ..logger import get_logger
from ..models import JobKind
from .errors import handle_errors
from .relay import Answer, ClientGone, JobFailed, OpenRequests, open_answer, priority_of, with_wait
from .shared import Backend, KeyPriorities, node_urls, parse_json, retry_headers

log = get_logger("API")

NDJSON = "application/x-ndjson"
JSON = "application/json; charset=utf-8"
BUSY = "server busy, please try again.  maximum pending requests exceeded"  # Ollama's text
MANAGEMENT = {
    "/api/pull": ("POST", "download"),
    "/api/delete": ("DELETE", "delete"),
    "/api/create": ("POST", "create"),
    "/api/copy": ("POST", "copy"),
    "/api/push": ("POST", "push"),
}


def reply(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":"))
    return Response(body, status=status, headers=headers, content_type=JSON)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return reply({"error": message}, status, headers)


def api_error(exc: ApiError) -> Response:
    """An error of ours in Ollama's shape; a full queue answers as Ollama's does."""
    if isinstance(exc, QueueFull):
        return error(503, BUSY, exc.headers)
    return error(exc.status, exc.message, exc.headers)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def not_found(kind: str, name: str) -> str:
    if kind in ("embed", "embeddings"):
        return f'model "{name}" not found, try pulling it first'
    return f"model '{name}' not found"


def model_name(kind: str, body: dict[str, Any]) -> str:
    """The request's model name, or Ollama's answer to a missing or invalid one."""
    name = body.get("model")
    if name is None or name == "":
        if kind in ("generate", "embed"):
            raise JobFailed(404, not_found(kind, ""))
        raise InvalidRequest("model is required", field="model")
    if not isinstance(name, str):
        raise InvalidRequest("'model' must be a string", field="model")
    try:
        names.parse(name)
    except names.InvalidModelName:
        raise InvalidRequest("invalid model name", field="model") from None
    return name


def with_model_from_name(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with ``model`` taken from Ollama's deprecated ``name`` field where
    ``model`` is absent or empty and ``name`` is a non-empty string (``api/types.go``:
    ShowRequest, DeleteRequest, PullRequest, PushRequest and CreateRequest carry
    ``Name``; of these the door serves show, and refuses the others whatever they name)."""
    if body.get("model") in (None, "") and isinstance(body.get("name"), str) and body["name"]:
        return {**body, "model": body["name"]}
    return body


def failure_text(kind: str, name: str, exc: JobFailed) -> str:
    """What the client is told of a failed job: Ollama's text for a missing model."""
    return not_found(kind, name) if exc.code == "MODEL_NOT_FOUND" else exc.message


def join(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The chunks of a streamed answer as one object, as Ollama builds a non-streamed
    answer: the final chunk with the text fields concatenated and ``tool_calls`` and
    ``logprobs`` collected from every chunk."""
    final = dict(chunks[-1])
    texts: dict[str, list[str]] = {}
    message_texts: dict[str, list[str]] = {}
    calls: list[Any] = []
    message_calls: list[Any] = []
    logprobs: list[Any] = []
    for chunk in chunks:
        for key in ("response", "thinking"):
            if isinstance(chunk.get(key), str):
                texts.setdefault(key, []).append(chunk[key])
        if isinstance(chunk.get("tool_calls"), list):
            calls.extend(chunk["tool_calls"])
        if isinstance(chunk.get("logprobs"), list):
            logprobs.extend(chunk["logprobs"])
        message = chunk.get("message")
        if isinstance(message, dict):
            for key in ("content", "thinking"):
                if isinstance(message.get(key), str):
                    message_texts.setdefault(key, []).append(message[key])
            if isinstance(message.get("tool_calls"), list):
                message_calls.extend(message["tool_calls"])
    for key, parts in texts.items():
        final[key] = "".join(parts)
    if calls:
        final["tool_calls"] = calls
    if logprobs:
        final["logprobs"] = logprobs
    if isinstance(final.get("message"), dict):
        message = dict(final["message"])
        for key, parts in message_texts.items():
            if "".join(parts) or key in message:
                message[key] = "".join(parts)
        if message_calls:
            message["tool_calls"] = message_calls
        final["message"] = message
    return final


class OllamaDoor:
    """The routes' work, over the internal API (read lazily: ``create_app`` may be given
    a stand-in that only lists routes)."""

    def __init__(self, api: Api, config: Config) -> None:
        self.api = api
        self.config = config
        self.backend = Backend(config, node_urls(api, config))
        self.key_priority = KeyPriorities(config)
        self.open = OpenRequests(config.MAX_OPEN_REQUESTS)

    # ------------------------------------------------------------------- inference

    def respond(self, kind: str, raw: bytes, headers: Any, environ: dict[str, Any]) -> Response:
        """The answer to an inference request (``raw`` its body, ``headers`` its headers as
        werkzeug reads them), errors in Ollama's shape. Needs no Flask request context."""
        try:
            return self.infer(kind, raw, headers, environ)
        except ApiError as exc:
            return api_error(exc)
        except JobFailed as exc:
            return error(exc.status, exc.message)
        except Exception:
            log.exception("unexpected error on POST /api/%s", kind)
            return error(500, "internal error; see the service log")

    def infer(self, kind: str, raw: bytes, headers: Any, environ: dict[str, Any]) -> Response:
        arrived = time.monotonic()
        body = parse_json(raw)
        if kind == "embed" and (bad := contract.input_error(body)) is not None:
            raise bad
        name = model_name(kind, body)
        fields = contract.check(kind, body)
        key = self.key_priority(headers.get("Authorization", ""))
        priority = priority_of(headers, key, self._default)
        keep_alive = fields.pop("keep_alive", None)
        seconds = keep_alive_seconds(keep_alive) if keep_alive is not None else None
        stream = fields.pop("stream", True) is not False
        empty = {
            "generate": not fields.get("prompt"),
            "chat": not fields.get("messages"),
            "embed": not fields.get("input"),
            "embeddings": not fields.get("prompt"),
        }[kind]
        if empty and seconds == 0 and kind in ("generate", "chat"):
            return self._unload(kind, name)
        job_kind, payload = self._payload(kind, fields, empty)
        if seconds is not None:
            payload["keep_alive"] = seconds
        sub = Submission(name, job_kind, priority, payload, None, None)
        self.open.enter()
        try:
            answer = open_answer(
                self.api,
                sub,
                "ollama",
                stream=stream and not empty and kind in ("generate", "chat"),
                environ=environ,
                arrived=arrived,
            )
        except BaseException:
            self.open.leave()
            raise
        return self._answer(kind, name, answer)

    @property
    def _default(self) -> str:
        return self.config.DEFAULT_PRIORITY

    def _payload(
        self, kind: str, fields: dict[str, Any], empty: bool
    ) -> tuple[JobKind, dict[str, Any]]:
        if kind == "generate":
            return JobKind.GENERATE, {**fields, "prompt": fields.get("prompt", "")}
        if kind == "chat":
            return JobKind.CHAT, {**fields, "messages": fields.get("messages", [])}
        if kind == "embed":
            return JobKind.EMBED, {**fields, "input": [] if empty else fields["input"]}
        payload = {k: v for k, v in fields.items() if k != "prompt"}
        return JobKind.EMBED, {**payload, "input": [] if empty else [fields["prompt"]]}

    def _answer(self, kind: str, name: str, answer: Answer) -> Response:
        """Wait for the first chunk (errors before it are real statuses), then answer."""
        streaming = False
        try:
            if not answer.stream:
                return reply(self._whole(kind, answer.collect(), answer.arrived))
            first = answer.next()
            if first is None:  # a complete answer always has its final chunk
                raise JobFailed(500, "the answer ended before its first chunk")
            response = Response(self._rest(first, answer), content_type=NDJSON)
            response.call_on_close(lambda: self._done(answer))
            streaming = True
            return response
        except JobFailed as exc:
            return error(exc.status, failure_text(kind, name, exc))
        except ClientGone:
            return Response(status=499)
        finally:
            if not streaming:
                self._done(answer)

    def _done(self, answer: Answer) -> None:
        if not answer.closed:
            answer.close()
            self.open.leave()

    def _whole(self, kind: str, chunks: list[dict[str, Any]], arrived: float) -> Any:
        if not chunks:
            raise JobFailed(500, "the answer ended without a final chunk")
        whole = with_wait(join(chunks), arrived)
        if kind == "embeddings":
            vectors = whole.get("embeddings") or []
            return {"embedding": vectors[0] if vectors else []}
        return whole

    def _rest(self, first: dict[str, Any], answer: Answer) -> Iterator[bytes]:
        """The NDJSON stream from the first chunk on; a failure after it is one in-band
        ``{"error"}`` line, as Ollama ends a stream that broke off."""
        chunk: dict[str, Any] | None = first
        try:
            while chunk is not None:
                if chunk.get("done") is True:
                    chunk = with_wait(chunk, answer.arrived)
                yield json.dumps(chunk, separators=(",", ":")).encode() + b"\n"
                chunk = answer.next()
        except JobFailed as exc:
            yield json.dumps({"error": exc.message}).encode() + b"\n"
        except ClientGone:
            return
        finally:
            self._done(answer)

    def _unload(self, kind: str, name: str) -> Response:
        """Empty prompt and ``keep_alive`` 0: the model is unloaded once nothing else
        needs it; answered at once, as Ollama answers (404 for a model it lacks)."""
        status, _, _ = self.backend.call("POST", "/api/show", {"model": name})
        if status == 404:
            return error(404, not_found(kind, name))
        self.api.scheduler.post(KeepAliveSet(names.model_key(name), 0.0))
        log.info("unload of %s asked (keep_alive 0)", name)
        out: dict[str, Any] = {"model": name, "created_at": _now()}
        if kind == "chat":
            out["message"] = {"role": "assistant", "content": ""}
        else:
            out["response"] = ""
        out.update(done=True, done_reason="unload")
        return reply(out)

    # --------------------------------------------------------------------- passthrough

    def passthrough(self, method: str, path: str, body: Any = None) -> Response:
        """Ollama's answer as it came (a 503 with ``Retry-After`` when no node answers)."""
        status, content, content_type = self.backend.call(method, path, body)
        return Response(
            content, status=status, content_type=content_type or JSON, headers=retry_headers(status)
        )

    def show(self) -> Response:
        """``POST /api/show``: Ollama's answer for ``model``, or for the older ``name``
        when ``model`` is absent or empty (``server/routes.go`` ``ShowHandler``: Model,
        else Name, else 400 "model is required"); forwarded with ``model`` set, which
        every Ollama that has the field reads."""
        body = parse_json(request.get_data(cache=False))
        contract.check("show", body)  # the fields' types first, as Go's decoder reads them
        body = with_model_from_name(body)
        model_name("show", body)
        return self.passthrough("POST", "/api/show", body)


def management(path: str, action: str) -> Callable[[], Response]:
    instead = {
        "download": "POST /api/v1/models/download (then GET /api/v1/models/status)",
        "delete": "DELETE /api/v1/models",
    }.get(action)
    where = (
        f"use the manager's own {instead}, which works on every node, or {action} models"
        if instead
        else f"{action} models"
    )

    def refuse() -> Response:
        return error(
            403,
            f"Model Manager does not pass {path} through to Ollama: {where} with Ollama "
            "itself (the ollama CLI on the Ollama host, or Ollama's own port). The "
            "manager's model endpoints are under /api/v1/models (status, download, "
            "delete, list, space).",
        )

    refuse.__name__ = f"refuse_{path.rsplit('/', 1)[-1]}"
    return refuse


INFERENCE = {f"/api/{kind}": kind for kind in ("generate", "chat", "embed", "embeddings")}
PASSTHROUGH = ("/api/tags", "/api/ps", "/api/version")  # GET, Ollama's answer as it comes


class FastPath:
    """WSGI middleware that answers Ollama's inference routes without Flask's per-request
    machinery (a few tenths of a millisecond of every time to first token), as
    ``http_api.FastPaths`` does for the job API. Anything else -- other routes, a wrong
    key (Flask answers the 401), a chunked or oversized body -- goes on to ``inner``."""

    def __init__(
        self,
        inner: Any,
        door: OllamaDoor,
        expected: tuple[bytes, ...],
        accepted: Callable[[bytes, tuple[bytes, ...]], bool],
        max_body: int,
    ) -> None:
        self.inner = inner
        self.door = door
        self.expected = expected
        self.accepted = accepted
        self.max_body = max_body

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        kind = INFERENCE.get(environ.get("PATH_INFO", ""))
        if kind is None or environ.get("REQUEST_METHOD") != "POST":
            return self.inner(environ, start_response)
        if self.expected and not self.accepted(
            environ.get("HTTP_AUTHORIZATION", "").encode(), self.expected
        ):
            return self.inner(environ, start_response)
        length = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked or not length.isdigit() or int(length) > self.max_body:
            return self.inner(environ, start_response)
        raw = environ["wsgi.input"].read(int(length)) if int(length) else b""
        response = self.door.respond(kind, raw, EnvironHeaders(environ), environ)
        return response(environ, start_response)


def blueprint(door: OllamaDoor) -> Blueprint:
    bp = Blueprint("ollama", __name__)

    for path, kind in INFERENCE.items():
        bp.add_url_rule(
            path,
            f"ollama_{kind}",
            lambda kind=kind: door.respond(
                kind, request.get_data(cache=False), request.headers, request.environ
            ),
            methods=["POST"],
        )
    bp.add_url_rule("/api/show", "ollama_show", door.show, methods=["POST"])
    for path in PASSTHROUGH:
        bp.add_url_rule(
            path,
            f"ollama_{path.rsplit('/', 1)[-1]}",
            lambda path=path: door.passthrough("GET", path),
            methods=["GET"],
        )
    for path, (method, action) in MANAGEMENT.items():
        bp.add_url_rule(path, f"ollama_{path[5:]}", management(path, action), methods=[method])

    handle_errors(bp, api_error, error)
    return bp
