#!/usr/bin/env python3
"""An Ollama simulator with VRAM accounting, for tests and demos without a GPU.

It speaks Ollama's HTTP API (the subset ``../shared/OLLAMA_FACTS.md`` §1 describes: field
names, status codes, error texts, NDJSON streaming) and reproduces Ollama's scheduler as of
v0.11.5+ (§2): a fast path for loaded models, ONE FIFO pending queue worked by ONE scheduler
thread with head-of-line blocking, one load at a time, per-runner ``num_parallel`` slots,
eviction by (keep_alive, name) with idle runners first, a max-loaded-models cap, reloads
when runner options change, idle expiry, and an asynchronous unload whose VRAM comes back
with a lag.

The GPU is simulated: Ollama's fit check only sees its own runners, while a settable
"other program" also holds memory. A load that does not fit in the REAL free memory fails
with a CUDA out-of-memory error; growing the other program past capacity crashes the most
recently loaded runners. With ``nvml_state`` the simulator keeps a fake-NVML state file
(``../shared/fake-nvml``) in step, so NVML readers see the same memory.

Use it in-process::

    with FakeOllama(time_scale=0.02).start() as sim:
        requests.post(sim.url + "/api/generate", json={"model": "llama3.2:1b", "prompt": "hi"})

or as a program: ``python3 tools/fake_ollama.py --port 11434``. Tests steer it through the
Python methods (``inject_fault``, ``set_gate``, ``set_other_program_mb``, ...) or the same
controls over HTTP under ``/_sim/`` (real Ollama has no such path); bodies are JSON:

- ``POST /_sim/faults`` ``{"count", "status", "error", "endpoint", "mode", "seconds"}``;
  ``GET`` lists pending faults, ``DELETE`` clears them.
- ``POST /_sim/gpu`` ``{"other_mb": N}``; ``GET /_sim/gpu``: total/used/free/other MiB.
- ``POST /_sim/gate`` ``{"closed": bool, "after_tokens": 0}``.
- ``POST /_sim/latency`` ``{"seconds": x}``.
- ``POST /_sim/disable`` ``{"endpoint": "/api/embed"}`` (``"enabled": true`` undoes it).
- ``POST /_sim/refuse`` ``{"seconds": S}``: stops listening, answers, listens again after S.
- ``POST /_sim/reset`` ``{"everything": false}``.
- ``GET /_sim/stats``: counters, runners, load/unload events, request log.

The request log keeps the last ``request_log_size`` requests (``--request-log-size``,
default 2000), each with its arrival time ``t`` (``time.monotonic()``, system-wide on
Linux, so other processes can compare it with their own clock). A request whose prompt
(generate), first input (embed) or last message (chat) starts with ``[bench:<tag>]``
(``<tag>``: up to 64 of ``A-Z a-z 0-9 _ . : -``) has ``"tag": "<tag>"`` in its entry, so a
load generator can tell when each of its jobs reached "Ollama" (``tools/bench.py``).

Units: memory in bytes unless a name ends in ``_mb`` (MiB, 1 MB = 2**20 bytes, as NVML and
``--vram-mb`` count it); durations in the HTTP API in nanoseconds as Ollama reports them;
everything else in seconds. Every simulated duration (load, tokens, unload lag, pull
progress and, unless ``scale_keep_alive=False``, keep_alive) is multiplied by
``time_scale``; control durations (fault hang, refuse, latency) are real seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import re
import select
import signal
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

__all__ = [
    "CATALOG",
    "FakeOllama",
    "ModelSpec",
    "RunnerOptions",
    "embed_seconds",
    "generate_seconds",
    "load_seconds",
    "main",
    "parse_keep_alive",
]

VERSION = "0.11.10"
MIB = 1 << 20
GB = 1_000_000_000
#: A runner's CUDA context: visible in NVML used memory, not in /api/ps size_vram.
CUDA_CONTEXT_BYTES = 250 * MIB
DEFAULT_NUM_CTX = 4096
DEFAULT_NUM_BATCH = 512
MAX_INT64_NS = 2**63 - 1
LOAD_BASE_S = 0.3  # runner start-up, seconds at time_scale 1
LOAD_BYTES_PER_S = 2.0 * GB  # weights copied to the GPU per second
OOM_STARTUP_S = 0.3  # how long a load that runs out of memory takes to fail
PULL_BYTES_PER_S = 200e6
PULL_TICK_S = 0.06  # Ollama reports pull progress every 60 ms
POLL_S = 0.05  # how often waiting threads re-check stop/cancel conditions

ERR_QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
ERR_LOAD_OOM = "llama runner process has terminated: CUDA error: out of memory"
ERR_RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an "
    "internal error, check ollama server logs for details"
)
ERR_MIDSTREAM_OOM = "an error was encountered while running the model: CUDA error: out of memory"
ERR_PULL_MISSING = "pull model manifest: file does not exist"
ERR_SHUTDOWN = "server is shutting down"
NOT_FOUND_TEXT = "404 page not found"

#: ``[bench:<tag>]`` at the start of a prompt: the tag goes into the request log.
BENCH_TAG_RE = re.compile(r"\[bench:([A-Za-z0-9_.:-]{1,64})\]")
DEFAULT_REQUEST_LOG_SIZE = 2000

INFERENCE_ENDPOINTS = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"})
FAULT_MODES = frozenset({"http", "stream", "hang", "close"})


# --------------------------------------------------------------------------------------
# Model catalog


@dataclass(frozen=True)
class ModelSpec:
    """One model Ollama can know about.

    ``vram_bytes`` is ``size_vram`` in /api/ps at the default context (``default_num_ctx``:
    4096, or the training context if smaller) with one parallel slot; the KV cache adds
    ``kv_bytes_per_token`` per token of ``num_ctx * num_parallel`` beyond that. The CUDA
    context (:data:`CUDA_CONTEXT_BYTES`) comes on top and is not part of ``vram_bytes``.
    ``token_seconds`` is the time per generated token at ``time_scale`` 1.
    ``installed=False`` models exist only in the "registry": ``/api/pull`` installs them.
    """

    name: str
    digest: str
    disk_bytes: int
    vram_bytes: int
    kv_bytes_per_token: int
    architecture: str
    family: str
    families: tuple[str, ...]
    parameter_size: str
    quantization_level: str
    capabilities: tuple[str, ...]
    context_length: int
    embedding_length: int
    block_count: int
    head_count: int
    head_count_kv: int
    token_seconds: float
    installed: bool = True
    load_base_seconds: float = LOAD_BASE_S
    load_bytes_per_second: float = LOAD_BYTES_PER_S

    @property
    def default_num_ctx(self) -> int:
        """The context a runner gets when the request sets no ``num_ctx``."""
        return min(DEFAULT_NUM_CTX, self.context_length)

    @property
    def is_embedding(self) -> bool:
        """Embedding models: no generate/chat, always one parallel slot."""
        return "embedding" in self.capabilities

    def effective_ctx(self, num_ctx: int) -> int:
        """Per-slot context the runner really uses: clamped to the training context."""
        return max(1, min(num_ctx, self.context_length))

    def vram_for(self, num_ctx: int, num_parallel: int) -> int:
        """``size_vram`` in bytes of a runner with this per-slot context and slot count."""
        fixed = self.vram_bytes - self.kv_bytes_per_token * self.default_num_ctx
        return fixed + self.kv_bytes_per_token * self.effective_ctx(num_ctx) * max(1, num_parallel)

    def load_seconds(self, vram_bytes: int) -> float:
        """Load time in seconds at ``time_scale`` 1 for a runner of ``vram_bytes``."""
        return self.load_base_seconds + vram_bytes / self.load_bytes_per_second

    def details(self) -> dict[str, Any]:
        """The ``details`` object of /api/tags, /api/ps and /api/show."""
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": list(self.families),
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


def _spec(
    name: str,
    id12: str,
    disk: int,
    vram: int,
    arch: str,
    layers: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    emb: int,
    ctx: int,
    params: str,
    quant: str,
    caps: tuple[str, ...],
    token_ms: float,
    *,
    family: str | None = None,
    families: tuple[str, ...] | None = None,
    kv: int | None = None,
    installed: bool = True,
) -> ModelSpec:
    """Catalog helper: the KV figure is the f16 formula 2 * layers * kv_heads * head_dim * 2 B."""
    digest = (id12 + hashlib.sha256(f"fake-ollama:{name}".encode()).hexdigest())[:64]
    fam = family or arch
    return ModelSpec(
        name=name,
        digest=digest,
        disk_bytes=disk,
        vram_bytes=vram,
        kv_bytes_per_token=2 * layers * kv_heads * head_dim * 2 if kv is None else kv,
        architecture=arch,
        family=fam,
        families=families or (fam,),
        parameter_size=params,
        quantization_level=quant,
        capabilities=caps,
        context_length=ctx,
        embedding_length=emb,
        block_count=layers,
        head_count=heads,
        head_count_kv=kv_heads,
        token_seconds=token_ms / 1000.0,
        installed=installed,
    )


_TEXT = ("completion",)
_TOOLS = ("completion", "tools")
_EMBED = ("embedding",)

#: Every model the simulator knows, by canonical ``name:tag``. Sizes in bytes; ``vram_bytes``
#: is size_vram at the default context with one slot (see :class:`ModelSpec`).
CATALOG: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        # The seed's ten small models.
        _spec("smollm:360m", "45ad5c4a8e7c", 228_889_248, 470_000_000, "llama",
              32, 15, 5, 64, 960, 2048, "362M", "Q4_0", _TEXT, 3.0),
        _spec("all-minilm:latest", "1b226e2802db", 45_960_996, 98_566_144, "bert",
              6, 12, 12, 32, 384, 512, "23M", "F16", _EMBED, 0.5, kv=0),
        _spec("nomic-embed-text:latest", "0a109f422b47", 274_302_450, 595_000_000, "nomic-bert",
              12, 12, 12, 64, 768, 2048, "137M", "F16", _EMBED, 1.0, kv=0),
        _spec("qwen2.5:0.5b", "a8b0c5157701", 397_821_319, 976_000_000, "qwen2",
              24, 14, 2, 64, 896, 32768, "494.03M", "Q4_K_M", _TOOLS, 3.0),
        _spec("tinyllama:1.1b", "2644915ede35", 637_699_456, 840_000_000, "llama",
              22, 32, 4, 64, 2048, 2048, "1B", "Q4_0", _TEXT, 4.0),
        _spec("smollm:1.7b", "87a4c6c8c4fa", 990_197_344, 1_600_000_000, "llama",
              24, 32, 32, 64, 2048, 2048, "1.7B", "Q4_0", _TEXT, 5.0),
        _spec("llama3.2:1b", "baf6a787fdff", 1_321_098_329, 1_514_584_145, "llama",
              16, 32, 8, 64, 2048, 131072, "1.2B", "Q8_0", _TOOLS, 5.0),
        _spec("gemma:2b", "b50d6c999e59", 1_678_456_656, 2_250_000_000, "gemma",
              18, 8, 1, 256, 2048, 8192, "3B", "Q4_0", _TEXT, 6.0),
        _spec("qwen2.5:1.5b", "65ec06548149", 986_061_892, 1_460_000_000, "qwen2",
              28, 12, 2, 128, 1536, 32768, "1.5B", "Q4_K_M", _TOOLS, 5.0),
        _spec("phi3:mini", "4f2222927938", 2_176_178_913, 3_840_000_000, "phi3",
              32, 32, 32, 96, 3072, 4096, "3.8B", "Q4_0", _TEXT, 10.0),
        # Larger ones.
        _spec("llama3.1:8b", "46e0c10c039e", 4_920_753_328, 5_760_000_000, "llama",
              32, 32, 8, 128, 4096, 131072, "8.0B", "Q4_K_M", _TOOLS, 18.0),
        _spec("qwen2.5:7b", "845dbda0ea48", 4_683_087_332, 5_420_000_000, "qwen2",
              28, 28, 4, 128, 3584, 32768, "7.6B", "Q4_K_M", _TOOLS, 17.0),
        _spec("llava:7b", "8dd30f6b0cb1", 4_733_363_377, 7_230_000_000, "llama",
              32, 32, 32, 128, 4096, 4096, "7B", "Q4_0", ("completion", "vision"), 18.0,
              families=("llama", "clip")),
        _spec("llama3.1:70b", "711a9e8463af", 42_520_413_916, 44_860_000_000, "llama",
              80, 64, 8, 128, 8192, 131072, "70.6B", "Q4_K_M", _TOOLS, 120.0),
        # Only in the "registry": /api/pull installs them.
        _spec("qwen2.5:3b", "357c53fb659c", 1_929_912_432, 2_430_000_000, "qwen2",
              36, 16, 2, 128, 2048, 32768, "3.1B", "Q4_K_M", _TOOLS, 8.0, installed=False),
        _spec("gemma2:2b", "8ccf136fdd52", 1_629_518_495, 2_570_000_000, "gemma2",
              26, 8, 4, 256, 2304, 8192, "2.6B", "Q4_0", _TEXT, 7.0, installed=False),
    )
}  # fmt: skip

# Fixed "modified_at" of the preinstalled models (newest first in /api/tags).
_INSTALLED_AT = datetime(2025, 8, 1, 12, 0, tzinfo=UTC).timestamp()


# --------------------------------------------------------------------------------------
# Parsing helpers (Go-compatible error texts)


_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}  # fmt: skip
_NUMBER_RE = re.compile(r"(\d*)(?:\.(\d*))?")
_UNIT_RE = re.compile(r"[^\d.]*")


def _go_quote(text: str) -> str:
    """Approximately Go's ``%q`` / ``strconv.Quote``."""
    return json.dumps(text, ensure_ascii=False)


def parse_go_duration(text: str) -> float:
    """Parse ``text`` like Go's ``time.ParseDuration``; return seconds (may be negative).

    Raises ``ValueError`` whose message is Go's, e.g. ``time: missing unit in duration "300"``.
    """
    quoted = _go_quote(text)
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
            raise ValueError(f"time: unknown unit {_go_quote(unit)} in duration {quoted}")
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


def _json_kind(value: object) -> str:
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


def _decode_body(raw: bytes, struct: str) -> dict[str, Any]:
    """Decode a request body as Go's ``ShouldBindJSON`` into ``api.<struct>`` would.

    Raises :class:`_HTTPError` 400 with ``missing request body`` for an empty body, or Go's
    decoder message. Trailing data after the first JSON value is ignored, as in Go.
    """
    text = raw.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    if not text:
        raise _HTTPError(400, "missing request body")
    try:
        value, _ = _DECODER.raw_decode(text)
    except json.JSONDecodeError as exc:
        raise _HTTPError(400, _go_json_error(text, exc)) from None
    except _BadConstant as exc:
        raise _HTTPError(
            400, f"invalid character {_go_char(str(exc)[0])} looking for beginning of value"
        ) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _HTTPError(
            400, f"json: cannot unmarshal {_json_kind(value)} into Go value of type api.{struct}"
        )
    return value


# Go field types of the request structs, for "cannot unmarshal" errors.
_STRING, _BOOL, _INT_LIST, _MAP, _STR_LIST = (
    "string",
    "bool",
    "[]int",
    "map[string]interface {}",
    "[]string",
)
_GENERATE_FIELDS = {
    "model": _STRING,
    "prompt": _STRING,
    "suffix": _STRING,
    "system": _STRING,
    "template": _STRING,
    "context": _INT_LIST,
    "stream": _BOOL,
    "raw": _BOOL,
    "images": "[]api.ImageData",
    "options": _MAP,
}
_CHAT_FIELDS = {
    "model": _STRING,
    "messages": "[]api.Message",
    "stream": _BOOL,
    "options": _MAP,
    "tools": "api.Tools",
}
_EMBED_FIELDS = {"model": _STRING, "truncate": _BOOL, "options": _MAP, "dimensions": "int"}
_EMBEDDINGS_FIELDS = {"model": _STRING, "prompt": _STRING, "options": _MAP}
_SHOW_FIELDS = {"model": _STRING, "name": _STRING, "verbose": _BOOL, "system": _STRING}
_PULL_FIELDS = {"model": _STRING, "name": _STRING, "insecure": _BOOL, "stream": _BOOL}
_DELETE_FIELDS = {"model": _STRING, "name": _STRING}


def _type_ok(value: object, gotype: str) -> bool:
    if value is None:
        return True
    if gotype == _STRING:
        return isinstance(value, str)
    if gotype == _BOOL:
        return isinstance(value, bool)
    if gotype == "int":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if gotype == _MAP:
        return isinstance(value, dict)
    return isinstance(value, list)


def _check_fields(body: dict[str, Any], struct: str, fields: dict[str, str]) -> None:
    """400 with Go's message when a known field has the wrong JSON type."""
    for name, gotype in fields.items():
        value = body.get(name)
        if not _type_ok(value, gotype):
            raise _HTTPError(
                400,
                f"json: cannot unmarshal {_json_kind(value)} into Go struct field "
                f"{struct}.{name} of type {gotype}",
            )


_NAME_RE = re.compile(
    r"^(?:(?P<host>[A-Za-z0-9][A-Za-z0-9._:-]*)/(?=[^/]+/))?"
    r"(?:(?P<ns>[A-Za-z0-9_][A-Za-z0-9._-]*)/)?"
    r"(?P<model>[A-Za-z0-9_][A-Za-z0-9._-]{0,79})"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,79}))?$"
)


def canonical_name(name: str) -> str | None:
    """``name:tag`` in lower case as Ollama matches it, or None for an invalid name.

    ``llama3.2`` → ``llama3.2:latest``; ``registry.ollama.ai/library/x:1`` → ``x:1``;
    other namespaces keep their prefix (``me/x:latest``).
    """
    match = _NAME_RE.match(name.strip())
    if not match:
        return None
    host = (match.group("host") or "").lower()
    namespace = (match.group("ns") or "").lower()
    base = f"{match.group('model')}:{match.group('tag') or 'latest'}".lower()
    if host not in ("", "registry.ollama.ai"):
        return f"{host}/{namespace}/{base}"
    if namespace not in ("", "library"):
        return f"{namespace}/{base}"
    return base


# --------------------------------------------------------------------------------------
# Deterministic output


_WORDS = (
    "the",
    "model",
    "answer",
    "data",
    "system",
    "value",
    "result",
    "process",
    "quality",
    "measure",
    "signal",
    "window",
    "river",
    "stone",
    "light",
    "metric",
    "sample",
    "budget",
    "memory",
    "queue",
    "request",
    "token",
    "layer",
    "vector",
    "reason",
    "simple",
    "clear",
    "quick",
    "steady",
    "bright",
    "small",
    "large",
    "early",
    "later",
    "inside",
    "around",
    "before",
    "after",
    "because",
    "while",
    "every",
    "other",
    "first",
    "second",
    "final",
    "check",
    "build",
    "move",
    "hold",
    "share",
    "learn",
    "write",
    "read",
    "count",
    "trace",
    "north",
    "south",
    "field",
    "forest",
    "garden",
    "market",
    "engine",
    "factory",
    "report",
    "number",
    "pattern",
    "method",
    "choice",
    "detail",
    "example",
    "question",
    "is",
    "are",
    "was",
    "can",
    "will",
    "should",
    "and",
    "or",
    "but",
    "with",
    "from",
    "into",
    "over",
    "under",
    "of",
    "to",
    "in",
    "on",
    "for",
    "by",
    "a",
    "an",
    "this",
    "that",
    "it",
)
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def _seed_of(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def count_tokens(text: str) -> int:
    """A plausible token count: words plus punctuation marks."""
    return len(_TOKEN_RE.findall(text))


def _schema_value(schema: object, rng: random.Random, depth: int = 0) -> Any:
    """A value that fits a (simple) JSON schema, for ``format`` requests."""
    if not isinstance(schema, dict) or depth > 4:
        return " ".join(rng.choice(_WORDS) for _ in range(3))
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties")
        if not isinstance(props, dict):
            return {}
        return {str(k): _schema_value(v, rng, depth + 1) for k, v in props.items()}
    if kind == "array":
        return [_schema_value(schema.get("items"), rng, depth + 1) for _ in range(2)]
    if kind == "integer":
        return rng.randrange(100)
    if kind == "number":
        return round(rng.random() * 100, 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    return " ".join(rng.choice(_WORDS) for _ in range(3))


def make_reply(seed: int, num_predict: int | None, fmt: object = None) -> tuple[list[str], str]:
    """The reply's pieces (one per token) and done_reason (``stop`` or ``length``).

    Deterministic in ``seed``: 16 to 64 tokens, capped by ``num_predict`` > 0 (then
    ``length``). With ``fmt`` (``"json"`` or a schema) the text is a JSON document.
    """
    rng = random.Random(seed)
    count = 16 + rng.randrange(49)
    if fmt == "json" or isinstance(fmt, dict):
        doc = _schema_value(fmt, rng) if isinstance(fmt, dict) else None
        if not isinstance(doc, dict):
            doc = {"response": " ".join(rng.choice(_WORDS) for _ in range(count // 2))}
        text = json.dumps(doc)
        pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
    else:
        pieces = []
        for i in range(count):
            word = rng.choice(_WORDS)
            pieces.append(word.capitalize() if i == 0 else " " + word)
        pieces[-1] += "."
    if num_predict is not None and 0 < num_predict < len(pieces):
        return pieces[:num_predict], "length"
    return pieces, "stop"


def make_embedding(model: str, text: str, dim: int) -> list[float]:
    """A deterministic raw (not normalised) vector for ``text``."""
    rng = random.Random(_seed_of("embed", model, text))
    return [rng.gauss(0.0, 1.0) for _ in range(dim)]


def _normalised(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [round(x / norm, 8) for x in vector]


def _rfc3339(ts: float) -> str:
    """UTC RFC3339 with fractional seconds, trailing zeros trimmed like Go's."""
    moment = datetime.fromtimestamp(ts, tz=UTC)
    frac = f"{moment.microsecond:06d}".rstrip("0")
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


def _now_rfc3339() -> str:
    return _rfc3339(time.time())


# --------------------------------------------------------------------------------------
# Runner options


_INT_OPTIONS = frozenset(
    {
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "num_thread",
        "num_keep",
        "seed",
        "num_predict",
        "top_k",
        "repeat_last_n",
    }
)
_FLOAT_OPTIONS = frozenset(
    {
        "temperature",
        "top_p",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
    }
)
_BOOL_OPTIONS = frozenset({"use_mmap", "use_mlock", "numa", "low_vram"})


@dataclass(frozen=True)
class RunnerOptions:
    """The load-time options; any difference from the loaded runner's forces a reload."""

    num_ctx: int = DEFAULT_NUM_CTX
    num_batch: int = DEFAULT_NUM_BATCH
    num_gpu: int = -1
    main_gpu: int = 0
    use_mmap: bool | None = None
    num_thread: int = 0

    def needs_reload(self, new: RunnerOptions) -> bool:
        """Ollama's ``needsReload`` on options: ``num_gpu`` -1 in the request is ignored."""
        return (
            self.num_ctx != new.num_ctx
            or self.num_batch != new.num_batch
            or (new.num_gpu != -1 and self.num_gpu != new.num_gpu)
            or self.main_gpu != new.main_gpu
            or self.use_mmap != new.use_mmap
            or self.num_thread != new.num_thread
        )


def _parse_options(options: dict[str, Any] | None) -> tuple[RunnerOptions, dict[str, Any]]:
    """Runner options plus the sampling options. A wrong type is a 500, as in Ollama."""
    values: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if value is None:
            continue
        if key in _INT_OPTIONS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _HTTPError(500, f"option {_go_quote(key)} must be of type integer")
            values[key] = int(value)
        elif key in _FLOAT_OPTIONS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _HTTPError(500, f"option {_go_quote(key)} must be of type float32")
            values[key] = float(value)
        elif key in _BOOL_OPTIONS:
            if not isinstance(value, bool):
                raise _HTTPError(500, f"option {_go_quote(key)} must be of type boolean")
            values[key] = value
        else:
            values[key] = value  # unknown keys: logged and ignored by Ollama
    runner = RunnerOptions(
        num_ctx=values.get("num_ctx", DEFAULT_NUM_CTX),
        num_batch=values.get("num_batch", DEFAULT_NUM_BATCH),
        num_gpu=values.get("num_gpu", -1),
        main_gpu=values.get("main_gpu", 0),
        use_mmap=values.get("use_mmap"),
        num_thread=values.get("num_thread", 0),
    )
    return runner, values


# --------------------------------------------------------------------------------------
# Expected durations (for benchmarks' lower bounds)


def load_seconds(model: str, num_parallel: int = 1, time_scale: float = 1.0) -> float:
    """How long loading ``model`` takes (default options, fully on the GPU), in seconds.

    The same formula the scheduler uses: runner start-up plus the runner's GPU memory (its
    ``size_vram`` and CUDA context) at the load rate; embedding models get one slot.
    Queueing, evictions and the VRAM release lag are not included.
    """
    spec = CATALOG[canonical_name(model) or model]
    parallel = 1 if spec.is_embedding else max(1, num_parallel)
    gpu = spec.vram_for(DEFAULT_NUM_CTX, parallel) + CUDA_CONTEXT_BYTES
    return time_scale * spec.load_seconds(gpu)


def generate_seconds(
    model: str,
    prompt: str,
    *,
    system: str = "",
    num_predict: int | None = None,
    time_scale: float = 1.0,
) -> float:
    """How long a loaded, fully-on-GPU runner spends on one ``/api/generate`` request that
    has no ``format``, ``context``, ``raw`` or ``seed``: prompt evaluation plus one
    ``token_seconds`` per reply token, in seconds. Waiting for a slot is not included."""
    spec = CATALOG[canonical_name(model) or model]
    pieces, _ = make_reply(_seed_of(spec.name, system, prompt, ""), num_predict)
    prompt_tokens = max(1, count_tokens(system) + count_tokens(prompt) + 10)
    return time_scale * spec.token_seconds * (prompt_tokens / 10.0 + len(pieces))


def embed_seconds(model: str, inputs: list[str], time_scale: float = 1.0) -> float:
    """How long a loaded runner spends on one ``/api/embed`` request (default options)."""
    spec = CATALOG[canonical_name(model) or model]
    ctx = spec.effective_ctx(DEFAULT_NUM_CTX)
    tokens = sum(min(max(1, count_tokens(text)), ctx) for text in inputs)
    return time_scale * tokens * spec.token_seconds / 20.0


# --------------------------------------------------------------------------------------
# Internal state


class _HTTPError(Exception):
    """An answer with an HTTP status and an ``{"error": message}`` body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _RunnerCrashed(Exception):
    """The runner serving this request died (out of memory caused by another program)."""


class _ClientGone(Exception):
    """The client closed its connection; stop working for it."""


class _ShuttingDown(Exception):
    """The simulator is stopping."""


LOADING, READY, RELEASING, GONE, CRASHED = "loading", "ready", "releasing", "gone", "crashed"


@dataclass(eq=False)
class _Runner:
    """One loaded model. All fields are guarded by ``FakeOllama._cv``.

    ``session`` is the keep_alive in seconds (unscaled; ``inf`` forever). ``size`` and
    ``size_vram`` are bytes as /api/ps reports them; ``counted`` means its memory is really
    allocated on the GPU (false for a load doomed to run out of memory).
    """

    spec: ModelSpec
    opts: RunnerOptions
    parallel: int
    size: int
    size_vram: int
    session: float
    pid: int
    seq: int
    token_seconds: float
    state: str = LOADING
    counted: bool = False
    refcount: int = 0
    active: int = 0
    waiters: deque[object] = field(default_factory=deque)
    expiring: bool = False
    expire_reason: str = ""
    idle_deadline: float | None = None
    expires_wall: float | None = None
    release_at: float = 0.0

    @property
    def gpu_bytes(self) -> int:
        """Device memory the runner process holds: its VRAM part plus the CUDA context."""
        return self.size_vram + CUDA_CONTEXT_BYTES if self.size_vram > 0 else 0

    @property
    def gpu_mb(self) -> int:
        """``gpu_bytes`` rounded up to whole MiB, as NVML shows per process."""
        return -(-self.gpu_bytes // MIB)

    @property
    def context_length(self) -> int:
        return self.spec.effective_ctx(self.opts.num_ctx)


@dataclass(eq=False)
class _Pending:
    """A request waiting in the scheduler's FIFO queue."""

    spec: ModelSpec
    opts: RunnerOptions
    keep_alive: float | None
    runner: _Runner | None = None
    error: _HTTPError | None = None
    cancelled: bool = False


@dataclass
class _Fault:
    count: int
    status: int
    error: str
    endpoint: str | None
    mode: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "status": self.status,
            "error": self.error,
            "endpoint": self.endpoint,
            "mode": self.mode,
            "seconds": self.seconds,
        }


# --------------------------------------------------------------------------------------
# The simulator


class FakeOllama:
    """An in-process Ollama simulator on a real HTTP port.

    Thread-safe: one condition variable guards all state; the HTTP handlers, the scheduler
    thread and the housekeeper thread (idle expiry, VRAM release, re-listening after
    ``refuse_connections``) all take it. ``stop()`` joins every thread it started.
    """

    def __init__(
        self,
        vram_mb: int = 24576,
        time_scale: float = 1.0,
        nvml_state: str | os.PathLike[str] | None = None,
        num_parallel: int = 1,
        max_loaded_models: int = 3,
        max_queue: int = 512,
        host: str = "127.0.0.1",
        port: int = 0,
        default_keep_alive: float = 300.0,
        *,
        vram_release_lag: float = 0.5,
        scale_keep_alive: bool = True,
        gpu_name: str = "NVIDIA GeForce RTX 4090",
        request_log_size: int = DEFAULT_REQUEST_LOG_SIZE,
    ) -> None:
        """Configure; nothing starts until :meth:`start`.

        ``vram_mb``: GPU size in MiB. ``time_scale``: factor on every simulated duration.
        ``nvml_state``: fake-NVML state file to keep up to date (None: none).
        ``max_loaded_models`` 0 means Ollama's default, 3. ``default_keep_alive``: seconds
        (negative: forever), applied at load time to requests that set none.
        ``vram_release_lag``: seconds (scaled) between a runner leaving /api/ps and its
        memory showing as free. ``scale_keep_alive=False`` keeps keep_alive in real seconds.
        ``request_log_size``: how many of the latest requests the request log keeps.
        """
        if vram_mb <= 0:
            raise ValueError(f"vram_mb must be positive, got {vram_mb}")
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        if num_parallel < 1:
            raise ValueError(f"num_parallel must be >= 1, got {num_parallel}")
        if max_loaded_models < 0 or max_queue < 0:
            raise ValueError("max_loaded_models and max_queue must be >= 0")
        if request_log_size < 1:
            raise ValueError(f"request_log_size must be >= 1, got {request_log_size}")
        self.request_log_size = int(request_log_size)
        self.vram_mb = int(vram_mb)
        self.time_scale = float(time_scale)
        self.nvml_state = Path(nvml_state) if nvml_state is not None else None
        self.num_parallel = int(num_parallel)
        self.max_loaded_models = int(max_loaded_models) or 3
        self.max_queue = int(max_queue)
        self.host = host
        self.default_keep_alive = math.inf if default_keep_alive < 0 else float(default_keep_alive)
        self.vram_release_lag = float(vram_release_lag)
        self.scale_keep_alive = scale_keep_alive
        self.gpu_name = gpu_name
        self._port = int(port)

        self._cv = threading.Condition()
        self._stop_event = threading.Event()
        self._started = self._stopping = self._stopped = False
        self._installed: dict[str, float] = {
            spec.name: _INSTALLED_AT - i * 86400.0
            for i, spec in enumerate(CATALOG.values())
            if spec.installed
        }
        self._loaded: dict[str, _Runner] = {}
        self._releasing: list[_Runner] = []
        self._queue: deque[_Pending] = deque()
        self._head: _Pending | None = None
        self._seq = 0

        self._faults: list[_Fault] = []
        self._latency = 0.0
        self._disabled: set[str] = set()
        self._gate_closed = False
        self._gate_after = 0
        self._other_mb = 0
        self._reopen_at: float | None = None

        self._server: _Server | None = None
        self._servers: list[_Server] = []
        self._workers: list[threading.Thread] = []
        self._serve_threads: list[threading.Thread] = []
        self._handler_threads: list[threading.Thread] = []
        self._conns: dict[socket.socket, bool] = {}
        self._last_nvml = ""
        self._nvml_error: str | None = None
        self._in_flight = self._gated = self._generating = 0
        self._reset_counters()

    # ----- lifecycle -----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (the real one once started, even when constructed with 0)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:11434``."""
        return f"http://{self.host}:{self._port}"

    def start(self) -> FakeOllama:
        """Bind, start the HTTP server, the scheduler and the housekeeper; return self."""
        with self._cv:
            if self._started:
                raise RuntimeError("FakeOllama already started")
            self._started = True
        self._open_listener()
        for target, name in (
            (self._scheduler_loop, "fake-ollama-scheduler"),
            (self._housekeeper_loop, "fake-ollama-housekeeper"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            self._workers.append(thread)
            thread.start()
        with self._cv:
            self._write_nvml()
        return self

    def stop(self) -> None:
        """Stop serving, fail whatever is waiting, join all threads. Idempotent."""
        with self._cv:
            if self._stopped or not self._started:
                self._stopped = True
                return
            self._stopped = self._stopping = True
            self._reopen_at = None
            self._stop_event.set()
            self._cv.notify_all()
        for thread in self._workers:  # the housekeeper may be re-listening: let it finish
            thread.join()
        self._close_listener()
        self._shutdown_connections(idle_only=False)
        for thread in self._serve_threads:
            thread.join()
        for server in self._servers:
            server.server_close()
        with self._cv:
            handlers = list(self._handler_threads)
        for thread in handlers:  # daemon threads: server_close() does not join them
            if thread is not threading.current_thread():
                thread.join()
        with self._cv:
            for runner in list(self._loaded.values()) + self._releasing:
                runner.state = GONE
            self._loaded.clear()
            self._releasing.clear()
            self._write_nvml()

    def __enter__(self) -> FakeOllama:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----- controls (mirrored under /_sim/) -----------------------------------------

    def inject_fault(
        self,
        count: int = 1,
        status: int = 500,
        error: str | None = None,
        endpoint: str | None = None,
        mode: str = "http",
        seconds: float = 30.0,
    ) -> None:
        """Make the next ``count`` matching requests fail.

        ``endpoint``: a path such as ``/api/generate``; None matches any inference endpoint
        (generate, chat, embed, embeddings). ``mode``: ``http`` (``status`` +
        ``{"error": error}``), ``stream`` (200, one chunk, then an ``{"error"}`` line; a
        non-streaming request gets 500), ``hang`` (no answer for ``seconds`` real seconds,
        then the connection closes) or ``close`` (connection closed without an answer).
        """
        if mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {sorted(FAULT_MODES)}, got {mode!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive integer, got {count!r}")
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {status!r}")
        if endpoint is not None and not endpoint.startswith("/"):
            raise ValueError(f"endpoint must be a path such as /api/generate, got {endpoint!r}")
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        if error is None:
            if mode == "stream":
                error = "an error was encountered while running the model: unexpected EOF"
            elif status == 503:
                error = ERR_QUEUE_FULL
            else:
                error = ERR_RUNNER_STOPPED
        with self._cv:
            self._faults.append(_Fault(count, status, error, endpoint, mode, float(seconds)))

    def clear_faults(self) -> None:
        """Drop every pending fault."""
        with self._cv:
            self._faults.clear()

    def set_other_program_mb(self, mb: int) -> None:
        """Memory (MiB) another program holds on the GPU. Ollama's fit check cannot see
        it; if real use then exceeds the GPU, runners crash, most recently loaded first."""
        if mb < 0:
            raise ValueError(f"other_mb must be >= 0, got {mb}")
        with self._cv:
            self._other_mb = int(mb)
            self._crash_until_fits()
            self._write_nvml()
            self._cv.notify_all()

    def set_gate(self, closed: bool, after_tokens: int = 0) -> None:
        """Close or open the gate. While closed, generate/chat/embed requests that hold a
        runner slot wait before producing token number ``after_tokens`` (0: before any
        output), so tests can hold requests "running" deterministically."""
        if after_tokens < 0:
            raise ValueError(f"after_tokens must be >= 0, got {after_tokens}")
        with self._cv:
            self._gate_closed = bool(closed)
            self._gate_after = int(after_tokens)
            self._cv.notify_all()

    def set_latency(self, seconds: float) -> None:
        """Real seconds added before every /api answer."""
        if seconds < 0:
            raise ValueError(f"latency must be >= 0, got {seconds}")
        with self._cv:
            self._latency = float(seconds)

    def disable_endpoint(self, path: str) -> None:
        """Make ``path`` answer plain-text 404 (an older Ollama without it)."""
        with self._cv:
            self._disabled.add(path)

    def enable_endpoint(self, path: str) -> None:
        """Undo :meth:`disable_endpoint`."""
        with self._cv:
            self._disabled.discard(path)

    def refuse_connections(self, seconds: float) -> None:
        """Stop listening for ``seconds`` (real): connects are refused and idle keep-alive
        connections are closed; requests already in progress finish. Then listen again on
        the same port."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        with self._cv:
            if self._stopping:
                return
            self._reopen_at = time.monotonic() + seconds
        self._close_listener()
        self._shutdown_connections(idle_only=True)
        with self._cv:
            self._cv.notify_all()

    def reset(self, everything: bool = False) -> None:
        """Clear counters, logs and faults. ``everything`` also opens the gate and clears
        latency, disabled endpoints and the other program's memory (models stay loaded)."""
        with self._cv:
            self._faults.clear()
            self._reset_counters()
            if everything:
                self._latency = 0.0
                self._disabled.clear()
                self._gate_closed = False
                self._gate_after = 0
                self._other_mb = 0
                self._write_nvml()
            self._peak_mb = self._real_used_mb()
            self._cv.notify_all()

    def gpu(self) -> dict[str, int]:
        """The GPU as NVML shows it, in MiB: total, used, free, other, runners."""
        with self._cv:
            runners = self._runners_mb()
            used = min(self.vram_mb, self._other_mb + runners)
            return {
                "total_mb": self.vram_mb,
                "used_mb": used,
                "free_mb": self.vram_mb - used,
                "other_mb": self._other_mb,
                "runners_mb": runners,
            }

    def loaded_models(self) -> list[str]:
        """Canonical names of the models /api/ps lists now."""
        with self._cv:
            return sorted(self._loaded)

    def stats(self) -> dict[str, Any]:
        """Counters and logs (times are ``time.monotonic()`` seconds). See ``/_sim/stats``."""
        with self._cv:
            return {
                "loads": self._loads,
                "unloads": self._unloads,
                "ooms": self._ooms,
                "crashes": self._crashes,
                "requests_by_endpoint": dict(self._by_endpoint),
                "requests_by_status": dict(self._by_status),
                "in_flight": self._in_flight,
                "queued": len(self._queue) + (1 if self._head is not None else 0),
                "queue_depth": len(self._queue),
                "gated": self._gated,
                "generating": self._generating,
                "peak_vram_mb": self._peak_mb,
                "used_vram_mb": min(self.vram_mb, self._real_used_mb()),
                "other_mb": self._other_mb,
                "gate_closed": self._gate_closed,
                "faults_pending": [f.as_dict() for f in self._faults],
                "runners": [self._runner_info(r) for r in self._loaded.values()],
                "load_events": [dict(e) for e in self._load_events],
                "unload_events": [dict(e) for e in self._unload_events],
                "request_log": [dict(e) for e in self._request_log],
                "nvml_error": self._nvml_error,
            }

    # ----- listener and connections ------------------------------------------------

    def _open_listener(self) -> None:
        server = _Server((self.host, self._port), self)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": POLL_S},
            name="fake-ollama-http",
            daemon=True,
        )
        with self._cv:
            if self._stopping:
                server.server_close()
                return
            self._port = server.server_address[1]
            self._server = server
            self._servers.append(server)
            self._serve_threads.append(thread)
        thread.start()

    def _close_listener(self) -> None:
        with self._cv:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.socket.close()

    def _track(self, conn: socket.socket, alive: bool) -> None:
        """Register/forget a connection and the handler thread serving it."""
        with self._cv:
            if alive:
                self._conns[conn] = False
                self._handler_threads = [t for t in self._handler_threads if t.is_alive()]
                self._handler_threads.append(threading.current_thread())
            else:
                self._conns.pop(conn, None)

    def _set_busy(self, conn: socket.socket, busy: bool) -> None:
        with self._cv:
            if conn in self._conns:
                self._conns[conn] = busy

    def _shutdown_connections(self, idle_only: bool) -> None:
        with self._cv:
            victims = [c for c, busy in self._conns.items() if not (idle_only and busy)]
        for conn in victims:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # ----- accounting (call with the lock held) ---------------------------------------

    def _reset_counters(self) -> None:
        self._loads = self._unloads = self._ooms = self._crashes = 0
        self._by_endpoint: dict[str, int] = {}
        self._by_status: dict[str, int] = {}
        self._load_events: deque[dict[str, Any]] = deque(maxlen=1000)
        self._unload_events: deque[dict[str, Any]] = deque(maxlen=1000)
        self._request_log: deque[dict[str, Any]] = deque(maxlen=self.request_log_size)
        self._peak_mb = 0

    def _scaled(self, seconds: float) -> float:
        return seconds * self.time_scale

    def _keep_alive_scaled(self, seconds: float) -> float:
        return seconds * self.time_scale if self.scale_keep_alive else seconds

    def _on_gpu(self) -> list[_Runner]:
        """Runners whose memory is on the (real) GPU, including those releasing it."""
        return [r for r in list(self._loaded.values()) + self._releasing if r.counted]

    def _runners_mb(self) -> int:
        return sum(r.gpu_mb for r in self._on_gpu())

    def _real_used_mb(self) -> int:
        return self._other_mb + self._runners_mb()

    def _ollama_free_bytes(self) -> int:
        """Free memory as Ollama's fit check sees it: the other program is invisible."""
        mine = sum(r.gpu_bytes for r in list(self._loaded.values()) + self._releasing)
        return self.vram_mb * MIB - mine

    def _memory_changed(self) -> None:
        self._peak_mb = max(self._peak_mb, self._real_used_mb())
        self._write_nvml()
        self._cv.notify_all()

    def _write_nvml(self) -> None:
        """Rewrite the fake-NVML state file atomically if its content changed."""
        if self.nvml_state is None:
            return
        busy = self._generating > 0
        on_gpu = self._on_gpu()
        used = min(self.vram_mb, self._real_used_mb())
        procs = [f"{r.pid}:{r.gpu_mb}" for r in on_gpu]
        if self._other_mb:
            procs.insert(0, f"31337:{self._other_mb}")
        lines = [
            "# written by tools/fake_ollama.py",
            "device_count=1",
            f"gpu0.name={self.gpu_name}",
            "gpu0.uuid=GPU-5a1f0c3e-7d2b-4c8e-9f61-0a0b0c0d0e0f",
            f"gpu0.total_mb={self.vram_mb}",
            f"gpu0.used_mb={used}",
            f"gpu0.util={90 if busy else 0}",
            f"gpu0.mem_util={45 if busy else (2 if on_gpu else 0)}",
            f"gpu0.temp={72 if busy else 41}",
            f"gpu0.power_mw={285000 if busy else 28000 + 4000 * len(on_gpu)}",
            f"gpu0.procs={','.join(procs[:32])}",
        ]
        text = "\n".join(lines) + "\n"
        if text == self._last_nvml:
            return
        tmp = self.nvml_state.with_name(f".{self.nvml_state.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, self.nvml_state)
        except OSError as exc:
            self._nvml_error = str(exc)
            return
        self._last_nvml = text

    def _record(
        self,
        t0: float,
        endpoint: str,
        model: str | None,
        status: int,
        fault: str | None = None,
        tag: str | None = None,
    ) -> None:
        with self._cv:
            self._by_endpoint[endpoint] = self._by_endpoint.get(endpoint, 0) + 1
            key = str(status)
            self._by_status[key] = self._by_status.get(key, 0) + 1
            entry: dict[str, Any] = {
                "t": t0,
                "endpoint": endpoint,
                "model": model,
                "status": status,
            }
            if fault:
                entry["fault"] = fault
            if tag:
                entry["tag"] = tag
            self._request_log.append(entry)

    def _runner_info(self, r: _Runner) -> dict[str, Any]:
        return {
            "model": r.spec.name,
            "state": r.state,
            "refcount": r.refcount,
            "active": r.active,
            "expiring": r.expiring,
            "keep_alive": None if math.isinf(r.session) else r.session,
            "size_vram": r.size_vram,
            "gpu_mb": r.gpu_mb,
            "num_parallel": r.parallel,
            "context_length": r.context_length,
            "pid": r.pid,
        }

    # ----- model lookup ---------------------------------------------------------------

    def _resolve(self, name: str, double_quote: bool) -> ModelSpec:
        """The installed model ``name`` refers to, else 400 (invalid name) or 404."""
        canonical = canonical_name(name)
        if canonical is None:
            raise _HTTPError(400, "invalid model name")
        with self._cv:
            installed = canonical in self._installed
        spec = CATALOG.get(canonical)
        if spec is None or not installed:
            if double_quote:
                raise _HTTPError(404, f'model "{name}" not found, try pulling it first')
            raise _HTTPError(404, f"model '{name}' not found")
        return spec

    # ----- runners: attach, release, unload, crash (lock held) -------------------------

    def _usable(self, r: _Runner, opts: RunnerOptions) -> bool:
        return r.state == READY and not r.expiring and not r.opts.needs_reload(opts)

    def _attach(self, r: _Runner, keep_alive: float | None) -> None:
        r.refcount += 1
        r.idle_deadline = None
        if keep_alive is not None and not r.expiring:
            r.session = keep_alive

    def _go_idle(self, r: _Runner) -> None:
        if r.expiring or r.session <= 0:
            self._unload(r, r.expire_reason or "keep_alive 0")
            return
        if math.isinf(r.session):
            r.idle_deadline = None
            r.expires_wall = time.time() + MAX_INT64_NS / 1e9
        else:
            delay = self._keep_alive_scaled(r.session)
            r.idle_deadline = time.monotonic() + delay
            r.expires_wall = time.time() + delay

    def _mark_expiring(self, r: _Runner, reason: str) -> None:
        if not r.expiring:
            r.expiring = True
            r.expire_reason = reason
        r.session = 0.0
        if r.state == READY and r.refcount == 0:
            self._unload(r, r.expire_reason)
        self._cv.notify_all()

    def _unload(self, r: _Runner, reason: str) -> None:
        """Remove ``r`` from /api/ps now; its memory is freed after the release lag."""
        if self._loaded.get(r.spec.name) is r:
            del self._loaded[r.spec.name]
        if r.counted:
            r.state = RELEASING
            r.release_at = time.monotonic() + self._scaled(self.vram_release_lag)
            self._releasing.append(r)
        else:
            r.state = GONE
        self._unloads += 1
        self._unload_events.append({"model": r.spec.name, "t": time.monotonic(), "reason": reason})
        self._memory_changed()

    def _drop(self, r: _Runner, state: str) -> None:
        """The runner process is gone at once (crash, failed load): memory freed now."""
        if self._loaded.get(r.spec.name) is r:
            del self._loaded[r.spec.name]
        r.state = state
        r.counted = False
        self._memory_changed()

    def _crash_until_fits(self) -> None:
        """Real use above capacity: crash runners, most recently loaded first."""
        while self._real_used_mb() > self.vram_mb:
            candidates = [r for r in self._loaded.values() if r.counted]
            if not candidates:
                break
            victim = max(candidates, key=lambda r: r.seq)
            self._crashes += 1
            self._unload_events.append(
                {"model": victim.spec.name, "t": time.monotonic(), "reason": "crash"}
            )
            self._drop(victim, CRASHED)

    def _release(self, r: _Runner) -> None:
        """A request is done with ``r`` (its HTTP exchange ended)."""
        with self._cv:
            r.refcount -= 1
            if r.refcount == 0 and r.state == READY:
                self._go_idle(r)
            self._cv.notify_all()

    def request_unload(self, spec: ModelSpec) -> None:
        """``keep_alive: 0`` with an empty prompt: expire the runner once it is idle."""
        with self._cv:
            r = self._loaded.get(spec.name)
            if r is not None:
                self._mark_expiring(r, "requested")

    # ----- getting a runner (handler threads) ----------------------------------------

    def _acquire(
        self,
        spec: ModelSpec,
        opts: RunnerOptions,
        keep_alive: float | None,
        client_gone: Callable[[], bool],
    ) -> _Runner:
        """Fast path or the FIFO queue; blocks until a runner is attached (refcount held).

        Raises :class:`_HTTPError` (503 queue full, 500 load failure), :class:`_ClientGone`
        or :class:`_ShuttingDown`.
        """
        with self._cv:
            if self._stopping:
                raise _ShuttingDown
            r = self._loaded.get(spec.name)
            if r is not None and self._usable(r, opts):
                self._attach(r, keep_alive)
                return r
            if len(self._queue) >= self.max_queue:
                raise _HTTPError(503, ERR_QUEUE_FULL)
            pending = _Pending(spec, opts, keep_alive)
            self._queue.append(pending)
            self._cv.notify_all()
            while pending.runner is None and pending.error is None:
                if self._stopping or client_gone():
                    pending.cancelled = True
                    with contextlib.suppress(ValueError):
                        self._queue.remove(pending)
                    self._cv.notify_all()
                    raise _ShuttingDown if self._stopping else _ClientGone
                self._cv.wait(POLL_S)
            if pending.error is not None:
                raise pending.error
            assert pending.runner is not None
            return pending.runner

    def _enter_slot(self, r: _Runner, client_gone: Callable[[], bool]) -> None:
        """Wait (FIFO) for one of the runner's ``num_parallel`` slots."""
        ticket = object()
        with self._cv:
            r.waiters.append(ticket)
            try:
                while True:
                    self._check_alive(r, client_gone)
                    if r.waiters[0] is ticket and r.active < r.parallel:
                        r.waiters.popleft()
                        r.active += 1
                        return
                    self._cv.wait(POLL_S)
            except BaseException:
                with contextlib.suppress(ValueError):
                    r.waiters.remove(ticket)
                self._cv.notify_all()
                raise

    def _leave_slot(self, r: _Runner) -> None:
        with self._cv:
            r.active -= 1
            self._cv.notify_all()

    def _check_alive(self, r: _Runner, client_gone: Callable[[], bool]) -> None:
        if r.state == CRASHED:
            raise _RunnerCrashed
        if self._stopping:
            raise _ShuttingDown
        if client_gone():
            raise _ClientGone

    def _gate(self, r: _Runner, token_index: int, client_gone: Callable[[], bool]) -> None:
        """Hold the request while the gate is closed for this token index."""
        if not self._gate_closed:  # unlocked fast check; re-checked below
            return
        with self._cv:
            if not (self._gate_closed and token_index >= self._gate_after):
                return
            self._gated += 1
            self._cv.notify_all()
            try:
                while self._gate_closed and token_index >= self._gate_after:
                    self._check_alive(r, client_gone)
                    self._cv.wait(POLL_S)
            finally:
                self._gated -= 1
                self._cv.notify_all()

    def _set_generating(self, delta: int) -> None:
        with self._cv:
            self._generating += delta
            if (delta > 0 and self._generating == 1) or self._generating == 0:
                self._write_nvml()

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the simulator stops."""
        if seconds > 0 and self._stop_event.wait(seconds):
            raise _ShuttingDown

    # ----- the scheduler thread --------------------------------------------------------

    def _scheduler_loop(self) -> None:
        """Ollama's ``processPending``: one request at a time, strictly FIFO."""
        with self._cv:
            while True:
                while not self._stopping and not self._queue:
                    self._cv.wait()
                if self._stopping:
                    for pending in self._queue:
                        pending.error = _HTTPError(500, ERR_SHUTDOWN)
                    self._queue.clear()
                    self._cv.notify_all()
                    return
                pending = self._queue.popleft()
                self._head = pending
                try:
                    self._serve_head(pending)
                except Exception as exc:  # keep scheduling whatever went wrong
                    pending.error = _HTTPError(500, f"simulator error: {exc!r}")
                finally:
                    self._head = None
                    self._cv.notify_all()

    def _serve_head(self, p: _Pending) -> None:
        """Find or make a runner for the head request; blocks the whole queue meanwhile."""
        while True:
            if p.cancelled:
                return
            if self._stopping:
                p.error = _HTTPError(500, ERR_SHUTDOWN)
                return
            existing = self._loaded.get(p.spec.name)
            if existing is not None:
                if self._usable(existing, p.opts):
                    self._attach(existing, p.keep_alive)
                    p.runner = existing
                    return
                if not existing.expiring:
                    reason = "reload" if existing.opts.needs_reload(p.opts) else "expired"
                    self._mark_expiring(existing, reason)
                self._wait_gone(existing, p)
                continue
            if len(self._loaded) >= self.max_loaded_models:
                self._evict_one(p, "max loaded models")
                continue
            parallel = 1 if p.spec.is_embedding else self.num_parallel
            full = p.spec.vram_for(p.opts.num_ctx, parallel)
            need = self._vram_part(p.spec, p.opts, full) + CUDA_CONTEXT_BYTES
            if need <= self._ollama_free_bytes():
                self._load(p, parallel, full, partial=False)
                return
            if self._releasing:
                self._wait_releases(p)
                continue
            if self._loaded:
                self._evict_one(p, "needs memory")
                continue
            self._load(p, parallel, full, partial=True)  # too big for the GPU: CPU spill
            return

    def _vram_part(self, spec: ModelSpec, opts: RunnerOptions, full: int) -> int:
        if opts.num_gpu == 0:
            return 0
        layers = spec.block_count + 1
        if 0 < opts.num_gpu < layers:
            return full * opts.num_gpu // layers
        return full

    def _evict_one(self, p: _Pending, reason: str) -> None:
        """One victim per iteration: sort by (keep_alive, name), idle first; wait it out."""
        ordered = sorted(self._loaded.values(), key=lambda r: (r.session, r.spec.name))
        idle = [r for r in ordered if r.refcount == 0 and r.state == READY]
        victim = idle[0] if idle else ordered[0]
        self._mark_expiring(victim, f"evicted ({reason})")
        self._wait_gone(victim, p)

    def _wait_gone(self, r: _Runner, p: _Pending) -> None:
        """Block (lock released while waiting) until ``r`` is unloaded and its VRAM free."""
        while r.state in (LOADING, READY, RELEASING) and not self._stopping and not p.cancelled:
            self._cv.wait(POLL_S)

    def _wait_releases(self, p: _Pending) -> None:
        while self._releasing and not self._stopping and not p.cancelled:
            self._cv.wait(POLL_S)

    def _load(self, p: _Pending, parallel: int, full: int, partial: bool) -> None:
        """Start a runner for the head request and wait for it (one load at a time)."""
        spec = p.spec
        vram = self._vram_part(spec, p.opts, full)
        if partial:
            room = self.vram_mb * MIB * 19 // 20 - CUDA_CONTEXT_BYTES
            vram = max(0, min(vram, room))
        cpu_share = 1.0 - (vram / full if full else 1.0)
        self._seq += 1
        r = _Runner(
            spec=spec,
            opts=p.opts,
            parallel=parallel,
            size=full,
            size_vram=vram,
            session=self.default_keep_alive if p.keep_alive is None else p.keep_alive,
            pid=40000 + self._seq,
            seq=self._seq,
            token_seconds=spec.token_seconds * (1.0 + 9.0 * cpu_share),
        )
        self._loaded[spec.name] = r
        free_mb = self.vram_mb - self._real_used_mb()
        oom = r.gpu_bytes > 0 and r.gpu_mb > free_mb
        r.counted = not oom
        self._loads += 1
        event: dict[str, Any] = {
            "model": spec.name,
            "started": time.monotonic(),
            "finished": None,
            "ok": None,
        }
        self._load_events.append(event)
        self._memory_changed()
        seconds = OOM_STARTUP_S if oom else spec.load_seconds(r.gpu_bytes)
        deadline = time.monotonic() + self._scaled(seconds)
        while r.state == LOADING and not self._stopping and not p.cancelled:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._cv.wait(min(left, POLL_S))
        event["finished"] = time.monotonic()
        event["ok"] = False
        if r.state == CRASHED:
            p.error = _HTTPError(500, ERR_LOAD_OOM)
            return
        if self._stopping:
            self._drop(r, GONE)
            p.error = _HTTPError(500, ERR_SHUTDOWN)
            return
        if p.cancelled:  # the client went away: Ollama aborts the load
            self._unload(r, "load aborted")
            return
        if oom:
            self._ooms += 1
            self._drop(r, GONE)
            p.error = _HTTPError(500, ERR_LOAD_OOM)
            return
        r.state = READY
        event["ok"] = True
        self._attach(r, p.keep_alive)
        p.runner = r
        self._cv.notify_all()

    # ----- the housekeeper thread ------------------------------------------------------

    def _housekeeper_loop(self) -> None:
        """Idle expiry, VRAM release after the lag, re-listening after a refusal."""
        while True:
            reopen = False
            with self._cv:
                if self._stopping:
                    return
                now = time.monotonic()
                released = [r for r in self._releasing if r.release_at <= now]
                for r in released:
                    self._releasing.remove(r)
                    r.state = GONE
                    r.counted = False
                if released:
                    self._memory_changed()
                for r in list(self._loaded.values()):
                    if (
                        r.state == READY
                        and r.refcount == 0
                        and r.idle_deadline is not None
                        and r.idle_deadline <= now
                    ):
                        self._unload(r, "expired")
                if self._reopen_at is not None and now >= self._reopen_at:
                    self._reopen_at = None
                    reopen = True
                else:
                    deadlines = [r.release_at for r in self._releasing]
                    deadlines += [
                        r.idle_deadline
                        for r in self._loaded.values()
                        if r.idle_deadline is not None and r.refcount == 0
                    ]
                    if self._reopen_at is not None:
                        deadlines.append(self._reopen_at)
                    wait = min(deadlines) - now if deadlines else 1.0
                    self._cv.wait(max(0.001, min(wait, 1.0)))
            if reopen:
                try:
                    self._open_listener()
                except OSError:
                    with self._cv:
                        self._reopen_at = time.monotonic() + POLL_S


# --------------------------------------------------------------------------------------
# HTTP


class _Server(ThreadingHTTPServer):
    """One listening socket; the simulator makes a new one after ``refuse_connections``."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sim: FakeOllama) -> None:
        self.sim = sim
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup; not needed on loopback.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client went away: normal for a server
        super().handle_error(request, client_address)


_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/"): "root",
    ("HEAD", "/"): "root",
    ("GET", "/api/version"): "version",
    ("HEAD", "/api/version"): "version",
    ("GET", "/api/tags"): "tags",
    ("HEAD", "/api/tags"): "tags",
    ("GET", "/api/ps"): "ps",
    ("POST", "/api/show"): "show",
    ("POST", "/api/generate"): "generate",
    ("POST", "/api/chat"): "chat",
    ("POST", "/api/embed"): "embed",
    ("POST", "/api/embeddings"): "embeddings",
    ("POST", "/api/pull"): "pull",
    ("DELETE", "/api/delete"): "delete",
}


class _Handler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive. Ollama semantics live in the ``_api_*`` methods."""

    protocol_version = "HTTP/1.1"
    server_version = "fake-ollama/" + VERSION
    sys_version = ""
    # TCP_NODELAY, as Go's net package (so Ollama) sets it: headers and body go out in two
    # writes, and with Nagle on, the body would wait for the client's delayed ACK (~40 ms).
    disable_nagle_algorithm = True

    _t0: float
    _endpoint: str
    _model: str | None
    _status: int | None
    _streaming: bool
    _fault: str | None
    _tag: str | None

    @property
    def sim(self) -> FakeOllama:
        return cast(_Server, self.server).sim

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.sim._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.sim._track(self.connection, False)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    # ----- plumbing -----------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        sim = self.sim
        sim._set_busy(self.connection, True)
        self._t0 = time.monotonic()
        self._status = None
        self._streaming = False
        self._model = None
        self._fault = None
        self._tag = None
        path = urlsplit(self.path).path
        self._endpoint = path
        try:
            body = self._read_body()
            if path == "/_sim" or path.startswith("/_sim/"):
                self._control(method, path, body)
            else:
                self._api(method, path, body)
        except (_ClientGone, OSError):
            self.close_connection = True
            if self._status is None:
                sim._record(self._t0, path, self._model, 499, tag=self._tag)
        finally:
            sim._set_busy(self.connection, False)
            with sim._cv:
                if sim._reopen_at is not None:  # not listening: drop keep-alive connections
                    self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _client_gone(self) -> bool:
        """True once the client closed its side (checked without consuming data)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, obj: Any) -> None:
        if self._endpoint.startswith("/api/") or self._endpoint == "/":
            self.sim._record(self._t0, self._endpoint, self._model, status, self._fault, self._tag)
        body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        self._send(status, body, "application/json; charset=utf-8")

    def _send_text(self, status: int, text: str, content_type: str = "text/plain") -> None:
        if not self._endpoint.startswith("/_sim"):
            self.sim._record(self._t0, self._endpoint, self._model, status)
        self._send(status, text.encode(), content_type)

    def _stream_line(self, obj: Any) -> None:
        """Write one NDJSON line as an HTTP chunk; the first call sends the 200 headers."""
        if not self._streaming:
            self._streaming = True
            self._status = 200
            self.sim._record(self._t0, self._endpoint, self._model, 200, self._fault, self._tag)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def _end_stream(self) -> None:
        if self._streaming:
            self.wfile.write(b"0\r\n\r\n")

    # ----- /api routing -------------------------------------------------------------

    def _api(self, method: str, path: str, raw: bytes) -> None:
        sim = self.sim
        route = _ROUTES.get((method, path))
        with sim._cv:
            disabled = path in sim._disabled
            latency = sim._latency
        if route is None or disabled:
            self._send_text(404, NOT_FOUND_TEXT)
            return
        with sim._cv:
            sim._in_flight += 1
        try:
            try:
                sim._sleep(latency)
                fault = self._take_fault(path)
                if fault is not None:
                    self._apply_fault(fault, path, raw)
                else:
                    getattr(self, "_api_" + route)(raw)
            except _HTTPError as exc:
                self._fail(exc.status, exc.message)
            except _ShuttingDown:
                self._fail(500, ERR_SHUTDOWN)
            self._end_stream()
        finally:
            with sim._cv:
                sim._in_flight -= 1

    def _fail(self, status: int, message: str) -> None:
        if self._streaming:
            self._stream_line({"error": message})
        else:
            self._send_json(status, {"error": message})

    def _take_fault(self, path: str) -> _Fault | None:
        sim = self.sim
        with sim._cv:
            for fault in sim._faults:
                if fault.endpoint == path or (
                    fault.endpoint is None and path in INFERENCE_ENDPOINTS
                ):
                    fault.count -= 1
                    if fault.count <= 0:
                        sim._faults.remove(fault)
                    return fault
        return None

    def _apply_fault(self, fault: _Fault, path: str, raw: bytes) -> None:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        model = body.get("model") if isinstance(body, dict) else None
        self._model = model if isinstance(model, str) else None
        self._fault = fault.mode
        if isinstance(body, dict):
            self._tag = _bench_tag(body.get("prompt"))
        if fault.mode in ("hang", "close"):
            if fault.mode == "hang":
                with contextlib.suppress(_ShuttingDown):
                    self.sim._sleep(fault.seconds)
            self.sim._record(self._t0, path, self._model, 0, fault.mode, self._tag)
            self._status = 0
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        streaming = isinstance(body, dict) and body.get("stream") is not False
        if fault.mode == "stream" and streaming and path in ("/api/generate", "/api/chat"):
            self._stream_line(self._chunk(path == "/api/chat", self._model or "", "The"))
            self._stream_line({"error": fault.error})
            return
        if fault.mode == "stream" and streaming and path == "/api/pull":
            self._stream_line({"status": "pulling manifest"})
            self._stream_line({"error": fault.error})
            return
        status = fault.status if fault.mode == "http" else 500
        self._send_json(status, {"error": fault.error})

    # ----- simple endpoints -----------------------------------------------------------

    def _api_root(self, raw: bytes) -> None:
        self._send_text(200, "Ollama is running", "text/plain; charset=utf-8")

    def _api_version(self, raw: bytes) -> None:
        self._send_json(200, {"version": VERSION})

    def _api_tags(self, raw: bytes) -> None:
        with self.sim._cv:
            installed = sorted(self.sim._installed.items(), key=lambda kv: (-kv[1], kv[0]))
        models = []
        for name, modified in installed:
            spec = CATALOG[name]
            models.append(
                {
                    "name": name,
                    "model": name,
                    "modified_at": _rfc3339(modified),
                    "size": spec.disk_bytes,
                    "digest": spec.digest,
                    "details": spec.details(),
                }
            )
        self._send_json(200, {"models": models})

    def _api_ps(self, raw: bytes) -> None:
        sim = self.sim
        now_wall = time.time()
        rows: list[tuple[float, dict[str, Any]]] = []
        with sim._cv:
            for r in sim._loaded.values():
                if r.expires_wall is not None:
                    expires = r.expires_wall
                elif math.isinf(r.session):
                    expires = now_wall + MAX_INT64_NS / 1e9
                else:
                    expires = now_wall + sim._keep_alive_scaled(r.session)
                rows.append(
                    (
                        expires,
                        {
                            "name": r.spec.name,
                            "model": r.spec.name,
                            "size": r.size,
                            "digest": r.spec.digest,
                            "details": r.spec.details(),
                            "expires_at": _rfc3339(expires),
                            "size_vram": r.size_vram,
                            "context_length": r.context_length,
                        },
                    )
                )
        rows.sort(key=lambda row: (-row[0], row[1]["name"]))
        self._send_json(200, {"models": [row for _, row in rows]})

    def _api_show(self, raw: bytes) -> None:
        body = _decode_body(raw, "ShowRequest")
        _check_fields(body, "ShowRequest", _SHOW_FIELDS)
        name = body.get("model") or body.get("name") or ""
        self._model = name
        if not name:
            raise _HTTPError(400, "model is required")
        spec = self.sim._resolve(name, double_quote=False)
        with self.sim._cv:
            modified = self.sim._installed.get(spec.name, _INSTALLED_AT)
        arch = spec.architecture
        info: dict[str, Any] = {
            "general.architecture": arch,
            "general.file_type": 2,
            "general.parameter_count": _parameter_count(spec.parameter_size),
            "general.quantization_version": 2,
            f"{arch}.context_length": spec.context_length,
            f"{arch}.embedding_length": spec.embedding_length,
            f"{arch}.block_count": spec.block_count,
            f"{arch}.attention.head_count": spec.head_count,
            f"{arch}.attention.head_count_kv": spec.head_count_kv,
        }
        template = (
            "{{ .Prompt }}"
            if spec.is_embedding
            else (
                "{{ if .System }}<|system|>{{ .System }}<|end|>{{ end }}"
                "<|user|>{{ .Prompt }}<|end|><|assistant|>{{ .Response }}<|end|>"
            )
        )
        parameters = "" if spec.is_embedding else 'stop                           "<|end|>"'
        modelfile = (
            '# Modelfile generated by "ollama show"\n'
            "# To build a new Modelfile based on this, replace FROM with:\n"
            f"# FROM {spec.name}\n\n"
            f"FROM /root/.ollama/models/blobs/sha256-{_layer_digest(spec, 'model')}\n"
            f'TEMPLATE """{template}"""\n'
        )
        if parameters:
            modelfile += f"PARAMETER {parameters}\n"
        self._send_json(
            200,
            {
                "license": "simulated license text",
                "modelfile": modelfile,
                "parameters": parameters,
                "template": template,
                "details": spec.details(),
                "model_info": info,
                "capabilities": list(spec.capabilities),
                "modified_at": _rfc3339(modified),
            },
        )

    def _api_delete(self, raw: bytes) -> None:
        body = _decode_body(raw, "DeleteRequest")
        _check_fields(body, "DeleteRequest", _DELETE_FIELDS)
        name = body.get("model") or body.get("name") or ""
        self._model = name
        if not name:
            raise _HTTPError(400, "model is required")
        canonical = canonical_name(name)
        if canonical is None:
            raise _HTTPError(400, "invalid model name")
        with self.sim._cv:
            if canonical not in self.sim._installed:
                raise _HTTPError(404, f"model '{name}' not found")
            del self.sim._installed[canonical]  # a loaded runner keeps running, as in Ollama
        self.sim._record(self._t0, self._endpoint, self._model, 200)
        self._send(200, b"", "text/plain; charset=utf-8")

    def _api_pull(self, raw: bytes) -> None:
        sim = self.sim
        body = _decode_body(raw, "PullRequest")
        _check_fields(body, "PullRequest", _PULL_FIELDS)
        name = body.get("model") or body.get("name") or ""
        self._model = name
        canonical = canonical_name(name) if name else None
        if canonical is None:
            raise _HTTPError(400, "invalid model name")
        stream = body.get("stream") is not False
        spec = CATALOG.get(canonical)

        def emit(obj: dict[str, Any]) -> None:
            if stream:
                self._stream_line(obj)

        emit({"status": "pulling manifest"})
        sim._sleep(sim._scaled(0.2))
        if spec is None:
            raise _HTTPError(500, ERR_PULL_MISSING)
        with sim._cv:
            present = spec.name in sim._installed
        for layer, size in _layers(spec):
            digest = "sha256:" + _layer_digest(spec, layer)
            status = f"pulling {digest[7:19]}"
            if present:
                emit({"status": status, "digest": digest, "total": size, "completed": size})
                continue
            emit({"status": status, "digest": digest, "total": size})
            seconds = sim._scaled(size / PULL_BYTES_PER_S)
            steps = max(1, min(40, math.ceil(size / PULL_BYTES_PER_S / PULL_TICK_S)))
            for step in range(1, steps + 1):
                sim._sleep(seconds / steps)
                if self._client_gone():
                    raise _ClientGone
                emit(
                    {
                        "status": status,
                        "digest": digest,
                        "total": size,
                        "completed": size * step // steps,
                    }
                )
        emit({"status": "verifying sha256 digest"})
        emit({"status": "writing manifest"})
        with sim._cv:
            if spec.name not in sim._installed:
                sim._installed[spec.name] = time.time()
        if stream:
            emit({"status": "success"})
        else:
            self._send_json(200, {"status": "success"})

    # ----- inference -------------------------------------------------------------------

    def _chunk(self, chat: bool, model: str, piece: str) -> dict[str, Any]:
        if chat:
            return {
                "model": model,
                "created_at": _now_rfc3339(),
                "message": {"role": "assistant", "content": piece},
                "done": False,
            }
        return {"model": model, "created_at": _now_rfc3339(), "response": piece, "done": False}

    def _api_generate(self, raw: bytes) -> None:
        body = _decode_body(raw, "GenerateRequest")
        _check_fields(body, "GenerateRequest", _GENERATE_FIELDS)
        self._tag = _bench_tag(body.get("prompt"))
        keep_alive = _keep_alive_of(body)
        name = body.get("model") or ""
        self._model = name
        if not name:
            raise _HTTPError(404, "model '' not found")
        spec = self.sim._resolve(name, double_quote=False)
        if not body.get("prompt") and keep_alive == 0:
            # Ollama expires the runner before it checks capabilities: embedding models
            # are unloaded this way too
            self._load_or_unload(spec, RunnerOptions(), keep_alive, name, chat=False)
            return
        if "completion" not in spec.capabilities:
            raise _HTTPError(400, f"{_go_quote(name)} does not support generate")
        _check_think(body, spec, name)
        opts, sampling = _parse_options(body.get("options"))
        prompt = body.get("prompt") or ""
        system = body.get("system") or ""
        if not prompt:
            self._load_or_unload(spec, opts, keep_alive, name, chat=False)
            return
        seed = _seed_of(spec.name, system, prompt, sampling.get("seed", ""))
        prompt_tokens = count_tokens(system) + count_tokens(prompt) + len(body.get("context") or [])
        if not body.get("raw"):
            prompt_tokens += 10  # the template's tokens
        self._complete(
            spec, opts, keep_alive, name, False, seed, max(1, prompt_tokens), sampling, body
        )

    def _api_chat(self, raw: bytes) -> None:
        body = _decode_body(raw, "ChatRequest")
        _check_fields(body, "ChatRequest", _CHAT_FIELDS)
        messages = body.get("messages") or []
        for message in messages:
            if not isinstance(message, dict):
                raise _HTTPError(
                    400,
                    f"json: cannot unmarshal {_json_kind(message)} into Go "
                    "struct field ChatRequest.messages of type api.Message",
                )
            for key in ("role", "content"):
                if not _type_ok(message.get(key), _STRING):
                    raise _HTTPError(
                        400,
                        f"json: cannot unmarshal {_json_kind(message[key])} "
                        f"into Go struct field ChatRequest.messages.{key} "
                        "of type string",
                    )
        if messages:
            self._tag = _bench_tag(messages[-1].get("content"))
        keep_alive = _keep_alive_of(body)
        name = body.get("model") or ""
        self._model = name
        if not name:
            raise _HTTPError(400, "model is required")
        spec = self.sim._resolve(name, double_quote=False)
        if not messages and keep_alive == 0:  # unloads before the capability check
            self._load_or_unload(spec, RunnerOptions(), keep_alive, name, chat=True)
            return
        if "completion" not in spec.capabilities:
            raise _HTTPError(400, f"{_go_quote(name)} does not support chat")
        if body.get("tools") and "tools" not in spec.capabilities:
            raise _HTTPError(400, f"{_go_quote(name)} does not support tools")
        _check_think(body, spec, name)
        opts, sampling = _parse_options(body.get("options"))
        if not messages:
            self._load_or_unload(spec, opts, keep_alive, name, chat=True)
            return
        flat = json.dumps([[m.get("role"), m.get("content")] for m in messages])
        seed = _seed_of(spec.name, flat, sampling.get("seed", ""))
        prompt_tokens = sum(count_tokens(str(m.get("content") or "")) + 4 for m in messages)
        self._complete(
            spec, opts, keep_alive, name, True, seed, max(1, prompt_tokens), sampling, body
        )

    def _load_or_unload(
        self,
        spec: ModelSpec,
        opts: RunnerOptions,
        keep_alive: float | None,
        name: str,
        chat: bool,
    ) -> None:
        """Empty prompt/messages: unload with keep_alive 0, else load and answer ``load``."""
        reply: dict[str, Any] = {"model": name, "created_at": ""}
        if chat:
            reply["message"] = {"role": "assistant", "content": ""}
        else:
            reply["response"] = ""
        reply["done"] = True
        if keep_alive == 0:
            self.sim.request_unload(spec)
            reply["created_at"] = _now_rfc3339()
            reply["done_reason"] = "unload"
            self._send_json(200, reply)
            return
        runner = self._get_runner(spec, opts, keep_alive)
        try:
            reply["created_at"] = _now_rfc3339()
            reply["done_reason"] = "load"
            self._send_json(200, reply)
        finally:
            self.sim._release(runner)

    def _get_runner(
        self, spec: ModelSpec, opts: RunnerOptions, keep_alive: float | None
    ) -> _Runner:
        return self.sim._acquire(spec, opts, keep_alive, self._client_gone)

    def _complete(
        self,
        spec: ModelSpec,
        opts: RunnerOptions,
        keep_alive: float | None,
        name: str,
        chat: bool,
        seed: int,
        prompt_tokens: int,
        sampling: dict[str, Any],
        body: dict[str, Any],
    ) -> None:
        """Generate (streaming or not) on a runner: slot, gate, prompt eval, tokens."""
        sim = self.sim
        stream = body.get("stream") is not False
        pieces, done_reason = make_reply(seed, sampling.get("num_predict"), body.get("format"))
        runner = self._get_runner(spec, opts, keep_alive)
        loaded_at = time.monotonic()
        try:
            sim._enter_slot(runner, self._client_gone)
            try:
                self._gate_and_generate(
                    runner, name, chat, stream, pieces, done_reason, prompt_tokens, loaded_at, seed
                )
            finally:
                sim._leave_slot(runner)
        except _RunnerCrashed:
            self._fail(500, ERR_MIDSTREAM_OOM if self._streaming else ERR_RUNNER_STOPPED)
        finally:
            sim._release(runner)

    def _gate_and_generate(
        self,
        runner: _Runner,
        name: str,
        chat: bool,
        stream: bool,
        pieces: list[str],
        done_reason: str,
        prompt_tokens: int,
        loaded_at: float,
        seed: int,
    ) -> None:
        sim = self.sim
        gone = self._client_gone
        sim._gate(runner, 0, gone)
        sim._set_generating(+1)
        try:
            eval_start = time.monotonic()
            sim._sleep(sim._scaled(prompt_tokens * runner.token_seconds / 10.0))
            sim._check_alive(runner, gone)
            gen_start = time.monotonic()
            token_s = sim._scaled(runner.token_seconds)
            due = gen_start
            last_check = gen_start
            for index, piece in enumerate(pieces):
                if index:
                    sim._gate(runner, index, gone)
                due = max(due + token_s, time.monotonic() - token_s)
                sim._sleep(due - time.monotonic())
                if runner.state == CRASHED:
                    raise _RunnerCrashed
                if stream:
                    self._stream_line(self._chunk(chat, name, piece))
                elif time.monotonic() - last_check > POLL_S:
                    last_check = time.monotonic()
                    sim._check_alive(runner, gone)
            end = time.monotonic()
        finally:
            sim._set_generating(-1)
        text = "" if stream else "".join(pieces)
        final: dict[str, Any] = {"model": name, "created_at": _now_rfc3339()}
        if chat:
            final["message"] = {"role": "assistant", "content": text}
        else:
            final["response"] = text
        final["done"] = True
        final["done_reason"] = done_reason
        if not chat:
            rng = random.Random(seed)
            final["context"] = [rng.randrange(1, 32000) for _ in range(prompt_tokens + len(pieces))]
        final.update(
            _metrics(self._t0, loaded_at, eval_start, gen_start, end, prompt_tokens, len(pieces))
        )
        if stream:
            self._stream_line(final)
        else:
            self._send_json(200, final)

    def _api_embed(self, raw: bytes) -> None:
        body = _decode_body(raw, "EmbedRequest")
        _check_fields(body, "EmbedRequest", _EMBED_FIELDS)
        keep_alive = _keep_alive_of(body)
        name = body.get("model") or ""
        self._model = name
        raw_input = body.get("input")
        inputs: list[str] = []
        if isinstance(raw_input, str):
            inputs = [raw_input] if raw_input else []
        elif isinstance(raw_input, list):
            if not all(isinstance(item, str) for item in raw_input):
                raise _HTTPError(400, "invalid input type")
            inputs = list(raw_input)
        elif raw_input is not None:
            raise _HTTPError(400, "invalid input type")
        if inputs:
            self._tag = _bench_tag(inputs[0])
        if not name:
            raise _HTTPError(404, 'model "" not found, try pulling it first')
        spec = self.sim._resolve(name, double_quote=True)
        opts, _ = _parse_options(body.get("options"))
        runner = self._get_runner(spec, opts, keep_alive)
        loaded_at = time.monotonic()
        try:
            if not inputs:
                self._send_json(200, {"model": name, "embeddings": []})
                return
            ctx = runner.context_length
            counts = [max(1, count_tokens(text)) for text in inputs]
            if body.get("truncate") is False and max(counts) > ctx:
                raise _HTTPError(400, "the input length exceeds the context length")
            counts = [min(c, ctx) for c in counts]
            vectors = self._embed_on(runner, [(spec.name, t) for t in inputs], sum(counts))
            dims = body.get("dimensions")
            if isinstance(dims, int | float) and 0 < int(dims) < spec.embedding_length:
                vectors = [v[: int(dims)] for v in vectors]
            self._send_json(
                200,
                {
                    "model": name,
                    "embeddings": [_normalised(v) for v in vectors],
                    "total_duration": _ns(time.monotonic() - self._t0),
                    "load_duration": _ns(loaded_at - self._t0),
                    "prompt_eval_count": sum(counts),
                },
            )
        except _RunnerCrashed:
            raise _HTTPError(500, ERR_RUNNER_STOPPED) from None
        finally:
            self.sim._release(runner)

    def _api_embeddings(self, raw: bytes) -> None:
        body = _decode_body(raw, "EmbeddingRequest")
        _check_fields(body, "EmbeddingRequest", _EMBEDDINGS_FIELDS)
        keep_alive = _keep_alive_of(body)
        name = body.get("model") or ""
        self._model = name
        if not name:
            raise _HTTPError(400, "model is required")
        spec = self.sim._resolve(name, double_quote=True)
        opts, _ = _parse_options(body.get("options"))
        prompt = body.get("prompt") or ""
        runner = self._get_runner(spec, opts, keep_alive)
        try:
            if not prompt:
                self._send_json(200, {"embedding": []})
                return
            tokens = min(max(1, count_tokens(prompt)), runner.context_length)
            vector = self._embed_on(runner, [(spec.name, prompt)], tokens)[0]
            self._send_json(200, {"embedding": [round(x, 8) for x in vector]})
        except _RunnerCrashed:
            raise _HTTPError(500, ERR_RUNNER_STOPPED) from None
        finally:
            self.sim._release(runner)

    def _embed_on(
        self, runner: _Runner, items: list[tuple[str, str]], tokens: int
    ) -> list[list[float]]:
        """Compute raw vectors on ``runner`` (slot, gate, time proportional to tokens)."""
        sim = self.sim
        sim._enter_slot(runner, self._client_gone)
        try:
            sim._gate(runner, 0, self._client_gone)
            sim._set_generating(+1)
            try:
                sim._sleep(sim._scaled(tokens * runner.token_seconds / 20.0))
                sim._check_alive(runner, self._client_gone)
                return [make_embedding(m, t, runner.spec.embedding_length) for m, t in items]
            finally:
                sim._set_generating(-1)
        finally:
            sim._leave_slot(runner)

    # ----- /_sim/ controls ------------------------------------------------------------

    def _control(self, method: str, path: str, raw: bytes) -> None:
        sim = self.sim
        try:
            body: Any = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            name = path[len("/_sim/") :]
            if (method, name) == ("GET", "stats"):
                self._send_json(200, sim.stats())
            elif (method, name) == ("GET", "gpu"):
                self._send_json(200, sim.gpu())
            elif (method, name) == ("GET", "faults"):
                with sim._cv:
                    self._send_json(200, {"faults": [f.as_dict() for f in sim._faults]})
            elif (method, name) == ("DELETE", "faults"):
                sim.clear_faults()
                self._send_json(200, {"ok": True})
            elif (method, name) == ("POST", "faults"):
                sim.inject_fault(
                    count=body.get("count", 1),
                    status=body.get("status", 500),
                    error=body.get("error"),
                    endpoint=body.get("endpoint"),
                    mode=body.get("mode", "http"),
                    seconds=float(body.get("seconds", 30.0)),
                )
                self._send_json(200, {"ok": True})
            elif (method, name) == ("POST", "gpu"):
                sim.set_other_program_mb(int(body["other_mb"]))
                self._send_json(200, sim.gpu())
            elif (method, name) == ("POST", "gate"):
                sim.set_gate(bool(body["closed"]), int(body.get("after_tokens", 0)))
                self._send_json(200, {"ok": True, "closed": bool(body["closed"])})
            elif (method, name) == ("POST", "latency"):
                sim.set_latency(float(body["seconds"]))
                self._send_json(200, {"ok": True})
            elif (method, name) == ("POST", "disable"):
                if body.get("enabled"):
                    sim.enable_endpoint(str(body["endpoint"]))
                else:
                    sim.disable_endpoint(str(body["endpoint"]))
                self._send_json(200, {"ok": True})
            elif (method, name) == ("POST", "reset"):
                sim.reset(everything=bool(body.get("everything", False)))
                self._send_json(200, {"ok": True})
            elif (method, name) == ("POST", "refuse"):
                # Stop listening first: once the client has the answer, connects fail.
                sim.refuse_connections(float(body["seconds"]))
                self.close_connection = True
                self._send(200, b'{"ok":true}', "application/json; charset=utf-8")
            else:
                self._send_text(404, NOT_FOUND_TEXT)
        except (KeyError, TypeError, ValueError) as exc:
            self._send_json(400, {"error": f"bad control request: {exc!r}"})


# --------------------------------------------------------------------------------------
# Small helpers for the handler


def _bench_tag(text: object) -> str | None:
    """The ``<tag>`` of a ``[bench:<tag>]`` prefix of ``text``, else None."""
    if not isinstance(text, str) or not text.startswith("[bench:"):
        return None
    match = BENCH_TAG_RE.match(text)
    return match.group(1) if match else None


def _keep_alive_of(body: dict[str, Any]) -> float | None:
    try:
        return parse_keep_alive(body.get("keep_alive"))
    except ValueError as exc:
        raise _HTTPError(400, str(exc)) from None


def _check_think(body: dict[str, Any], spec: ModelSpec, name: str) -> None:
    think = body.get("think")
    if think not in (None, False) and "thinking" not in spec.capabilities:
        raise _HTTPError(400, f"{_go_quote(name)} does not support thinking")


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def _metrics(
    t0: float,
    loaded_at: float,
    eval_start: float,
    gen_start: float,
    end: float,
    prompt_tokens: int,
    eval_tokens: int,
) -> dict[str, int]:
    """Ollama's metric fields; zero values are left out (omitempty)."""
    values = {
        "total_duration": _ns(time.monotonic() - t0),
        "load_duration": _ns(loaded_at - t0),
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": _ns(gen_start - eval_start),
        "eval_count": eval_tokens,
        "eval_duration": _ns(end - gen_start),
    }
    return {k: v for k, v in values.items() if v}


def _parameter_count(size: str) -> int:
    match = re.match(r"([\d.]+)([MB])", size)
    if not match:
        return 0
    return int(float(match.group(1)) * (1e6 if match.group(2) == "M" else 1e9))


def _layers(spec: ModelSpec) -> list[tuple[str, int]]:
    """Blob layers of the model's manifest (config last), summing to ``disk_bytes``."""
    small = [("template", 1_429), ("license", 7_711), ("params", 96), ("config", 485)]
    model = spec.disk_bytes - sum(size for _, size in small)
    return [("model", model), *small]


def _layer_digest(spec: ModelSpec, layer: str) -> str:
    return hashlib.sha256(f"{spec.digest}:{layer}".encode()).hexdigest()


# --------------------------------------------------------------------------------------
# Command line


def _parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Ollama simulator with VRAM accounting.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=11434, help="TCP port (0: any free port)")
    parser.add_argument("--vram-mb", type=int, default=24576, help="GPU memory in MiB")
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="factor on every simulated duration"
    )
    parser.add_argument("--nvml-state", default=None, help="fake-NVML state file to maintain")
    parser.add_argument("--num-parallel", type=int, default=1, help="OLLAMA_NUM_PARALLEL")
    parser.add_argument(
        "--max-loaded-models", type=int, default=3, help="OLLAMA_MAX_LOADED_MODELS (0: 3)"
    )
    parser.add_argument("--max-queue", type=int, default=512, help="OLLAMA_MAX_QUEUE")
    parser.add_argument(
        "--keep-alive",
        default="5m",
        help="OLLAMA_KEEP_ALIVE: seconds or a Go duration; negative = forever",
    )
    parser.add_argument(
        "--vram-release-lag",
        type=float,
        default=0.5,
        help="seconds (scaled) before an unloaded runner's VRAM is free",
    )
    parser.add_argument(
        "--request-log-size",
        type=int,
        default=DEFAULT_REQUEST_LOG_SIZE,
        help="how many of the latest requests /_sim/stats lists",
    )
    parser.add_argument(
        "--no-scale-keep-alive",
        action="store_true",
        help="keep_alive counts real seconds, not scaled ones",
    )
    return parser.parse_args(None if argv is None else list(argv))


def main(argv: Iterable[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM; exit status 0 on a clean stop, 2 on bad arguments."""
    args = _parse_args(argv)
    try:
        keep_alive = parse_env_keep_alive(args.keep_alive)
        sim = FakeOllama(
            vram_mb=args.vram_mb,
            time_scale=args.time_scale,
            nvml_state=args.nvml_state,
            num_parallel=args.num_parallel,
            max_loaded_models=args.max_loaded_models,
            max_queue=args.max_queue,
            host=args.host,
            port=args.port,
            default_keep_alive=-1.0 if math.isinf(keep_alive) else keep_alive,
            vram_release_lag=args.vram_release_lag,
            scale_keep_alive=not args.no_scale_keep_alive,
            request_log_size=args.request_log_size,
        )
    except ValueError as exc:
        print(f"fake ollama: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        sim.start()
    except OSError as exc:
        print(f"fake ollama: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"fake ollama listening on {sim.url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
