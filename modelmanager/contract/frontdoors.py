"""The OpenAPI paths and error responses of the front doors (Ollama's API and the
OpenAI-compatible API), over the schemas of :mod:`.ollama` and :mod:`.openai`;
:mod:`.openapi` merges them into the one document.

Each door answers errors in its own shape (``{"error": "..."}``, ``{"error": {"message",
"type", "param", "code"}}``), listed here under ``components/responses`` with an
``Ollama`` or ``OpenAI`` prefix.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

_REF = "#/components/schemas/{}"
_ERRORS = {
    400: (
        "BadRequest",
        "A malformed body, a field of the wrong type or out of range, a bad "
        "`X-Priority` header, an invalid model name, or Ollama's own 400.",
    ),
    401: ("Unauthorized", "An API key is configured and the request lacks a valid one."),
    403: ("Forbidden", "Model management is not passed through (use Ollama itself)."),
    404: ("NotFound", "The model is not installed in Ollama."),
    413: ("TooLarge", "The request body is too large."),
    500: ("Failed", "The job failed (Ollama's or the manager's message)."),
    503: (
        "Busy",
        "The queue is full or the service is stopping (`Retry-After`), or "
        "Ollama cannot be reached.",
    ),
}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}}}


def _ref(name: str) -> Schema:
    return {"$ref": _REF.format(name)}


def responses() -> dict[str, Schema]:
    """``components/responses`` of both doors' errors."""
    out: dict[str, Schema] = {}
    for door, schema in (("Ollama", "OllamaError"), ("OpenAI", "OpenAIError")):
        for status, (name, text) in _ERRORS.items():
            response: Schema = {
                "description": text,
                "content": {"application/json": {"schema": _ref(schema)}},
            }
            if status == 503:
                response["headers"] = _RETRY_AFTER
            out[f"{door}{name}"] = response
    return out


def _errors(door: str, *statuses: int) -> dict[str, Schema]:
    return {
        str(s): {"$ref": f"#/components/responses/{door}{_ERRORS[s][0]}"} for s in (*statuses, 401)
    }


def _json(schema: str, description: str, *, ndjson: bool = False, sse: bool = False) -> Schema:
    content: Schema = {"application/json": {"schema": _ref(schema)}}
    if ndjson:
        content["application/x-ndjson"] = {
            "schema": {"type": "string", "description": f"One {schema} object per line."}
        }
    if sse:  # each event, as OpenAPI 3.2 describes server-sent events
        content["text/event-stream"] = {
            "schema": {
                "type": "object",
                "required": ["data"],
                "properties": {"data": {"type": "string"}},
                "description": f"Events whose `data` is a chunk of the {schema} (JSON), an "
                '`{"error": {...}}` if the answer breaks off, and last `[DONE]`.',
            }
        }
    return {"description": description, "content": content}


def _body(schema: str) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


def _post(op: str, summary: str, request: str, ok: Schema, door: str, *errs: int) -> Schema:
    return {
        "post": {
            "operationId": op,
            "summary": summary,
            "tags": [door],
            "requestBody": _body(request),
            "responses": {"200": ok, **_errors(door, *errs)},
        }
    }


def _get(op: str, summary: str, ok: Schema, door: str, *errs: int) -> Schema:
    return {
        "get": {
            "operationId": op,
            "summary": summary,
            "tags": [door],
            "responses": {"200": ok, **_errors(door, *errs)},
        }
    }


_INFER = (400, 404, 413, 500, 503)
_QUEUED = (
    " A job of the shared queue (source `ollama`); priority from `X-Priority` (high, "
    "normal, low), else the API key's default, else `DEFAULT_PRIORITY`."
)


def paths() -> dict[str, Schema]:
    """Every front-door path with its operations."""
    o, a = "Ollama", "OpenAI"
    out: dict[str, Schema] = {
        "/api/generate": _post(
            "ollamaGenerate",
            "Ollama's generate: NDJSON chunks, or one object with `stream: false`." + _QUEUED,
            "OllamaGenerateRequest",
            _json("OllamaGenerateResponse", "The answer.", ndjson=True),
            o,
            *_INFER,
        ),
        "/api/chat": _post(
            "ollamaChat",
            "Ollama's chat: NDJSON chunks, or one object with `stream: false`." + _QUEUED,
            "OllamaChatRequest",
            _json("OllamaChatResponse", "The answer.", ndjson=True),
            o,
            *_INFER,
        ),
        "/api/embed": _post(
            "ollamaEmbed",
            "Ollama's embed." + _QUEUED,
            "OllamaEmbedRequest",
            _json("OllamaEmbedResponse", "The vectors."),
            o,
            *_INFER,
        ),
        "/api/embeddings": _post(
            "ollamaEmbeddings",
            "Ollama's older embeddings endpoint (one vector)." + _QUEUED,
            "OllamaEmbeddingsRequest",
            _json("OllamaEmbeddingsResponse", "The vector."),
            o,
            *_INFER,
        ),
        "/api/show": _post(
            "ollamaShow",
            "Ollama's answer about one model, passed through.",
            "OllamaShowRequest",
            {
                "description": "What Ollama knows of the model.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            o,
            400,
            404,
            503,
        ),
        "/api/tags": _get(
            "ollamaTags",
            "The installed models, from Ollama.",
            _json("OllamaModels", "Models."),
            o,
            503,
        ),
        "/api/ps": _get(
            "ollamaPs",
            "The loaded models, from Ollama.",
            _json("OllamaModels", "Models."),
            o,
            503,
        ),
        "/api/version": _get(
            "ollamaVersion",
            "Ollama's version.",
            _json("OllamaVersion", "The version."),
            o,
            503,
        ),
    }
    for path, method in (
        ("/api/pull", "post"),
        ("/api/delete", "delete"),
        ("/api/create", "post"),
        ("/api/copy", "post"),
        ("/api/push", "post"),
    ):
        out[path] = {
            method: {
                "operationId": "ollama" + path[5:].capitalize(),
                "summary": "Not passed through: answers 403 naming what to use instead "
                "(the manager's own model endpoints are under /api/v1/models).",
                "tags": [o],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": _errors(o, 403),
            }
        }
    out.update(
        {
            "/v1/chat/completions": _post(
                "openaiChatCompletions",
                "OpenAI-compatible chat, as Ollama's compatibility layer answers it; "
                "`stream: true` answers server-sent events." + _QUEUED.replace("ollama", "openai"),
                "OpenAIChatRequest",
                _json("OpenAIChatCompletion", "The completion.", sse=True),
                a,
                *_INFER,
            ),
            "/v1/completions": _post(
                "openaiCompletions",
                "OpenAI-compatible text completion." + _QUEUED.replace("ollama", "openai"),
                "OpenAICompletionRequest",
                _json("OpenAICompletion", "The completion.", sse=True),
                a,
                *_INFER,
            ),
            "/v1/embeddings": _post(
                "openaiEmbeddings",
                "OpenAI-compatible embeddings." + _QUEUED.replace("ollama", "openai"),
                "OpenAIEmbeddingRequest",
                _json("OpenAIEmbeddingList", "The vectors."),
                a,
                *_INFER,
            ),
            "/v1/models": _get(
                "openaiModels",
                "The installed models (Ollama's /api/tags).",
                _json("OpenAIModelList", "Models."),
                a,
                503,
            ),
            "/v1/models/{model}": {
                "get": {
                    "operationId": "openaiModel",
                    "summary": "One installed model (Ollama's /api/show).",
                    "tags": [a],
                    "parameters": [
                        {
                            "name": "model",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1},
                        }
                    ],
                    "responses": {
                        "200": _json("OpenAIModel", "The model."),
                        **_errors(a, 400, 404, 503),
                    },
                }
            },
        }
    )
    return out
