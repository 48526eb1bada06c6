"""The OpenAI-compatible API on the manager's port, as Ollama's compatibility layer
answers it (``openai/openai.go``, ``middleware/openai.go``).

``POST /v1/chat/completions`` and ``/v1/completions`` become chat and generate jobs of the
shared queue (source ``openai``) and ``/v1/embeddings`` an embed job; ``stream: true``
answers server-sent events (``data: <chunk>`` ... ``data: [DONE]``) as Ollama produces
tokens. ``GET /v1/models`` (and ``/v1/models/<model>``) answer from Ollama's ``/api/tags``
(``/api/show``). Errors are ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, request

from config import Config

from .. import names
from ..api import Api
from ..contract import Submission
from ..contract import openai as contract
from ..contract import openai_mapping as mapping
from ..errors import ApiError, InvalidRequest, QueueFull
from ..logger import get_logger
from ..models import JobKind
from . import ollama
from . import openai_answers as answers
from .errors import handle_errors, openai_error_body
from .relay import Answer, ClientGone, JobFailed, OpenRequests, open_answer, priority_of
from .shared import Backend, KeyPriorities, node_urls, parse_json, retry_headers

log = get_logger("API")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error in OpenAI's shape (:func:`.errors.openai_error_body`)."""
    return ollama.reply(openai_error_body(status, message), status, headers)


class OpenAIDoor:
    def __init__(self, api: Api, config: Config) -> None:
        self.api = api
        self.config = config
        self.backend = Backend(config, node_urls(api, config))
        self.key_priority = KeyPriorities(config)
        self.open = OpenRequests(config.MAX_OPEN_REQUESTS)

    def _submit(self, kind: JobKind, name: str, payload: dict[str, Any], stream: bool) -> Answer:
        arrived = time.monotonic()
        key = self.key_priority(request.headers.get("Authorization", ""))
        priority = priority_of(request.headers, key, self.config.DEFAULT_PRIORITY)
        sub = Submission(name, kind, priority, payload, None, None)
        self.open.enter()
        try:
            return open_answer(
                self.api, sub, "openai", stream=stream, environ=request.environ, arrived=arrived
            )
        except BaseException:
            self.open.leave()
            raise

    def _done(self, answer: Answer) -> None:
        if not answer.closed:
            answer.close()
            self.open.leave()

    def _run(self, kind: str, name: str, answer: Answer, stream: Any) -> Response:
        """Collect the answer (``stream`` None), or stream it from its first chunk."""
        streaming = False
        try:
            if stream is None:
                chunks = answer.collect()
                if not chunks:
                    raise JobFailed(500, "the answer ended without a final chunk")
                final = ollama.join(chunks)
                if kind == "chat":
                    return ollama.reply(answers.chat_completion(answer.job_id, final))
                if kind == "completions":
                    return ollama.reply(answers.completion(answer.job_id, final))
                return ollama.reply(final)
            first = answer.next()
            if first is None:
                raise JobFailed(500, "the answer ended before its first chunk")
            response = Response(self._events(first, answer, stream), content_type=answers.SSE)
            response.call_on_close(lambda: self._done(answer))
            streaming = True
            return response
        except JobFailed as exc:
            return error(exc.status, ollama.failure_text(kind, name, exc))
        except ClientGone:
            return Response(status=499)
        finally:
            if not streaming:
                self._done(answer)

    def _events(self, first: dict[str, Any], answer: Answer, stream: Any) -> Iterator[bytes]:
        chunk: dict[str, Any] | None = first
        try:
            while chunk is not None:
                yield from stream.events(chunk)
                chunk = answer.next()
        except JobFailed as exc:
            body = {"message": exc.message, "type": "api_error", "param": None, "code": None}
            yield answers.event({"error": body})
        except ClientGone:
            return
        finally:
            self._done(answer)

    # ---------------------------------------------------------------------- routes

    def chat(self) -> Response:
        body = parse_json(request.get_data(cache=False))
        if not body.get("messages"):
            raise InvalidRequest("[] is too short - 'messages'", field="messages")
        req = contract.check("chat", body)
        payload = mapping.chat_payload(req)
        name = ollama.model_name("chat", body)
        answer = self._submit(JobKind.CHAT, name, payload, bool(req.get("stream")))
        include = bool((req.get("stream_options") or {}).get("include_usage"))
        stream = answers.ChatStream(answer.job_id, include) if req.get("stream") else None
        return self._run("chat", name, answer, stream)

    def completions(self) -> Response:
        body = parse_json(request.get_data(cache=False))
        req = contract.check("completions", body)
        payload = mapping.completion_payload(req)
        name = ollama.model_name("generate", body)
        answer = self._submit(JobKind.GENERATE, name, payload, bool(req.get("stream")))
        include = bool((req.get("stream_options") or {}).get("include_usage"))
        stream = answers.CompletionStream(answer.job_id, include) if req.get("stream") else None
        return self._run("completions", name, answer, stream)

    def embeddings(self) -> Response:
        body = parse_json(request.get_data(cache=False))
        fmt = body.get("encoding_format")
        if isinstance(fmt, str) and fmt and fmt.lower() not in ("float", "base64"):
            raise InvalidRequest(
                f"Invalid value for 'encoding_format' = {fmt}. Supported values: "
                "['float', 'base64'].",
                field="encoding_format",
            )
        if isinstance(fmt, str):
            body = {**body, "encoding_format": fmt.lower() or None}
        given = body.get("input")
        if given is None or given == []:
            raise InvalidRequest("invalid input", field="input")
        if given == "":
            body = {**body, "input": [""]}
        if (bad := ollama.contract.input_error(body)) is not None:
            raise bad
        req = contract.check("embeddings", body)
        name = ollama.model_name("embed", body)
        inputs = req["input"] if isinstance(req["input"], list) else [req["input"]]
        payload: dict[str, Any] = {"input": inputs}
        if req.get("dimensions"):
            payload["dimensions"] = req["dimensions"]
        answer = self._submit(JobKind.EMBED, name, payload, False)
        try:
            chunks = answer.collect()
        except JobFailed as exc:
            return error(exc.status, ollama.failure_text("embed", name, exc))
        except ClientGone:
            return Response(status=499)
        finally:
            self._done(answer)
        final = chunks[-1] if chunks else {}
        as_base64 = req.get("encoding_format") == "base64"
        vectors = final.get("embeddings") or []
        data = [
            {
                "object": "embedding",
                "embedding": answers.embedding_base64(v) if as_base64 else v,
                "index": i,
            }
            for i, v in enumerate(vectors)
        ]
        tokens = final.get("prompt_eval_count") or 0
        return ollama.reply(
            {
                "object": "list",
                "data": data,
                "model": name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def models(self) -> Response:
        status, doc = self.backend.json("GET", "/api/tags")
        if status != 200:
            text = str(doc.get("error") if isinstance(doc, dict) else doc)
            return error(status, text, retry_headers(status))
        data = []
        for entry in doc.get("models") or ():
            name = str(entry.get("name") or entry.get("model") or "")
            data.append(answers.model_entry(name, entry.get("modified_at")))
        return ollama.reply({"object": "list", "data": data})

    def model(self, model: str) -> Response:
        try:
            names.parse(model)
        except names.InvalidModelName:  # no such model could exist
            return error(404, ollama.not_found("show", model))
        status, doc = self.backend.json("POST", "/api/show", {"model": model})
        if status != 200:
            text = str(doc.get("error") if isinstance(doc, dict) else doc)
            return error(status, text, retry_headers(status))
        return ollama.reply(answers.model_entry(model, doc.get("modified_at")))


def blueprint(api: Api, config: Config) -> Blueprint:
    bp = Blueprint("openai", __name__)
    door = OpenAIDoor(api, config)
    bp.add_url_rule("/v1/chat/completions", "openai_chat", door.chat, methods=["POST"])
    bp.add_url_rule("/v1/completions", "openai_completions", door.completions, methods=["POST"])
    bp.add_url_rule("/v1/embeddings", "openai_embeddings", door.embeddings, methods=["POST"])
    bp.add_url_rule("/v1/models", "openai_models", door.models, methods=["GET"])
    bp.add_url_rule("/v1/models/<path:model>", "openai_model", door.model, methods=["GET"])

    def on_api_error(exc: ApiError) -> Response:
        if isinstance(exc, QueueFull):
            return error(503, ollama.BUSY, exc.headers)
        return error(exc.status, exc.message, exc.headers)

    handle_errors(bp, on_api_error, error)
    return bp
