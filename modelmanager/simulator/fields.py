"""The request structs of Ollama's API (``api/types.go``) and their validation.

Each endpoint's body is checked field by field against the Go type it decodes into, so a
wrong JSON type gets Go's ``json: cannot unmarshal X into Go struct field S.f of type T``
400, nested fields included (``ChatRequest.messages.tool_calls.function.name``). Custom
Go types have their own texts: ``think`` (``api.ThinkValue``) and ``keep_alive``
(``api.Duration``, in :mod:`.wire`). Unknown fields are ignored, as Go ignores them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .wire import ERR_TOP_LOGPROBS, ApiError, go_quote, json_kind


@dataclass(frozen=True)
class GoType:
    """A Go type as ``encoding/json`` checks it. ``kind``: string, bool, int, map, list,
    struct or any; ``name`` is how Go prints the type in error messages."""

    name: str
    kind: str
    elem: GoType | None = None
    fields: Mapping[str, GoType] = field(default_factory=dict)


STRING = GoType("string", "string")
BOOL = GoType("bool", "bool")
INT = GoType("int", "int")
ANY = GoType("interface {}", "any")
MAP = GoType("map[string]interface {}", "map")
INT_LIST = GoType("[]int", "list", INT)
STR_LIST = GoType("[]string", "list", STRING)
IMAGES = GoType("[]api.ImageData", "list", GoType("api.ImageData", "string"))

_TOOL_CALL = GoType(
    "api.ToolCall",
    "struct",
    fields={
        "id": STRING,
        "function": GoType(
            "api.ToolCallFunction",
            "struct",
            fields={
                "index": INT,
                "name": STRING,
                "arguments": GoType("api.ToolCallFunctionArguments", "map"),
            },
        ),
    },
)
_MESSAGE = GoType(
    "api.Message",
    "struct",
    fields={
        "role": STRING,
        "content": STRING,
        "thinking": STRING,
        "images": IMAGES,
        "tool_calls": GoType("[]api.ToolCall", "list", _TOOL_CALL),
        "tool_name": STRING,
        "tool_call_id": STRING,
    },
)
_TOOL = GoType(
    "api.Tool",
    "struct",
    fields={
        "type": STRING,
        "function": GoType(
            "api.ToolFunction",
            "struct",
            fields={
                "name": STRING,
                "description": STRING,
                "parameters": GoType(
                    "api.ToolFunctionParameters",
                    "struct",
                    fields={
                        "type": STRING,
                        "required": STR_LIST,
                        "properties": GoType("map[string]api.ToolProperty", "map"),
                    },
                ),
            },
        ),
    },
)

# The fields of each request struct (``keep_alive``, ``think`` and ``input`` have custom
# decoders and are checked where they are read; ``format`` is a json.RawMessage: any JSON).
GENERATE_FIELDS: dict[str, GoType] = {
    "model": STRING,
    "prompt": STRING,
    "suffix": STRING,
    "system": STRING,
    "template": STRING,
    "context": INT_LIST,
    "stream": BOOL,
    "raw": BOOL,
    "format": ANY,
    "images": IMAGES,
    "options": MAP,
    "truncate": BOOL,
    "shift": BOOL,
    "logprobs": BOOL,
    "top_logprobs": INT,
}
CHAT_FIELDS: dict[str, GoType] = {
    "model": STRING,
    "messages": GoType("[]api.Message", "list", _MESSAGE),
    "stream": BOOL,
    "format": ANY,
    "tools": GoType("api.Tools", "list", _TOOL),
    "options": MAP,
    "truncate": BOOL,
    "shift": BOOL,
    "logprobs": BOOL,
    "top_logprobs": INT,
}
EMBED_FIELDS: dict[str, GoType] = {
    "model": STRING,
    "truncate": BOOL,
    "dimensions": INT,
    "options": MAP,
}
EMBEDDINGS_FIELDS: dict[str, GoType] = {"model": STRING, "prompt": STRING, "options": MAP}
SHOW_FIELDS: dict[str, GoType] = {
    "model": STRING,
    "name": STRING,
    "verbose": BOOL,
    "system": STRING,
}
PULL_FIELDS: dict[str, GoType] = {
    "model": STRING,
    "name": STRING,
    "insecure": BOOL,
    "stream": BOOL,
}
DELETE_FIELDS: dict[str, GoType] = {"model": STRING, "name": STRING}
COPY_FIELDS: dict[str, GoType] = {"source": STRING, "destination": STRING}


def _type_error(value: object, struct: str, path: str, gotype: GoType) -> ApiError:
    kind = json_kind(value)
    if kind == "number" and gotype.kind == "int":
        kind = f"number {value}"  # Go quotes the literal of a number that is no int
    return ApiError(
        400,
        f"json: cannot unmarshal {kind} into Go struct field {struct}.{path} of type {gotype.name}",
    )


def _check_value(value: object, gotype: GoType, struct: str, path: str) -> None:
    if value is None or gotype.kind == "any":
        return  # JSON null leaves Go's zero value
    kind = gotype.kind
    if kind == "list" and isinstance(value, list):
        if gotype.elem is not None:
            for item in value:
                _check_value(item, gotype.elem, struct, path)
        return
    if kind == "struct" and isinstance(value, dict):
        for name, sub in gotype.fields.items():
            _check_value(value.get(name), sub, struct, f"{path}.{name}")
        return
    if kind == "string":
        ok = isinstance(value, str)
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and float(value).is_integer()
        )
    elif kind == "map":
        ok = isinstance(value, dict)
    else:
        ok = False  # a list or struct type given another JSON type
    if not ok:
        raise _type_error(value, struct, path, gotype)


def check_fields(body: dict[str, Any], struct: str, fields: Mapping[str, GoType]) -> None:
    """400 with Go's message when a known field of ``body`` has the wrong JSON type."""
    for name, gotype in fields.items():
        _check_value(body.get(name), gotype, struct, name)


def check_top_logprobs(body: dict[str, Any]) -> None:
    """Ollama's range check, made right after decoding (before the model is looked up)."""
    top = body.get("top_logprobs")
    if top is not None and not 0 <= int(top) <= 20:
        raise ApiError(400, ERR_TOP_LOGPROBS)


# --------------------------------------------------------------------------------------
# think (api.ThinkValue)

THINK_LEVELS = ("high", "medium", "low", "max")  # api/types.go ThinkValue.UnmarshalJSON
_THINK_CHOICES = '"high", "medium", "low", "max", true, or false'


def parse_think(value: object) -> bool | str | None:
    """The request's ``think``: None (unset or null), True/False, or a level string.

    Raises :class:`ApiError` 400 with ``api.ThinkValue``'s texts for a string that is no
    level (``invalid think value: "top" (must be "high", "medium", "low", "max", true,
    or false)``) or another JSON type.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value not in THINK_LEVELS:
            raise ApiError(
                400, f"invalid think value: {go_quote(value)} (must be {_THINK_CHOICES})"
            )
        return value
    raise ApiError(400, f"think must be a boolean or string ({_THINK_CHOICES})")


def think_level(think: bool | str | None, model_thinks: bool) -> str | None:
    """The level a model thinks at for this request, or None when it does not think.

    A thinking model thinks unless ``think`` is false (unset means true, as in Ollama);
    ``true`` is the medium level.
    """
    if not model_thinks or think is False:
        return None
    if think is None or think is True:
        return "medium"
    return think


# --------------------------------------------------------------------------------------
# Benchmark tags

#: ``[bench:<tag>]`` at the start of a prompt: the tag goes into the request log.
BENCH_TAG_RE = re.compile(r"\[bench:([A-Za-z0-9_.:-]{1,64})\]")


def bench_tag(text: object) -> str | None:
    """The ``<tag>`` of a ``[bench:<tag>]`` prefix of ``text``, else None."""
    if not isinstance(text, str) or not text.startswith("[bench:"):
        return None
    match = BENCH_TAG_RE.match(text)
    return match.group(1) if match else None
