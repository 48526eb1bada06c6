"""The OpenAI-compatible API on the manager's port (``/v1/...``): requests and answers
as pydantic models, with the field mapping of Ollama's own compatibility layer.

The requests are what Ollama's ``openai/openai.go`` reads (``ChatCompletionRequest``,
``CompletionRequest``, ``EmbedRequest``), checked strictly but **ignoring unknown
fields**, as that layer does; ``null`` reads as absent. :func:`chat_payload` and
:func:`completion_payload` turn a valid request into the Ollama chat or generate fields
the job carries, as Ollama converts them (``max_tokens`` is ``num_predict``, temperature
and top_p default to 1.0, ``response_format`` becomes ``format``, ``reasoning_effort``
becomes ``think``, content parts become messages, tool-call arguments are parsed).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal, Required

from pydantic import (
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
    BASE64_PATTERN,
    MAX_GO_INT,
    MAX_IMAGE_CHARS,
    MAX_TOP_LOGPROBS,
    JsonObject,
    fail,
)
from .ollama import LENIENT, ModelName, OllamaTool, Text, invalid
from .requests import doc


@with_config(LENIENT)
class OpenAIToolCallFunction(TypedDict, total=False):
    name: Text
    arguments: Annotated[
        Text, doc("The arguments as a JSON object in a string (anything else: none).")
    ]


@with_config(LENIENT)
class OpenAIToolCall(TypedDict, total=False):
    id: Text
    index: Annotated[int, Field(ge=0, le=MAX_GO_INT)]
    type: Text
    function: OpenAIToolCallFunction


IMAGE_TYPES = ("jpeg", "jpg", "png", "webp")
_DATA_URL = f"^data:(?:image/(?:{'|'.join(IMAGE_TYPES)}))?;base64,{BASE64_PATTERN[1:]}"


def _data_url(value: Any) -> str:
    if not isinstance(value, str):
        fail("must be a string")
    if len(value) > MAX_IMAGE_CHARS + 32:
        fail("is too large an image")
    if value.startswith(("http://", "https://")):
        fail("is a URL: image URLs are not supported, send base64 data instead")
    prefix, sep, data = value.partition(";base64,")
    if not sep or prefix not in ("data:", *(f"data:image/{t}" for t in IMAGE_TYPES)):
        fail("must be a data URL: data:image/png;base64,...")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        fail("is not valid base64")
    return value


DataUrl = Annotated[
    str,
    PlainValidator(_data_url),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": _DATA_URL,
            "description": "A base64 data URL (`data:image/png;base64,...`); image URLs "
            "are not supported.",
        }
    ),
]


@with_config(LENIENT)
class OpenAITextPart(TypedDict):
    type: Literal["text"]
    text: Text


@with_config(LENIENT)
class OpenAIImageUrl(TypedDict):
    url: DataUrl


@with_config(LENIENT)
class OpenAIImagePart(TypedDict):
    type: Literal["image_url"]
    image_url: DataUrl | OpenAIImageUrl


@with_config(LENIENT)
class OpenAIMessage(TypedDict, total=False):
    """A chat message. `content` is text, a list of parts (`{"type": "text", "text"}`,
    `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`), or null
    (or left out) when the message carries `tool_calls`; otherwise null reads as empty."""

    role: Required[Text]
    content: Text | list[OpenAITextPart | OpenAIImagePart] | None
    reasoning: Text
    tool_calls: list[OpenAIToolCall]
    name: Text
    tool_call_id: Text


@with_config(LENIENT)
class OpenAIStreamOptions(TypedDict, total=False):
    include_usage: bool


@with_config(LENIENT)
class OpenAIJsonSchema(TypedDict, total=False):
    name: Text
    schema: JsonObject
    strict: bool | None


@with_config(LENIENT)
class OpenAIResponseFormat(TypedDict, total=False):
    """`json_object` asks for JSON, `json_schema` for JSON following `json_schema.schema`."""

    type: Required[Text]
    json_schema: OpenAIJsonSchema


Stop = Annotated[Text | list[Text], doc("One stop sequence or a list of them.")]
REASONING_EFFORTS = ("high", "medium", "low", "none")
Effort = Annotated[
    Literal["high", "medium", "low", "none"] | None,
    WithJsonSchema(
        {
            "type": "string",
            "enum": [*REASONING_EFFORTS, None],
            "nullable": True,
            "description": "How hard a thinking model thinks; `none`: not at all.",
        }
    ),
]
Number = float


@with_config(LENIENT)
class OpenAIReasoning(TypedDict, total=False):
    effort: Effort


@with_config(LENIENT)
class OpenAIChatRequest(TypedDict, total=False):
    """`POST /v1/chat/completions`. Unknown fields are ignored."""

    model: Required[ModelName]
    messages: Required[Annotated[list[OpenAIMessage], Field(min_length=1)]]
    stream: bool | None
    stream_options: OpenAIStreamOptions | None
    max_tokens: Annotated[int, doc("Ollama's `num_predict`.")] | None
    max_completion_tokens: Annotated[int, doc("As `max_tokens`, which wins.")] | None
    seed: int | None
    stop: Stop | None
    temperature: Annotated[Number, doc("Default 1.0.")] | None
    frequency_penalty: Number | None
    presence_penalty: Number | None
    top_p: Annotated[Number, doc("Default 1.0.")] | None
    response_format: OpenAIResponseFormat | None
    tools: list[OllamaTool] | None
    reasoning: OpenAIReasoning | None
    reasoning_effort: Effort
    logprobs: bool | None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None


@with_config(LENIENT)
class OpenAICompletionRequest(TypedDict, total=False):
    """`POST /v1/completions`. Unknown fields are ignored."""

    model: Required[ModelName]
    prompt: Text | None
    suffix: Text | None
    stream: bool | None
    stream_options: OpenAIStreamOptions | None
    max_tokens: int | None
    seed: int | None
    stop: Stop | None
    temperature: Number | None
    frequency_penalty: Number | None
    presence_penalty: Number | None
    top_p: Number | None
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None


@with_config(LENIENT)
class OpenAIEmbeddingRequest(TypedDict, total=False):
    """`POST /v1/embeddings`. Unknown fields are ignored."""

    model: Required[ModelName]
    input: Required[Text | Annotated[list[Text], Field(min_length=1)]]
    dimensions: Annotated[int, Field(ge=0, le=MAX_GO_INT)] | None
    encoding_format: Annotated[
        Literal["float", "base64"] | None,
        WithJsonSchema({"type": "string", "enum": ["float", "base64", None], "nullable": True}),
    ]


ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "chat": TypeAdapter(OpenAIChatRequest),
    "completions": TypeAdapter(OpenAICompletionRequest),
    "embeddings": TypeAdapter(OpenAIEmbeddingRequest),
}


def check(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """The known fields of ``body`` as sent, without nulls, once valid for ``endpoint``
    (a key of :data:`ADAPTERS`); else the 400 naming the first bad field. ``model`` is
    checked by the caller."""
    rest = {k: v for k, v in body.items() if k != "model" and v is not None}
    if endpoint == "chat":
        reasoning = rest.get("reasoning")
        effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
        for given in (effort, rest.get("reasoning_effort")):
            if given is not None and given not in REASONING_EFFORTS:
                raise InvalidRequest(  # Ollama's own text
                    f'invalid reasoning value: \'{given}\' (must be "high", "medium", '
                    '"low", or "none")',
                    field="reasoning_effort",
                )
    try:
        known = ADAPTERS[endpoint].validate_python({"model": "m", **rest})
    except ValidationError as exc:
        loc = exc.errors(include_url=False, include_input=False)[0]["loc"]
        if len(loc) > 3 and loc[0] == "messages" and loc[2] == "content":
            # Ollama's one sentence for any bad content part
            field = f"messages[{loc[1]}].content"
            raise InvalidRequest("invalid message format", field=field) from None
        raise invalid(exc) from None
    return {k: rest[k] for k in known if k in rest}


# ---------------------------------------------------------------------------- answers


class OpenAIErrorBody(TypedDict):
    message: Annotated[str, Field(min_length=1)]
    type: str
    """`invalid_request_error` (400), `not_found_error` (404), else `api_error`."""
    param: Any
    code: str | None


class OpenAIError(TypedDict):
    """Every error of the OpenAI-compatible API."""

    error: OpenAIErrorBody


class OpenAIUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class OpenAIChoice(TypedDict, total=False):
    index: Required[int]
    message: Required[dict[str, Any]]
    finish_reason: Required[str | None]
    """`stop`, `length`, `tool_calls` (or `load`, for an empty conversation)."""
    logprobs: dict[str, Any]


class OpenAIChatCompletion(TypedDict, total=False):
    """A chat completion (`stream: false`). With `stream: true` the answer is server-sent
    events, each `data: <chat.completion.chunk>`, then `data: [DONE]`."""

    id: Required[str]
    """`chatcmpl-` and the job id (see `/api/job/<id>`)."""
    object: Required[Literal["chat.completion"]]
    created: Required[int]
    model: Required[str]
    system_fingerprint: str
    choices: Required[list[OpenAIChoice]]
    usage: OpenAIUsage


class OpenAICompletion(TypedDict, total=False):
    """A text completion (`stream: false`); streamed as server-sent events like chat."""

    id: Required[str]
    object: Required[Literal["text_completion"]]
    created: Required[int]
    model: Required[str]
    system_fingerprint: str
    choices: Required[list[dict[str, Any]]]
    usage: OpenAIUsage


class OpenAIEmbedding(TypedDict):
    object: Literal["embedding"]
    embedding: list[float] | str
    """Floats, or with `encoding_format: base64` little-endian float32s in base64."""
    index: int


class OpenAIEmbeddingList(TypedDict):
    object: Literal["list"]
    data: list[OpenAIEmbedding]
    model: str
    usage: dict[str, int]


class OpenAIModel(TypedDict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class OpenAIModelList(TypedDict):
    object: Literal["list"]
    data: list[OpenAIModel]


MODELS: list[Any] = [
    OpenAIChatRequest,
    OpenAICompletionRequest,
    OpenAIEmbeddingRequest,
    OpenAIError,
    OpenAIChatCompletion,
    OpenAICompletion,
    OpenAIEmbeddingList,
    OpenAIModel,
    OpenAIModelList,
]
"""What the OpenAPI document takes from this module."""
