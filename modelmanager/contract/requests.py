"""Job requests as pydantic models, and :func:`validate_submission` over them.

A request is one of three models, by job kind: :class:`GenerateJob`, :class:`ChatJob`,
:class:`EmbedJob`. Each holds the manager's own fields (``model``, ``priority``, ``kind``,
``metadata``, ``idempotency_key``) and every field Ollama's endpoint for that kind accepts.
Models are strict: no coercion, so a value that passes is the value sent, and the payload
forwards it unchanged. Every refusal is an :class:`InvalidRequest` (400) whose sentence
names the first bad field and whose ``details.field`` is that field's path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Required

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from ..errors import InvalidRequest
from ..models import JobKind, JobStatus, Priority
from .fields import (
    DEFAULT_LIST,
    MAX_BATCH,
    MAX_GO_INT,
    MAX_LIST,
    MAX_MESSAGES,
    MAX_NUM_CTX,
    MAX_TOP_LOGPROBS,
    AnyJson,
    EmbedInput,
    Format,
    IdempotencyKey,
    Images,
    JsonObject,
    KeepAlive,
    Metadata,
    ModelName,
    NonBlankText,
    Text,
    Think,
    check_model_name,
    optional,
)

_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


def doc(text: str) -> Any:
    """A field's description in the OpenAPI document."""
    return Field(description=text)


# Requests are TypedDicts, not BaseModels: validating one builds a plain dict of the fields
# present, about twice as fast as building a model with every default on the submit path.

# ------------------------------------------------------------------------ option table


@with_config(_STRICT)
class Options(TypedDict, total=False):
    """Ollama runtime options; only these keys. `keep_alive` is not one: it is a field of
    the job."""

    temperature: float
    top_p: float
    min_p: float
    typical_p: float
    repeat_penalty: float
    presence_penalty: float
    frequency_penalty: float
    mirostat_tau: float
    mirostat_eta: float
    tfs_z: float
    num_keep: int
    seed: int
    num_predict: int
    top_k: int
    repeat_last_n: int
    mirostat: int
    num_ctx: Annotated[int, Field(ge=1, le=MAX_NUM_CTX)]
    num_batch: int
    num_gpu: int
    main_gpu: int
    num_thread: int
    use_mmap: bool
    penalize_newline: bool
    stop: list[str]
    # runner options of older Ollama versions (a newer one ignores them, with a warning)
    use_mlock: bool
    numa: bool
    low_vram: bool


# ------------------------------------------------------------------------------ chat


@with_config(_STRICT)
class ToolCallFunction(TypedDict, total=False):
    name: Required[NonBlankText]
    arguments: Required[JsonObject]
    index: Annotated[int, Field(ge=0, le=MAX_GO_INT)]


@with_config(_STRICT)
class ToolCall(TypedDict, total=False):
    """A call the assistant made, as Ollama returned it."""

    function: Required[ToolCallFunction]
    id: Text


@with_config(_STRICT)
class Message(TypedDict, total=False):
    """One chat message."""

    role: Required[Literal["system", "user", "assistant", "tool"]]
    content: Annotated[Text, doc("Default empty.")]
    thinking: Annotated[Text, doc("The assistant's thinking, sent back in a later turn.")]
    images: Images
    tool_calls: Annotated[
        list[ToolCall], doc("The assistant's tool calls, sent back in a later turn.")
    ]
    tool_name: Annotated[Text, doc("On a `tool` message: the tool whose result this is.")]
    tool_call_id: Annotated[Text, doc("On a `tool` message: the call this answers.")]


@with_config(_STRICT)
class ToolFunction(TypedDict, total=False):
    name: Required[NonBlankText]
    description: Text
    parameters: Annotated[JsonObject, doc("The arguments, as a JSON schema object.")]


@with_config(_STRICT)
class Tool(TypedDict, total=False):
    """A function the model may call."""

    type: Required[Literal["function"]]
    function: Required[ToolFunction]
    items: AnyJson


# ------------------------------------------------------------------------------ jobs

_THINK = doc("Let a thinking model think (true/false) or say how hard (low, medium, high, max).")
_SHIFT = doc("Shift the context when it fills instead of failing.")
_LOGPROBS = doc("Return the log probability of each output token.")
_TOP_LOGPROBS = Field(ge=0, le=MAX_TOP_LOGPROBS, description="Alternatives per token to return.")
_STREAM = doc("Accepted and ignored: a job always collects the whole answer.")


@with_config(_STRICT)
class _Job(TypedDict, total=False):
    model: Required[ModelName]
    priority: Annotated[
        Priority,
        Field(strict=False, json_schema_extra={"default": Priority.NORMAL.value}),
        doc("Where the job waits among others: `high` first, then `normal`, then `low`."),
    ]
    options: Options
    keep_alive: KeepAlive
    metadata: Metadata
    idempotency_key: IdempotencyKey


@with_config(_STRICT)
class GenerateJob(_Job, total=False):
    """A generate job (Ollama /api/generate). `kind` may be left out: `prompt` makes one."""

    kind: Literal["generate"]
    prompt: Required[NonBlankText]
    suffix: Annotated[Text, doc("Text after the insertion point (fill-in-the-middle).")]
    system: Annotated[Text, doc("Replaces the model's system prompt.")]
    template: Annotated[Text, doc("Replaces the model's prompt template.")]
    context: Annotated[
        list[Annotated[int, Field(ge=0, le=MAX_GO_INT)]],
        doc("The `context` of an earlier generate job, to continue it."),
    ]
    raw: Annotated[bool, doc("Send the prompt as is, without the template.")]
    format: Format
    images: Images
    think: Annotated[Think, _THINK]
    truncate: Annotated[bool, doc("Cut the prompt to the context length instead of failing.")]
    shift: Annotated[bool, _SHIFT]
    logprobs: Annotated[bool, _LOGPROBS]
    top_logprobs: Annotated[int, _TOP_LOGPROBS]
    stream: Annotated[bool, _STREAM]


@with_config(_STRICT)
class ChatJob(_Job, total=False):
    """A chat job (Ollama /api/chat). `kind` may be left out: `messages` makes one."""

    kind: Literal["chat"]
    messages: Required[Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]]
    tools: list[Tool]
    format: Format
    think: Annotated[Think, _THINK]
    truncate: Annotated[bool, doc("Drop the oldest messages when they exceed the context length.")]
    shift: Annotated[bool, _SHIFT]
    logprobs: Annotated[bool, _LOGPROBS]
    top_logprobs: Annotated[int, _TOP_LOGPROBS]
    stream: Annotated[bool, _STREAM]


@with_config(_STRICT)
class EmbedJob(_Job, total=False):
    """An embed job (Ollama /api/embed). `kind` may be left out: `input` makes one."""

    kind: Literal["embed"]
    input: Required[EmbedInput]
    truncate: Annotated[
        bool, doc("Cut each input to the context length instead of failing (default true).")
    ]
    dimensions: Annotated[
        int, Field(ge=1, le=MAX_GO_INT, description="Shorten each vector to this many dimensions.")
    ]


@with_config(_STRICT)
class BatchSubmission(TypedDict):
    """Jobs accepted all together or not at all, in one transaction."""

    jobs: Annotated[
        list[GenerateJob | ChatJob | EmbedJob], Field(min_length=1, max_length=MAX_BATCH)
    ]


@dataclass(frozen=True)
class _KindSpec:
    adapter: TypeAdapter[Any]
    required: str  # the field that makes a job of this kind
    fields: frozenset[str]
    payload: frozenset[str]  # forwarded to Ollama as sent (keep_alive apart: in seconds)


# Not forwarded as sent: the manager's own fields, `stream` (a job always collects the
# whole answer) and `keep_alive` (converted to seconds).
_NOT_FORWARDED = frozenset(
    {"model", "priority", "kind", "metadata", "idempotency_key", "stream", "keep_alive"}
)


def _spec(model: Any, required: str) -> _KindSpec:
    fields = frozenset(model.__required_keys__ | model.__optional_keys__)
    return _KindSpec(TypeAdapter(model), required, fields, fields - _NOT_FORWARDED)


_KINDS = {
    JobKind.GENERATE: _spec(GenerateJob, "prompt"),
    JobKind.CHAT: _spec(ChatJob, "messages"),
    JobKind.EMBED: _spec(EmbedJob, "input"),
}
_KIND_NAMES = frozenset(k.value for k in JobKind)
FIELDS = frozenset().union(*(s.fields for s in _KINDS.values()))
"""Every top-level field a submission may have, whatever its kind."""


@dataclass
class Submission:
    """A valid job request. ``model`` is the name as sent; ``payload`` holds what goes to
    Ollama: the kind's Ollama fields as sent, and ``keep_alive`` in seconds (float)."""

    model: str
    kind: JobKind
    priority: Priority
    payload: dict[str, Any]
    metadata: Any
    idempotency_key: str | None


def validate_submission(body: Any) -> Submission:
    """Check one job request (decoded JSON); raise :class:`InvalidRequest` naming the
    first bad field. Pure; safe from any thread."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    body = without_nulls(body)
    if not FIELDS.issuperset(body):  # (no set built on the way to yes)
        unknown = sorted(body.keys() - FIELDS)
        raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}", field=unknown[0])
    kind = _kind(body)
    spec = _KINDS[kind]
    if spec.required not in body:
        raise InvalidRequest(
            f"'{spec.required}' is required for {_a(kind)} job", field=spec.required
        )
    if not spec.fields.issuperset(body):
        name = sorted(body.keys() - spec.fields)[0]
        raise InvalidRequest(f"'{name}' does not apply to {_a(kind)} job", field=name)
    try:
        job = spec.adapter.validate_python(body)
    except ValidationError as exc:
        raise invalid_request(exc) from None
    payload = {k: v for k, v in body.items() if k in spec.payload}
    if "keep_alive" in job:
        payload["keep_alive"] = job["keep_alive"]
    return Submission(
        model=body["model"],
        kind=kind,
        priority=job.get("priority", Priority.NORMAL),
        payload=payload,
        metadata=job.get("metadata"),
        idempotency_key=job.get("idempotency_key"),
    )


def without_nulls(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with ``null`` read as absent where Ollama reads it so: Go decodes a null
    field to its zero value (top-level fields, each message's fields) and
    ``Options.FromMap`` skips null options (api/types.go). ``metadata`` and the inside of
    JSON values (``format``, tool ``parameters``) are kept as sent. A new dict only when
    something was dropped."""
    if None not in body.values() and not _nested_nulls(body):
        return body
    out = {k: v for k, v in body.items() if v is not None}
    options = out.get("options")
    if isinstance(options, dict):
        out["options"] = {k: v for k, v in options.items() if v is not None}
    messages = out.get("messages")
    if isinstance(messages, list):
        out["messages"] = [
            {k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m
            for m in messages
        ]
    return out


def _nested_nulls(body: dict[str, Any]) -> bool:
    options, messages = body.get("options"), body.get("messages")
    if isinstance(options, dict) and None in options.values():
        return True
    return isinstance(messages, list) and any(
        isinstance(m, dict) and None in m.values() for m in messages
    )


def validate_model_name(value: Any, field: str = "model") -> str:
    """``value`` if it is a model name Ollama accepts, else a 400 naming ``field``."""
    try:
        return check_model_name(value)
    except ValueError as exc:  # PydanticCustomError is a ValueError
        raise InvalidRequest(f"'{field}' {exc}", field=field) from None


def _a(kind: JobKind) -> str:
    return f"an {kind.value}" if kind is JobKind.EMBED else f"a {kind.value}"


def _kind(body: dict[str, Any]) -> JobKind:
    if "kind" in body:
        value = body["kind"]
        if isinstance(value, str) and value in _KIND_NAMES:
            return JobKind(value)
        raise InvalidRequest("'kind' must be one of generate, chat, embed", field="kind")
    for field, kind in (("messages", JobKind.CHAT), ("input", JobKind.EMBED)):
        if field in body:
            return kind
    if "prompt" in body:
        return JobKind.GENERATE
    raise InvalidRequest(
        "one of 'prompt' (generate), 'messages' (chat) or 'input' (embed) is required",
        field="prompt",
    )


# --------------------------------------------------------------------------- errors

_PHRASES = {
    "missing": "is required",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "too_short": "must have at least {min_length} item(s)",
    "too_long": "must have at most {max_length} items",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "literal_error": "must be {expected}",
    "enum": "must be {expected}",
    "string_pattern_mismatch": "is not in the expected form",
}


def _path(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def invalid_request(exc: ValidationError) -> InvalidRequest:
    """The 400 for the first error pydantic found: a sentence, never pydantic's dump."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    kind, loc, ctx = first["type"], tuple(first["loc"]), first.get("ctx") or {}
    if kind == "extra_forbidden":
        parent = loc[:-1]
        keys = sorted(
            str(e["loc"][-1])
            for e in errors
            if e["type"] == "extra_forbidden" and tuple(e["loc"][:-1]) == parent
        )
        if parent == ("options",):
            message = f"'options.{keys[0]}' is not a known Ollama option"
        elif not parent:
            message = f"unknown field(s): {', '.join(keys)}"
        else:
            message = f"'{_path(parent)}' has unknown field(s): {', '.join(keys)}"
        return InvalidRequest(message, field=_path((*parent, keys[0])))
    path = _path(loc) + str(ctx.get("at", ""))
    if not path:
        return InvalidRequest("the request body must be a JSON object")
    if kind == "contract":
        phrase = str(ctx["reason"])
    elif kind in _PHRASES:
        phrase = _PHRASES[kind].format(**ctx)
    else:  # a check without a sentence of ours: pydantic's, which never quotes the input
        phrase = f"is not valid ({first['msg']})"
    return InvalidRequest(f"'{path}' {phrase}", field=path)


# ------------------------------------------------------------------------ job listing


class JobsQuery(BaseModel):
    """The query of `GET /api/jobs`."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    status: JobStatus = optional()
    """Only jobs in this status."""
    model: str = optional()
    """Only jobs of this model (compared as Ollama compares names: `llama3.2` is
    `llama3.2:latest`)."""
    limit: Annotated[int, Field(ge=1, le=MAX_LIST)] = DEFAULT_LIST
    """The most jobs in one page."""
    cursor: Annotated[str, Field(pattern="^[0-9]{1,18}$")] = optional()
    """Where the page starts: the `next_cursor` of the previous page. Opaque."""


def parse_jobs_query(args: Mapping[str, list[str]]) -> JobsQuery:
    """The query string of ``GET /api/jobs`` (each name with its values), checked: an
    unknown or repeated parameter is a 400 naming it, as is a bad value."""
    unknown = sorted(args.keys() - JobsQuery.model_fields.keys())
    if unknown:
        raise InvalidRequest(f"unknown query parameter(s): {', '.join(unknown)}", field=unknown[0])
    values: dict[str, Any] = {}
    for name, given in args.items():
        if len(given) != 1:
            raise InvalidRequest(f"'{name}' is given more than once", field=name)
        values[name] = given[0]
    limit = values.get("limit")
    if limit is not None:  # ASCII digits only: int() would also read " 5", "+5", "1_0"
        if not (limit.isascii() and limit.isdigit() and len(limit) <= 6):
            raise InvalidRequest(f"'limit' must be an integer from 1 to {MAX_LIST}", field="limit")
        values["limit"] = int(limit)
    cursor = values.get("cursor")
    if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
        raise InvalidRequest(
            "'cursor' must be the next_cursor of an earlier page, as it was given", field="cursor"
        )
    try:
        return JobsQuery.model_validate(values)
    except ValidationError as exc:
        raise invalid_request(exc) from None
