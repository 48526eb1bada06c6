"""The limits and the field types of job requests: one check and one schema per type.

Each type is an ``Annotated`` pydantic type whose validator returns the value unchanged
(``KeepAlive`` alone converts: to seconds) and whose JSON schema, written beside it in the
OpenAPI 3.0 dialect, says what the validator accepts. Where JSON Schema cannot say it
(sizes in UTF-8 bytes, serialized size, nesting depth) the description does. A validator
refuses with :func:`fail`, a sentence that the request module prefixes with the field's
path: ``'messages[2].content' must not contain NUL characters``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Annotated, Any, NoReturn

from pydantic import Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from .. import names

MAX_MODEL_NAME = names.MAX_NAME_LENGTH  # characters, after an http(s):// prefix
MAX_TEXT_BYTES = 1024 * 1024  # UTF-8 bytes of each prompt, system, content, input string...
MAX_MESSAGES = 1000
MAX_INPUTS = 1000
MAX_IMAGES = 16  # per request and per message
MAX_IMAGE_BYTES = 16 * 1024 * 1024  # decoded
MAX_IMAGE_CHARS = (MAX_IMAGE_BYTES * 4 + 3) // 3  # the longest base64 text within it
MAX_METADATA_BYTES = 64 * 1024  # serialized as JSON
MAX_IDEMPOTENCY_KEY = 200  # characters
MAX_NUM_CTX = 1 << 20  # tokens: 1,048,576, past today's longest-context models (Ollama has no cap)
MAX_JSON_DEPTH = 64  # metadata, format, tool objects: deeper JSON can exhaust the stack
MAX_TOP_LOGPROBS = 20  # Ollama refuses more
MAX_GO_INT = 2**63 - 1  # Ollama decodes these integers as Go's int
MAX_KEEP_ALIVE_SECONDS = 9223372036  # Go's time.Duration range, about 292 years
MAX_BATCH = 10_000  # jobs in one submit_batch
MAX_LIST = 1000  # jobs in one /api/jobs page
DEFAULT_LIST = 100

Schema = dict[str, Any]


def optional() -> Any:
    """A field that may be left out and, on a model, reads None then; given, it must be
    of its type (so not null). A fresh FieldInfo per call."""
    return Field(default=None)


def fail(reason: str, at: str = "") -> NoReturn:
    """Refuse the value: ``reason`` completes a sentence that starts with the field's
    path, ``at`` (such as ``"[3]"``) narrows that path to an element."""
    raise PydanticCustomError("contract", "{reason}", {"reason": reason, "at": at})


# ------------------------------------------------------------------------------ text

NO_NUL: Schema = {"pattern": "\\u0000"}  # used under "not"


#: "has a character that is not white space", white space as ``str.isspace`` counts it,
#: spelt out: ``\S`` differs between regex dialects (ECMA's ``\s`` lacks U+001C to U+001F
#: and U+0085, and has U+FEFF)
NON_BLANK = (
    "[^\\u0009-\\u000d\\u001c-\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000]"
)


def _text_schema(non_blank: bool) -> Schema:
    schema: Schema = {
        "type": "string",
        "maxLength": MAX_TEXT_BYTES,
        "not": NO_NUL,
        "description": f"At most {MAX_TEXT_BYTES} bytes in UTF-8; no NUL characters; valid "
        "Unicode (no lone surrogates).",
    }
    if non_blank:  # a pattern searches: "has a character that is not white space"
        schema.update(minLength=1, pattern=NON_BLANK)
    return schema


def check_text(value: Any, non_blank: bool = False, at: str = "") -> str:
    """``value`` if it is text of at most MAX_TEXT_BYTES bytes in UTF-8, without NUL
    characters or lone surrogates (JSON can carry ``"\\ud800"``, UTF-8 cannot)."""
    if not isinstance(value, str):
        fail("must be a string", at)
    if value.isascii():
        size = len(value)
    else:
        try:
            size = len(value.encode())
        except UnicodeEncodeError:
            fail("must be valid Unicode text (no lone surrogates)", at)
    if size > MAX_TEXT_BYTES:
        fail(f"is larger than {MAX_TEXT_BYTES} bytes in UTF-8", at)
    if "\x00" in value:
        fail("must not contain NUL characters", at)
    if non_blank and (not value or value.isspace()):
        fail("must not be empty", at)
    return value


# (a lambda: pydantic would pass a second positional parameter its ValidationInfo)
Text = Annotated[str, PlainValidator(lambda v: check_text(v)), WithJsonSchema(_text_schema(False))]
NonBlankText = Annotated[
    str, PlainValidator(lambda v: check_text(v, True)), WithJsonSchema(_text_schema(True))
]


def _input(value: Any) -> str | list[str]:
    if isinstance(value, list):
        if not 0 < len(value) <= MAX_INPUTS:
            fail(f"must be a non-empty string or a list of 1 to {MAX_INPUTS} strings")
        for i, item in enumerate(value):
            check_text(item, True, f"[{i}]")
        return value
    if isinstance(value, str):
        return check_text(value, True)
    fail(f"must be a non-empty string or a list of 1 to {MAX_INPUTS} strings")


EmbedInput = Annotated[
    str | list[str],
    PlainValidator(_input),
    WithJsonSchema(
        {
            "anyOf": [
                _text_schema(True),
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_INPUTS,
                    "items": _text_schema(True),
                },
            ]
        }
    ),
]

# ------------------------------------------------------------------------ model name


def check_model_name(value: Any) -> str:
    """``value`` if Ollama's name grammar (:func:`names.parse`) accepts it, unchanged."""
    if not isinstance(value, str) or not value:
        fail("is required and must be a non-empty string")
    try:
        names.parse(value)
    except names.InvalidModelName:
        fail(
            "is not a valid Ollama model name (expected [host/][namespace/]name[:tag]: "
            "letters, digits, '_', '.' and '-', each part starting with a letter, digit or "
            "'_', no '.' in the namespace, a ':port' only in the host, at most "
            f"{MAX_MODEL_NAME} characters)"
        )
    return value


# names.parse's grammar (Ollama's isValidPart) as a pattern without look-ahead, so that
# every JSON Schema engine and hypothesis can use it. A part starts with a letter, digit
# or "_", then has those, "-" and "." (not in a namespace) and ":" (in a host only).
_PART = "[A-Za-z0-9_][A-Za-z0-9_.-]*"
_NAMESPACE = "[A-Za-z0-9_][A-Za-z0-9_-]*"
_HOST = "[A-Za-z0-9_][A-Za-z0-9_.:-]*"
MODEL_NAME_PATTERN = f"(?:(?:{_HOST}/)?{_NAMESPACE}/)?{_PART}(?::{_PART})?"


def _model_name_schema() -> Schema:
    branches = [
        {"pattern": f"^{prefix}{MODEL_NAME_PATTERN}$", "maxLength": len(prefix) + MAX_MODEL_NAME}
        for prefix in ("", "http://", "https://")
    ]
    return {
        "type": "string",
        "minLength": 1,
        "anyOf": branches,
        "description": "An Ollama model name, [host/][namespace/]model[:tag], kept as sent "
        "(names are compared as Ollama compares them: case-insensitive, `:latest` and "
        "`library/` filled in). An `http://` or `https://` prefix is dropped, as Ollama "
        "drops it.",
        "example": "llama3.2:1b",
    }


ModelName = Annotated[str, PlainValidator(check_model_name), WithJsonSchema(_model_name_schema())]

# ---------------------------------------------------------------------------- images

# Strict, padded base64 as base64.b64decode(..., validate=True) reads it.
BASE64_PATTERN = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


def _images(value: Any) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_IMAGES:
        fail(f"must be a list of at most {MAX_IMAGES} base64 strings")
    for i, image in enumerate(value):
        at = f"[{i}]"
        if not isinstance(image, str) or not image:
            fail("must be a base64 string", at)
        if len(image) > MAX_IMAGE_CHARS:
            fail(f"is larger than {MAX_IMAGE_BYTES} bytes", at)
        try:
            base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            fail("is not valid base64", at)
    return value


Images = Annotated[
    list[str],
    PlainValidator(_images),
    WithJsonSchema(
        {
            "type": "array",
            "maxItems": MAX_IMAGES,
            "items": {
                "type": "string",
                "minLength": 4,
                "maxLength": MAX_IMAGE_CHARS,
                "pattern": BASE64_PATTERN,
            },
            "description": f"Strict padded base64 strings, each at most {MAX_IMAGE_BYTES} "
            "bytes decoded.",
        }
    ),
]

# -------------------------------------------------------------------------- free JSON


def json_depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (a scalar is 0), without recursion;
    counting stops past MAX_JSON_DEPTH."""
    deepest = 0
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, level = stack.pop()
        if level > deepest:
            deepest = level
            if level > MAX_JSON_DEPTH:
                break
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, (dict, list)):
                stack.append((child, level + 1))
    return deepest


def _shallow(value: Any) -> Any:
    if json_depth(value) > MAX_JSON_DEPTH:
        fail(f"is nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        fail("must be an object")
    return _shallow(value)


_DEPTH = f"Nested at most {MAX_JSON_DEPTH} levels."
AnyJson = Annotated[Any, PlainValidator(_shallow), WithJsonSchema({"description": _DEPTH})]
JsonObject = Annotated[
    dict[str, Any],
    PlainValidator(_object),
    WithJsonSchema({"type": "object", "description": f"Any JSON object. {_DEPTH}"}),
]


def _format(value: Any) -> Any:
    if value != "json" and not isinstance(value, dict):
        fail('must be "json" or a JSON schema object')
    return _shallow(value)


Format = Annotated[
    Any,
    PlainValidator(_format),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string", "enum": ["json"]}, {"type": "object"}],
            "description": '"json", or a JSON schema object the answer must follow. ' + _DEPTH,
        }
    ),
]


def _metadata(value: Any) -> Any:
    if value is None:
        return None
    try:
        text = json.dumps(value)
    except RecursionError:
        fail(f"is nested more than {MAX_JSON_DEPTH} levels deep")
    if len(text) > MAX_METADATA_BYTES:
        fail(f"is larger than {MAX_METADATA_BYTES} bytes")
    if text.count("{") + text.count("[") > MAX_JSON_DEPTH:  # else it cannot be too deep
        _shallow(value)
    return value


Metadata = Annotated[
    Any,
    PlainValidator(_metadata),
    WithJsonSchema(
        {
            "description": "Any JSON, stored and echoed with the job, never interpreted. At "
            f"most {MAX_METADATA_BYTES} bytes serialized; {_DEPTH.lower()}"
        }
    ),
]


def _idempotency_key(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_IDEMPOTENCY_KEY:
        fail(f"must be a string of 1 to {MAX_IDEMPOTENCY_KEY} characters")
    try:
        value.encode()  # the store binds it as SQLite text
    except UnicodeEncodeError:
        fail("must be valid Unicode text (no lone surrogates)")
    return value


IdempotencyKey = Annotated[
    str | None,
    PlainValidator(_idempotency_key),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_IDEMPOTENCY_KEY,
            "nullable": True,
            "description": "A second submit with the same key returns the first job.",
        }
    ),
]

# ---------------------------------------------------------------- think, keep_alive

THINK_LEVELS = ("low", "medium", "high", "max")  # Ollama's ThinkValue


def _think(value: Any) -> bool | str:
    if not isinstance(value, bool) and value not in THINK_LEVELS:
        fail(f"must be true, false or one of {', '.join(THINK_LEVELS)}")
    return value


Think = Annotated[
    bool | str,
    PlainValidator(_think),
    WithJsonSchema(
        {"anyOf": [{"type": "boolean"}, {"type": "string", "enum": list(THINK_LEVELS)}]}
    ),
]

# Go's time.ParseDuration grammar: a sign, then "0" or numbers each with a unit.
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3}
_UNIT_SECONDS.update({"s": 1, "m": 60, "h": 3600})
_UNITS = "ns|us|µs|μs|ms|s|m|h"
_NUMBER = "(?:[0-9]+(?:\\.[0-9]*)?|\\.[0-9]+)"
DURATION_PATTERN = f"^[-+]?(?:0|(?:{_NUMBER}(?:{_UNITS}))+)$"
_DURATION = re.compile(DURATION_PATTERN[:-1])  # used with fullmatch: "$" allows a "\n"
_COMPONENT = re.compile(f"({_NUMBER})({_UNITS})")
_KEEP_ALIVE_ERROR = (
    'must be a number of seconds or a duration such as "5m", "1h30m" or "-1s" '
    "(negative: until evicted; 0: unload once idle)"
)


def keep_alive_seconds(value: Any) -> float:
    """Ollama's ``keep_alive`` forms as seconds: a JSON number is seconds, a string is a
    Go duration (``"5m"``, ``"1h30m"``, ``"-1s"``, ``"0"``). Negative means "until evicted",
    0 "unload once idle". Values past Go's duration range (about 292 years) are clamped to
    it, which keeps every value a finite float."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        fail(_KEEP_ALIVE_ERROR)
    if isinstance(value, str):
        if not _DURATION.fullmatch(value):
            fail(_KEEP_ALIVE_ERROR)
        total = sum(float(n) * _UNIT_SECONDS[u] for n, u in _COMPONENT.findall(value))
        seconds: float = -total if value.startswith("-") else total
    elif isinstance(value, float) and not math.isfinite(value):
        fail("must be a finite number of seconds")
    else:
        seconds = value
    bound = MAX_KEEP_ALIVE_SECONDS
    return float(max(-bound, min(bound, seconds))) + 0.0  # + 0.0: no "-0.0"


KeepAlive = Annotated[
    float,
    PlainValidator(keep_alive_seconds),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number"}, {"type": "string", "pattern": DURATION_PATTERN}],
            "description": "How long the model stays loaded once idle after this job: a "
            'number of seconds or a Go duration ("5m", "1h30m", "-1s", "0"). Negative: until '
            "evicted for other work; 0: unload once idle. The manager, not Ollama, enforces "
            "it, and may still evict earlier for a higher-ranked need.",
        }
    ),
]
