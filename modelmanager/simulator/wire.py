"""Ollama's wire format: Go-compatible JSON decoding errors, durations, names, timestamps.

Everything here is pure: no I/O, no clock except :func:`now_rfc3339`. Error texts are the
ones Ollama (Go's ``encoding/json``, ``time.ParseDuration``, gin) produces, so a client
tested against the simulator sees what it would see from Ollama.
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import UTC, datetime
from typing import Any

from modelmanager.names import InvalidModelName, display_name

#: The Ollama release whose request and response fields the simulator speaks (thinking
#: levels on every thinking model, tool call ids, logprobs). Its scheduler is Ollama's
#: v0.11.5+ one, with the pre-v0.15.5 default context of 4096 (no VRAM tiers).
VERSION = "0.21.2"
MAX_INT64_NS = 2**63 - 1

ERR_QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
ERR_LOAD_OOM = "llama runner process has terminated: CUDA error: out of memory"
ERR_RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an "
    "internal error, check ollama server logs for details"
)
ERR_MIDSTREAM_OOM = "an error was encountered while running the model: CUDA error: out of memory"
ERR_PULL_MISSING = "pull model manifest: file does not exist"
ERR_SHUTDOWN = "server is shutting down"
ERR_INVALID_NAME = "invalid model name"
ERR_TOP_LOGPROBS = "top_logprobs must be between 0 and 20"
ERR_CANCELED = "request canceled"
NOT_FOUND_TEXT = "404 page not found"


class ApiError(Exception):
    """An answer with an HTTP status and an ``{"error": message}`` body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def go_quote(text: str) -> str:
    """Approximately Go's ``%q`` / ``strconv.Quote``."""
    return json.dumps(text, ensure_ascii=False)


# --------------------------------------------------------------------------------------
# Durations and keep_alive


_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}  # fmt: skip
_NUMBER_RE = re.compile(r"(\d*)(?:\.(\d*))?")
_UNIT_RE = re.compile(r"[^\d.]*")


def parse_go_duration(text: str) -> float:
    """Parse ``text`` like Go's ``time.ParseDuration``; return seconds (may be negative).

    Raises ``ValueError`` whose message is Go's, e.g. ``time: missing unit in duration "300"``.
    """
    quoted = go_quote(text)
    rest = text
    negative = False
    if rest[:1] in ("-", "+"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0.0
    while rest:
        number = _NUMBER_RE.match(rest)
        assert number is not None  # the pattern matches the empty string
        whole, frac = number.group(1), number.group(2)
        if not whole and not frac:
            raise ValueError(f"time: invalid duration {quoted}")
        rest = rest[number.end() :]
        unit_match = _UNIT_RE.match(rest)
        unit = unit_match.group(0) if unit_match else ""
        if not unit:
            raise ValueError(f"time: missing unit in duration {quoted}")
        if unit not in _DURATION_UNITS:
            raise ValueError(f"time: unknown unit {go_quote(unit)} in duration {quoted}")
        rest = rest[len(unit) :]
        total += float(f"{whole or '0'}.{frac or '0'}") * _DURATION_UNITS[unit]
    return -total if negative else total


def parse_keep_alive(value: object) -> float | None:
    """A request's ``keep_alive`` in seconds, as Ollama's ``api.Duration`` reads it.

    ``None`` (absent or JSON null) → ``None`` (keep the runner's current duration); a number
    is seconds; a string is a Go duration (``"5m"``, ``"1h30m"``, ``"0s"``); anything
    negative is forever (``math.inf``). Raises ``ValueError`` with Ollama's message for a
    string without unit (``time: missing unit in duration "300"``) or another JSON type
    (``Unsupported type: 'bool'``).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("Unsupported type: 'bool'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = parse_go_duration(value)
    elif isinstance(value, dict):
        raise ValueError("Unsupported type: 'map[string]interface {}'")
    elif isinstance(value, list):
        raise ValueError("Unsupported type: '[]interface {}'")
    else:
        raise ValueError(f"Unsupported type: '{type(value).__name__}'")
    return math.inf if seconds < 0 else seconds


def parse_env_keep_alive(text: str) -> float:
    """``OLLAMA_KEEP_ALIVE`` syntax: a bare integer is seconds, else a Go duration; <0 = inf."""
    text = text.strip()
    try:
        seconds = float(int(text))
    except ValueError:
        seconds = parse_go_duration(text)
    return math.inf if seconds < 0 else seconds


def keep_alive_of(body: dict[str, Any]) -> float | None:
    """The body's ``keep_alive`` in seconds (see :func:`parse_keep_alive`), else 400."""
    try:
        return parse_keep_alive(body.get("keep_alive"))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


# --------------------------------------------------------------------------------------
# JSON decoding with Go's error texts


def json_kind(value: object) -> str:
    """The JSON type name Go's decoder uses in ``cannot unmarshal X into ...``."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _go_char(ch: str) -> str:
    """Go's ``quoteChar`` as used in ``invalid character ...`` messages."""
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    return "'" + json.dumps(ch, ensure_ascii=False)[1:-1] + "'"


def _innermost_container(doc: str, pos: int) -> str:
    """Whether ``pos`` sits inside an object (``{``) or an array (``[``) of ``doc``."""
    stack: list[str] = []
    in_string = escaped = False
    for ch in doc[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _go_json_error(doc: str, exc: json.JSONDecodeError) -> str:
    """Translate a Python JSON error into the message Go's ``encoding/json`` would give."""
    pos = exc.pos
    if pos >= len(doc) or exc.msg.startswith("Unterminated string"):
        return "unexpected EOF"
    ch = _go_char(doc[pos])
    msg = exc.msg
    if msg.startswith("Expecting property name"):
        return f"invalid character {ch} looking for beginning of object key string"
    if msg.startswith("Expecting ':'"):
        return f"invalid character {ch} after object key"
    if msg.startswith("Expecting ','"):
        if _innermost_container(doc, pos) == "[":
            return f"invalid character {ch} after array element"
        return f"invalid character {ch} after object key:value pair"
    if msg.startswith("Invalid control character"):
        return f"invalid character {ch} in string literal"
    if msg.startswith("Invalid \\escape"):
        nxt = doc[pos + 1] if pos + 1 < len(doc) else ""
        return (
            f"invalid character {_go_char(nxt)} in string escape code" if nxt else "unexpected EOF"
        )
    return f"invalid character {ch} looking for beginning of value"


class _BadConstant(ValueError):
    """NaN/Infinity: valid for Python's json, not for Go's."""


def _reject_constant(name: str) -> Any:
    raise _BadConstant(name)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def decode_body(raw: bytes, struct: str) -> dict[str, Any]:
    """Decode a request body as Go's ``ShouldBindJSON`` into ``api.<struct>`` would.

    Raises :class:`ApiError` 400 with ``missing request body`` for an empty body, or Go's
    decoder message. Trailing data after the first JSON value is ignored, as in Go.
    """
    text = raw.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    if not text:
        raise ApiError(400, "missing request body")
    try:
        value, _ = _DECODER.raw_decode(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, _go_json_error(text, exc)) from None
    except _BadConstant as exc:
        raise ApiError(
            400, f"invalid character {_go_char(str(exc)[0])} looking for beginning of value"
        ) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(
            400, f"json: cannot unmarshal {json_kind(value)} into Go value of type api.{struct}"
        )
    return value


# --------------------------------------------------------------------------------------
# Names, timestamps, durations on the wire


def canonical_name(name: str) -> str | None:
    """``name:tag`` in lower case as Ollama matches it, or None for an invalid name.

    ``llama3.2`` → ``llama3.2:latest``; ``registry.ollama.ai/library/x:1`` → ``x:1``;
    other namespaces keep their prefix (``me/x:latest``). The model's identity is
    :func:`modelmanager.names.model_key`; this is its short, lower-case spelling.
    """
    try:
        return display_name(name.strip()).lower()
    except InvalidModelName:
        return None


def rfc3339(ts: float) -> str:
    """UTC RFC3339 with fractional seconds, trailing zeros trimmed like Go's."""
    moment = datetime.fromtimestamp(ts, tz=UTC)
    frac = f"{moment.microsecond:06d}".rstrip("0")
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


def now_rfc3339() -> str:
    """``created_at`` of an answer: now, as :func:`rfc3339`."""
    return rfc3339(time.time())


def ns(seconds: float) -> int:
    """Seconds as Ollama's integer nanoseconds (never negative)."""
    return max(0, int(seconds * 1e9))


def to_json(obj: Any) -> bytes:
    """Compact JSON as Go's encoder writes it (UTF-8, no spaces)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
