"""Ollama's API on the manager's port: its requests and answers, as pydantic models.

The requests are Ollama's own (``api/types.go``), field for field, checked as strictly
as the job API checks them (no coercion; the same text, image and JSON limits) but, as
Ollama does, **ignoring unknown fields** (and unknown ``options`` keys, which are passed
on). ``null`` at the top level reads as absent, as Go reads it. What passes is forwarded
to Ollama as sent; :func:`check` gives the 400 sentence of the first bad field.

The answers are described for the OpenAPI document only: the service relays Ollama's
own objects.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Required

from pydantic import (
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    with_config,
)
from typing_extensions import TypedDict

from ..errors import InvalidRequest
from .fields import (
    MAX_GO_INT,
    MAX_TOP_LOGPROBS,
    AnyJson,
    Format,
    Images,
    JsonObject,
    KeepAlive,
    Think,
    check_model_name,
    fail,
)
from .fields import ModelName as JobModelName
from .requests import Options, doc, invalid_request

# Unknown fields are ignored, as Go's decoder ignores them; known ones are strict.
LENIENT = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)

# The job API's model name, documented without its example: a client's name is seldom an
# installed model, and the answer for one that is depends on the model's capabilities
ModelName = Annotated[
    str,
    PlainValidator(check_model_name),
    WithJsonSchema(
        {k: v for k, v in TypeAdapter(JobModelName).json_schema().items() if k != "example"}
    ),
]


# The front doors take what Ollama takes (a drop-in client must not meet limits Ollama
# lacks); the job API keeps its own, tighter ones (contract.fields).


def _text(value: Any) -> str:
    if not isinstance(value, str):
        fail("must be a string")
    return value


# Any string, as Go's decoder reads it: no length of its own (the request body's limit,
# MAX_BODY_BYTES, bounds it), NUL kept; invalid UTF-8 and lone surrogates were already
# replaced by U+FFFD when the body was read (frontdoors.shared.parse_json).
Text = Annotated[
    str,
    PlainValidator(lambda v: _text(v)),
    WithJsonSchema(
        {
            "type": "string",
            "description": "Any text, as Ollama takes it: no length limit of its own (the "
            "request body is at most 32 MiB); invalid UTF-8 and lone surrogates read as "
            "U+FFFD.",
        }
    ),
]


@with_config(ConfigDict(strict=True, extra="allow", allow_inf_nan=False))
class OllamaOptions(Options, total=False):
    """Ollama's runtime options: the known ones are checked, other keys are passed on
    (Ollama ignores keys it does not know). ``num_ctx`` goes up to ``MAX_NUM_CTX``, as
    in the job API (Ollama has no cap; the runner clamps it to the model's training
    context, and so does the manager's VRAM estimate)."""


@with_config(LENIENT)
class OllamaToolCallFunction(TypedDict, total=False):
    name: Text
    arguments: JsonObject
    index: Annotated[int, Field(ge=0, le=MAX_GO_INT)]


@with_config(LENIENT)
class OllamaToolCall(TypedDict, total=False):
    id: Text
    function: OllamaToolCallFunction


@with_config(LENIENT)
class OllamaMessage(TypedDict, total=False):
    """One chat message; `role` is `system`, `user`, `assistant` or `tool` (Ollama
    passes other roles to the model's template)."""

    role: Required[Text]
    content: Text
    thinking: Text
    images: Images
    tool_calls: list[OllamaToolCall]
    tool_name: Text
    tool_call_id: Text


@with_config(LENIENT)
class OllamaToolFunction(TypedDict, total=False):
    name: Text
    description: Text
    parameters: JsonObject


@with_config(LENIENT)
class OllamaTool(TypedDict, total=False):
    type: Text
    function: OllamaToolFunction
    items: AnyJson


# A top-level field that may be null (read as absent) -- ``X | None`` in the document.
_STREAM = doc("Stream NDJSON chunks (the default) or answer one object (`false`).")
_KEEP = doc(
    "How long the model stays loaded once idle (seconds, or a duration such as `5m`); "
    "with an empty prompt, `0` unloads it. The manager, not Ollama, enforces it."
)
_TOP_LOGPROBS = Field(ge=0, le=MAX_TOP_LOGPROBS)


@with_config(LENIENT)
class _Request(TypedDict, total=False):
    model: Required[ModelName]
    options: OllamaOptions | None
    keep_alive: Annotated[KeepAlive | None, _KEEP]


@with_config(LENIENT)
class _Inference(_Request, total=False):
    """The fields generate and chat share."""

    stream: Annotated[bool | None, _STREAM]
    format: Format | None
    think: Think | None
    truncate: bool | None
    shift: bool | None
    logprobs: bool | None
    top_logprobs: Annotated[int, _TOP_LOGPROBS] | None


@with_config(LENIENT)
class OllamaGenerateRequest(_Inference, total=False):
    """`POST /api/generate`. An empty prompt loads the model (with `keep_alive` 0: unloads
    it). Unknown fields are ignored."""

    prompt: Text | None
    suffix: Text | None
    system: Text | None
    template: Text | None
    context: list[Annotated[int, Field(ge=0, le=MAX_GO_INT)]] | None
    raw: bool | None
    images: Images | None


@with_config(LENIENT)
class OllamaChatRequest(_Inference, total=False):
    """`POST /api/chat`. No messages loads the model (with `keep_alive` 0: unloads it).
    Unknown fields are ignored."""

    messages: list[OllamaMessage] | None
    tools: list[OllamaTool] | None


@with_config(LENIENT)
class OllamaEmbedRequest(_Request, total=False):
    """`POST /api/embed`. No input loads the model. Unknown fields are ignored."""

    input: Annotated[Text | list[Text] | None, doc("A string or a list of strings.")]
    truncate: bool | None
    dimensions: Annotated[int, Field(ge=0, le=MAX_GO_INT)] | None


@with_config(LENIENT)
class OllamaEmbeddingsRequest(_Request, total=False):
    """`POST /api/embeddings` (Ollama's older embedding endpoint). An empty prompt loads
    the model. Unknown fields are ignored."""

    prompt: Text | None


@with_config(LENIENT)
class OllamaShowRequest(TypedDict, total=False):
    """`POST /api/show`, passed to Ollama with `model` set. Ollama's older `name` field is
    read when `model` is absent or empty, as Ollama reads it (`api/types.go`
    `ShowRequest.Name`, "Deprecated: set the model name with Model instead";
    `server/routes.go` `ShowHandler`). Unknown fields (`system`, `template`, `options`)
    are passed on."""

    model: Required[ModelName]
    name: Annotated[
        Text | None, doc("Deprecated: the model's name, read when `model` is absent or empty.")
    ]
    verbose: bool | None


ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "generate": TypeAdapter(OllamaGenerateRequest),
    "chat": TypeAdapter(OllamaChatRequest),
    "embed": TypeAdapter(OllamaEmbedRequest),
    "embeddings": TypeAdapter(OllamaEmbeddingsRequest),
    "show": TypeAdapter(OllamaShowRequest),
}


_FIELD = re.compile("[a-z_][a-z0-9_]*")
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _path(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def invalid(exc: ValidationError) -> InvalidRequest:
    """The 400 of the first error, its path without the union members pydantic names in
    it (``stop.function-plain[...]`` is ``stop``)."""
    err = invalid_request(exc)
    loc = tuple(exc.errors(include_url=False, include_input=False)[0]["loc"])
    kept = tuple(
        p for p in loc if isinstance(p, int) or (_FIELD.fullmatch(p) and p not in _TYPE_TAGS)
    )
    old, new = _path(loc), _path(kept)
    if old != new and err.message.startswith(f"'{old}"):
        err.message = f"'{new}" + err.message[len(old) + 1 :]
        field = err.details.get("field")
        if isinstance(field, str) and field.startswith(old):
            err.details["field"] = new + field[len(old) :]
    return err


def check(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """The known fields of ``body`` (an object) as sent, without nulls, once the
    request for ``endpoint`` (a key of :data:`ADAPTERS`) is valid; else the 400 naming
    the first bad field. ``model`` is checked by the caller, with Ollama's own texts."""
    adapter = ADAPTERS[endpoint]
    rest = {k: v for k, v in body.items() if k != "model" and v is not None}
    try:
        known = adapter.validate_python({"model": "m", **rest})
    except ValidationError as exc:
        raise invalid(exc) from None
    return {k: rest[k] for k in known if k in rest}


def input_error(body: dict[str, Any]) -> InvalidRequest | None:
    """Ollama's own 400 for an embed ``input`` that is neither a string nor strings."""
    value = body.get("input")
    if value is None or isinstance(value, str):
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return None
    return InvalidRequest("invalid input type", field="input")


# ---------------------------------------------------------------------------- answers


class _Answer(TypedDict, total=False):
    pass


class OllamaError(TypedDict):
    """Every error of Ollama's API, as Ollama answers it."""

    error: Annotated[str, Field(min_length=1)]


class OllamaMetrics(_Answer, total=False):
    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int


class OllamaGenerateResponse(OllamaMetrics, total=False):
    """A generate answer (`stream: false`), or one NDJSON chunk of it. A load or unload
    answers `done_reason` `load` or `unload`. Durations in nanoseconds; `load_duration`
    includes the time the request waited in the manager's queue."""

    model: Required[str]
    created_at: Required[str]
    response: str
    thinking: str
    done: Required[bool]
    done_reason: str
    context: list[int]
    tool_calls: list[dict[str, Any]]
    logprobs: list[dict[str, Any]]


class OllamaChatResponse(OllamaMetrics, total=False):
    """A chat answer (`stream: false`), or one NDJSON chunk of it."""

    model: Required[str]
    created_at: Required[str]
    message: dict[str, Any]
    done: Required[bool]
    done_reason: str
    logprobs: list[dict[str, Any]]


class OllamaEmbedResponse(_Answer, total=False):
    model: Required[str]
    embeddings: Required[list[list[float]]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class OllamaEmbeddingsResponse(TypedDict):
    embedding: list[float]


class OllamaModels(TypedDict):
    """`/api/tags` (installed models) or `/api/ps` (loaded models), from Ollama."""

    models: list[dict[str, Any]]


class OllamaVersion(TypedDict):
    version: str


MODELS: list[Any] = [
    OllamaGenerateRequest,
    OllamaChatRequest,
    OllamaEmbedRequest,
    OllamaEmbeddingsRequest,
    OllamaShowRequest,
    OllamaError,
    OllamaGenerateResponse,
    OllamaChatResponse,
    OllamaEmbedResponse,
    OllamaEmbeddingsResponse,
    OllamaModels,
    OllamaVersion,
]
"""What the OpenAPI document takes from this module."""
