"""Ollama's wire format, apart from any connection: what is sent, what comes back.

* Requests: model names normalised to ``name:tag`` (:func:`normalize_name`), ``keep_alive``
  as a JSON number of **seconds** (:func:`keep_alive_seconds`).
* Answers: a JSON body or an NDJSON stream joined into one object (:func:`final_object`),
  read into typed values (:class:`InferenceResult`, :class:`~modelmanager.models.LoadedModel`).
  Durations Ollama reports are integer **nanoseconds**.
* Failures: an HTTP status and body, or an in-band ``{"error"}`` object, mapped to an
  :class:`~modelmanager.errors.OllamaError` subclass (:func:`http_error`,
  :func:`in_band_error`, :func:`pull_error`), the backend's own text in ``.message``.

Nothing here sends a request, keeps state or logs; a function given a
``requests.Response`` only reads its body. :mod:`modelmanager.ollama_client` does the
transport.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import requests

from .errors import (
    EndpointNotAvailable,
    LoadTimeout,
    ModelNotFound,
    OllamaBadRequest,
    OllamaError,
    OutOfMemory,
    RunnerCrashed,
    ServerBusy,
    StreamError,
)
from .models import LoadedModel

# Lower-case substrings of Ollama's error texts. Out-of-memory is checked first, because a
# crash message often carries an OOM cause ("llama runner process has terminated: CUDA
# error: out of memory").
_OOM_MARKERS = (
    "out of memory",
    "out-of-memory",
    "out of device memory",
    "cudamalloc failed",
    "hipmalloc failed",
    "requires more system memory",
    "failed to allocate",
    "allocation failed",
    "not enough memory",
    "insufficient memory",
)
_CRASH_MARKERS = (
    "runner process has terminated",
    "runner process no longer running",
    "unexpectedly stopped",
    "llama-server process has terminated",
)
_LOAD_TIMEOUT_MARKERS = (
    "timed out waiting for llama runner to start",
    "timed out waiting for llama-server to start",
)
# What a pull of a model the registry does not have ends with (on HTTP 200).
_PULL_NOT_FOUND_MARKERS = ("file does not exist",)

_SNIPPET = 200  # characters of an unreadable body quoted in an error message


def normalize_name(name: str) -> str:
    """Return ``name`` as ``[host/][namespace/]model:tag``, adding ``:latest`` if untagged.

    Only a colon in the last path segment counts as a tag, so a registry port
    (``host:5000/ns/model``) is not mistaken for one. Case is kept (Ollama matches names
    case-insensitively but reports them as stored). An empty name stays empty.
    """
    if not name or ":" in name.rsplit("/", 1)[-1]:
        return name
    return f"{name}:latest"


def classify_failure(text: str) -> type[OllamaError] | None:
    """Which capacity/runner failure an Ollama error text describes, or None.

    Out-of-memory wins over a crash (the crash text often names OOM as its cause); then a
    crashed runner; then a load that stalled past Ollama's ``OLLAMA_LOAD_TIMEOUT``.
    """
    lowered = text.lower()
    if any(marker in lowered for marker in _OOM_MARKERS):
        return OutOfMemory
    if any(marker in lowered for marker in _CRASH_MARKERS):
        return RunnerCrashed
    if any(marker in lowered for marker in _LOAD_TIMEOUT_MARKERS):
        return LoadTimeout
    return None


@dataclass(frozen=True)
class InferenceResult:
    """The final answer of generate, chat, embed or load.

    ``text`` is generate's ``response`` or chat's ``message.content`` (``""`` for embed and
    load); ``embeddings`` is set only by embed (and by an embedding-model load, as ``[]``).
    Durations are nanoseconds and counts are tokens; Ollama leaves zero values out, and they
    read 0 here. ``raw`` is the final JSON object; for a streamed answer it is the last
    chunk with the text fields joined, as Ollama itself builds a non-streamed answer.
    """

    model: str
    text: str = ""
    embeddings: list[list[float]] | None = None
    done_reason: str | None = None
    total_duration_ns: int = 0
    load_duration_ns: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration_ns: int = 0
    eval_count: int = 0
    eval_duration_ns: int = 0
    raw: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, int]:
        """The non-zero metrics under Ollama's own names (``total_duration``, ...)."""
        values = {
            "total_duration": self.total_duration_ns,
            "load_duration": self.load_duration_ns,
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": self.prompt_eval_duration_ns,
            "eval_count": self.eval_count,
            "eval_duration": self.eval_duration_ns,
        }
        return {key: value for key, value in values.items() if value}


def keep_alive_seconds(value: float) -> int | float:
    """``value`` as a finite JSON number of seconds (an integral float becomes an int)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"keep_alive must be a number of seconds, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"keep_alive must be finite (negative means forever), got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def body_text(resp: requests.Response) -> str:
    """The whole body as text (undecodable bytes replaced), for an error message."""
    return resp.content.decode("utf-8", errors="replace").strip()


def http_error(status: int, text: str, model: str | None) -> OllamaError:
    """The typed error for a non-2xx answer; ``text`` is the raw body."""
    message, is_json = text, False
    try:
        doc = json.loads(text)
    except ValueError:
        pass
    else:
        is_json = isinstance(doc, dict)
        if is_json and isinstance(doc.get("error"), str):
            message = doc["error"]
    if not message:
        message = f"HTTP {status} with an empty body"
    elif not is_json and len(message) > _SNIPPET:  # e.g. a proxy's HTML error page
        message = message[:_SNIPPET] + "..."
    cls: type[OllamaError]
    if status == 404:
        # Ollama answers a missing model with JSON; a missing route is Go's plain text.
        cls = ModelNotFound if is_json else EndpointNotAvailable
    elif status in (429, 503):
        cls = ServerBusy
    elif 400 <= status < 500:
        cls = OllamaBadRequest
    elif status >= 500:
        cls = classify_failure(message) or OllamaError
    else:
        cls = OllamaError
    return cls(message, status=status, model=model)


def in_band_error(text: str, status: int, model: str | None) -> OllamaError:
    """The typed error for an ``{"error": ...}`` object inside a successful answer."""
    cls = classify_failure(text) or StreamError
    return cls(text, status=status, model=model)


def pull_error(text: str, status: int, model: str | None) -> OllamaError:
    """The typed error for an ``{"error": ...}`` line in a pull's progress stream: an
    unknown model is :class:`ModelNotFound`, anything else as :func:`in_band_error`."""
    if any(marker in text.lower() for marker in _PULL_NOT_FOUND_MARKERS):
        return ModelNotFound(text, status=status, model=model)
    return in_band_error(text, status, model)


def malformed(
    where: str, reason: str, body: object, *, status: int = 200, model: str | None = None
) -> OllamaError:
    """The error for an answer that does not have the shape Ollama documents; ``body`` is
    quoted, cut to a snippet."""
    snippet = body if isinstance(body, str | bytes) else json.dumps(body)
    if isinstance(snippet, bytes):
        snippet = snippet.decode("utf-8", errors="replace")
    if len(snippet) > _SNIPPET:
        snippet = snippet[:_SNIPPET] + "..."
    return OllamaError(
        f"Ollama answered {where} with {reason}: {snippet!r}", status=status, model=model
    )


def _parse_object(raw: bytes, where: str, status: int, model: str | None) -> dict[str, Any]:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except ValueError:
        raise malformed(where, "a body that is not JSON", raw, status=status, model=model) from None
    if not isinstance(doc, dict):
        raise malformed(where, "JSON that is not an object", raw, status=status, model=model)
    return doc


def _is_ndjson(resp: requests.Response) -> bool:
    return "ndjson" in resp.headers.get("Content-Type", "").lower()


def json_objects(
    resp: requests.Response, where: str, model: str | None
) -> Iterator[dict[str, Any]]:
    """The JSON objects of an answer: each NDJSON line, or the one JSON body."""
    if not _is_ndjson(resp):
        yield _parse_object(resp.content, where, resp.status_code, model)
        return
    for line in resp.iter_lines():
        if line.strip():
            yield _parse_object(line, where, resp.status_code, model)


def final_object(
    resp: requests.Response,
    where: str,
    model: str | None,
    on_object: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The answer as one object, raising any in-band ``{"error"}``.

    A stream is joined as Ollama joins it for ``"stream": false``: the final (``done``)
    chunk, with ``response``, ``thinking`` and chat ``message`` text concatenated over all
    chunks, and ``tool_calls`` and ``logprobs`` collected from all of them. A stream that
    ends before its ``done`` chunk raises :class:`StreamError`. ``on_object`` is called
    with each object as it arrives (before its error check), e.g. to relay tokens.
    """
    if not _is_ndjson(resp):
        doc = _parse_object(resp.content, where, resp.status_code, model)
        if on_object is not None:
            on_object(doc)
        if "error" in doc:
            raise in_band_error(str(doc["error"]), resp.status_code, model)
        return doc
    texts: dict[str, list[str]] = {}
    message_texts: dict[str, list[str]] = {}
    tool_calls: list[Any] = []
    logprobs: list[Any] = []
    top_calls: list[Any] = []
    last: dict[str, Any] | None = None
    for obj in json_objects(resp, where, model):
        if on_object is not None:
            on_object(obj)
        if "error" in obj:
            raise in_band_error(str(obj["error"]), resp.status_code, model)
        for key in ("response", "thinking"):
            if isinstance(obj.get(key), str):
                texts.setdefault(key, []).append(obj[key])
        if isinstance(obj.get("logprobs"), list):
            logprobs.extend(obj["logprobs"])
        if isinstance(obj.get("tool_calls"), list):  # generate's own tool calls
            top_calls.extend(obj["tool_calls"])
        message = obj.get("message")
        if isinstance(message, dict):
            for key in ("content", "thinking"):
                if isinstance(message.get(key), str):
                    message_texts.setdefault(key, []).append(message[key])
            if isinstance(message.get("tool_calls"), list):
                tool_calls.extend(message["tool_calls"])
        if obj.get("done") is True or "embeddings" in obj:
            last = obj
            break
    if last is None:
        raise StreamError(
            f"the stream from {where} ended before its final (done) chunk",
            status=resp.status_code,
            model=model,
        )
    final = dict(last)
    for key, parts in texts.items():
        final[key] = "".join(parts)
    if logprobs:
        final["logprobs"] = logprobs
    if top_calls:
        final["tool_calls"] = top_calls
    if isinstance(final.get("message"), dict):
        message = dict(final["message"])
        for key, parts in message_texts.items():
            message[key] = "".join(parts)
        if tool_calls:
            message["tool_calls"] = tool_calls
        final["message"] = message
    return final


def model_list(where: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``models`` list of ``/api/tags`` or ``/api/ps`` (raw dicts; null reads as [])."""
    models = doc.get("models")
    if models is None:  # Go encodes an empty slice that was never made as null
        return []
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise malformed(where, "a models field that is not a list of objects", doc)
    return models


def loaded_model(entry: dict[str, Any]) -> LoadedModel:
    """One ``/api/ps`` entry, name normalised; sizes are bytes."""
    name = entry.get("name") or entry.get("model")
    size = entry.get("size", 0)
    vram = entry.get("size_vram", 0)
    context = entry.get("context_length")
    expires = entry.get("expires_at")
    if (
        not isinstance(name, str)
        or not name
        or not _is_int(size)
        or not _is_int(vram)
        or not (context is None or _is_int(context))
        or not (expires is None or isinstance(expires, str))
    ):
        raise malformed("/api/ps", "a malformed model entry", entry)
    digest = entry.get("digest")
    return LoadedModel(
        name=normalize_name(name),
        size_bytes=size,
        vram_bytes=vram,
        expires_at=expires,
        context_length=context,
        digest=digest if isinstance(digest, str) else "",
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def text_field(where: str, raw: dict[str, Any], model: str) -> str:
    """Generate's ``response`` text."""
    text = raw.get("response")
    if not isinstance(text, str):
        raise malformed(where, "no response text", raw, model=model)
    return text


def chat_text(raw: dict[str, Any], model: str) -> str:
    """Chat's ``message.content``."""
    message = raw.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise malformed("/api/chat", "no message content", raw, model=model)
    return content


def embedding_vectors(where: str, raw: dict[str, Any], model: str) -> list[list[float]]:
    """Embed's ``embeddings``: a list of number lists."""
    vectors = raw.get("embeddings")
    if not isinstance(vectors, list) or not all(
        isinstance(vector, list)
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in vector)
        for vector in vectors
    ):
        raise malformed(where, "no list of embedding vectors", raw, model=model)
    return vectors


def _metric(raw: dict[str, Any], key: str) -> int:
    # Metrics are informative; a missing or odd one reads 0 rather than failing the answer.
    value = raw.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def inference_result(
    name: str,
    raw: dict[str, Any],
    *,
    text: str = "",
    embeddings: list[list[float]] | None = None,
) -> InferenceResult:
    """The :class:`InferenceResult` of a final object ``raw`` for model ``name`` (the model
    Ollama names in ``raw`` wins); ``text`` and ``embeddings`` are already checked."""
    model = raw.get("model")
    done_reason = raw.get("done_reason")
    return InferenceResult(
        model=model if isinstance(model, str) else name,
        text=text,
        embeddings=embeddings,
        done_reason=done_reason if isinstance(done_reason, str) else None,
        total_duration_ns=_metric(raw, "total_duration"),
        load_duration_ns=_metric(raw, "load_duration"),
        prompt_eval_count=_metric(raw, "prompt_eval_count"),
        prompt_eval_duration_ns=_metric(raw, "prompt_eval_duration"),
        eval_count=_metric(raw, "eval_count"),
        eval_duration_ns=_metric(raw, "eval_duration"),
        raw=raw,
    )
