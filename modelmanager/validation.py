"""Validation of job submissions: every field, every error a 400 naming the field.

Pure functions over decoded JSON. Limits are module constants (documented in the README).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest
from .models import JobKind, Priority

MAX_MODEL_NAME = 128
MAX_TEXT_BYTES = 1024 * 1024  # prompt, system, each message content, each input string
MAX_MESSAGES = 1000
MAX_INPUTS = 1000
MAX_IMAGES = 16
MAX_IMAGE_BYTES = 16 * 1024 * 1024  # decoded
MAX_METADATA_BYTES = 64 * 1024
MAX_IDEMPOTENCY_KEY = 200
MAX_NUM_CTX = 131072
MAX_JSON_DEPTH = 64  # metadata and format: deeper JSON can exhaust the stack when stored

FIELDS = frozenset(
    {
        "model",
        "priority",
        "kind",
        "prompt",
        "messages",
        "input",
        "images",
        "system",
        "format",
        "options",
        "metadata",
        "idempotency_key",
    }
)
ROLES = frozenset({"system", "user", "assistant", "tool"})

# Ollama's grammar: [host[:port]/][namespace/]model[:tag]; parts of letters, digits, _ . -
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_MODEL_RE = re.compile(
    rf"^(?:{_PART}(?::[0-9]+)?/)?(?:[A-Za-z0-9_][A-Za-z0-9_-]*/)?{_PART}(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?$"
)

# option name -> accepted JSON types (bool is checked apart: it is an int in Python)
_NUM = (int, float)
OPTIONS: dict[str, tuple[type, ...]] = {
    **{
        k: _NUM
        for k in (
            "temperature",
            "top_p",
            "min_p",
            "typical_p",
            "repeat_penalty",
            "presence_penalty",
            "frequency_penalty",
            "mirostat_tau",
            "mirostat_eta",
            "tfs_z",
        )
    },
    **{
        k: (int,)
        for k in (
            "num_keep",
            "seed",
            "num_predict",
            "top_k",
            "repeat_last_n",
            "mirostat",
            "num_ctx",
            "num_batch",
            "num_gpu",
            "main_gpu",
            "num_thread",
        )
    },
    "use_mmap": (bool,),
    "penalize_newline": (bool,),
    "stop": (list,),
}


@dataclass
class Submission:
    model: str
    kind: JobKind
    priority: Priority
    payload: dict[str, Any]
    metadata: Any
    idempotency_key: str | None


def _utf8(value: str, field: str) -> bytes:
    """``value`` in UTF-8; a lone surrogate (JSON allows "\\ud800") is not text."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            f"'{field}' must be valid Unicode text (no lone surrogates)", field=field
        ) from None


def _depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            level += 1
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                break
            stack.extend((v, level) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _text(value: Any, field: str, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"'{field}' must be a string", field=field)
    if "\x00" in value:
        raise InvalidRequest(f"'{field}' must not contain NUL characters", field=field)
    if len(_utf8(value, field)) > MAX_TEXT_BYTES:
        raise InvalidRequest(f"'{field}' is larger than {MAX_TEXT_BYTES} bytes", field=field)
    if not allow_empty and not value.strip():
        raise InvalidRequest(f"'{field}' must not be empty", field=field)
    return value


def validate_model_name(value: Any, field: str = "model") -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{field}' is required and must be a non-empty string", field=field)
    # fullmatch, not match: "$" would let a trailing newline through
    if len(value) > MAX_MODEL_NAME or ".." in value or not _MODEL_RE.fullmatch(value):
        raise InvalidRequest(
            f"'{field}' is not a valid Ollama model name (expected [namespace/]name[:tag], "
            f"letters, digits, '_', '.', '-', at most {MAX_MODEL_NAME} characters)",
            field=field,
        )
    return value


def _images(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_IMAGES:
        raise InvalidRequest(
            f"'{field}' must be a list of at most {MAX_IMAGES} base64 strings", field=field
        )
    for i, image in enumerate(value):
        if not isinstance(image, str) or not image:
            raise InvalidRequest(f"'{field}[{i}]' must be a base64 string", field=field)
        if len(image) * 3 // 4 > MAX_IMAGE_BYTES:
            raise InvalidRequest(
                f"'{field}[{i}]' is larger than {MAX_IMAGE_BYTES} bytes", field=field
            )
        try:
            base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"'{field}[{i}]' is not valid base64", field=field) from None
    return value


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value or len(value) > MAX_MESSAGES:
        raise InvalidRequest(
            f"'messages' must be a non-empty list of at most {MAX_MESSAGES} messages",
            field="messages",
        )
    out = []
    for i, msg in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidRequest(f"'{where}' must be an object", field="messages")
        unknown = set(msg) - {"role", "content", "images"}
        if unknown:
            raise InvalidRequest(
                f"'{where}' has unknown field(s): {', '.join(sorted(unknown))}", field="messages"
            )
        if msg.get("role") not in ROLES:
            raise InvalidRequest(
                f"'{where}.role' must be one of {', '.join(sorted(ROLES))}", field="messages"
            )
        clean: dict[str, Any] = {
            "role": msg["role"],
            "content": _text(msg.get("content", ""), f"{where}.content"),
        }
        if "images" in msg:
            clean["images"] = _images(msg["images"], f"{where}.images")
        out.append(clean)
    return out


def _input(value: Any) -> str | list[str]:
    if isinstance(value, str):
        return _text(value, "input", allow_empty=False)
    if isinstance(value, list) and value and len(value) <= MAX_INPUTS:
        return [_text(v, f"input[{i}]", allow_empty=False) for i, v in enumerate(value)]
    raise InvalidRequest(
        f"'input' must be a non-empty string or a list of 1 to {MAX_INPUTS} strings",
        field="input",
    )


def _options(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest("'options' must be an object", field="options")
    items: dict[str, Any] = value
    for key in items:
        item: Any = items[key]
        kinds = OPTIONS.get(key)
        if kinds is None:
            raise InvalidRequest(f"'options.{key}' is not a known Ollama option", field="options")
        is_bool = isinstance(item, bool)
        if (bool in kinds) != is_bool or not isinstance(items[key], kinds):
            names = "/".join(k.__name__ for k in kinds)
            raise InvalidRequest(f"'options.{key}' must be of type {names}", field="options")
        if isinstance(item, float) and not math.isfinite(item):
            raise InvalidRequest(f"'options.{key}' must be a finite number", field="options")
        if key == "stop" and not all(isinstance(s, str) for s in item):
            raise InvalidRequest("'options.stop' must be a list of strings", field="options")
        if key == "num_ctx" and not 1 <= item <= MAX_NUM_CTX:
            raise InvalidRequest(
                f"'options.num_ctx' must be between 1 and {MAX_NUM_CTX}", field="options"
            )
    return value


def validate_submission(body: Any) -> Submission:
    """Check one job submission; raise :class:`InvalidRequest` naming the first bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    unknown = set(body) - FIELDS
    if unknown:
        raise InvalidRequest(
            f"unknown field(s): {', '.join(sorted(unknown))}", field=sorted(unknown)[0]
        )
    model = validate_model_name(body.get("model"))
    priority_raw = body.get("priority", "normal")
    try:
        priority = Priority(priority_raw)
    except (ValueError, TypeError):
        raise InvalidRequest(
            "'priority' must be one of high, normal, low", field="priority"
        ) from None
    kind = _kind(body)
    payload: dict[str, Any] = {}
    if kind is JobKind.GENERATE:
        payload["prompt"] = _text(body.get("prompt"), "prompt", allow_empty=False)
        if "images" in body:
            payload["images"] = _images(body["images"], "images")
        if "system" in body:
            payload["system"] = _text(body["system"], "system")
    elif kind is JobKind.CHAT:
        payload["messages"] = _messages(body.get("messages"))
    else:
        payload["input"] = _input(body.get("input"))
    for name in ("prompt", "messages", "input", "images", "system"):
        if name in body and name not in payload:
            raise InvalidRequest(f"'{name}' does not apply to a {kind.value} job", field=name)
    if "format" in body:
        fmt = body["format"]
        if kind is JobKind.EMBED or not (fmt == "json" or isinstance(fmt, dict)):
            raise InvalidRequest(
                "'format' must be \"json\" or a JSON schema object (generate and chat only)",
                field="format",
            )
        if _depth(fmt) > MAX_JSON_DEPTH:
            raise InvalidRequest(
                f"'format' is nested more than {MAX_JSON_DEPTH} levels deep", field="format"
            )
        payload["format"] = fmt
    if "options" in body:
        payload["options"] = _options(body["options"])
    metadata = body.get("metadata")
    if _depth(metadata) > MAX_JSON_DEPTH:
        raise InvalidRequest(
            f"'metadata' is nested more than {MAX_JSON_DEPTH} levels deep", field="metadata"
        )
    if metadata is not None and len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        raise InvalidRequest(
            f"'metadata' is larger than {MAX_METADATA_BYTES} bytes", field="metadata"
        )
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY):
        raise InvalidRequest(
            f"'idempotency_key' must be a string of 1 to {MAX_IDEMPOTENCY_KEY} characters",
            field="idempotency_key",
        )
    if key is not None:
        _utf8(key, "idempotency_key")  # the store binds it as SQLite text
    return Submission(model, kind, priority, payload, metadata, key)


def _kind(body: dict[str, Any]) -> JobKind:
    if "kind" in body:
        try:
            return JobKind(body["kind"])
        except (ValueError, TypeError):
            raise InvalidRequest(
                "'kind' must be one of generate, chat, embed", field="kind"
            ) from None
    if "messages" in body:
        return JobKind.CHAT
    if "input" in body:
        return JobKind.EMBED
    if "prompt" in body:
        return JobKind.GENERATE
    raise InvalidRequest(
        "one of 'prompt' (generate), 'messages' (chat) or 'input' (embed) is required",
        field="prompt",
    )
