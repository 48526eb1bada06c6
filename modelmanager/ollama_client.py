"""Thin typed client for Ollama's HTTP API over ``requests``.

Contract for the engine above:

* Every call returns parsed data or raises an :class:`~modelmanager.errors.OllamaError`
  subclass with the backend's own text in ``.message``, the HTTP status in ``.status`` (200
  for an ``{"error"}`` line inside a stream, ``None`` when no answer arrived) and the model
  in ``.model`` where one was involved. The class's ``transient`` flag tells the caller
  whether a retry may help; this module never retries.
* Model names are normalised to ``name:tag`` (see :func:`normalize_name`) both in what is
  sent and in what :meth:`OllamaClient.ps` returns.
* ``keep_alive`` is always sent as a JSON number of **seconds** (negative: forever, 0:
  unload once idle). Durations that Ollama reports are integer **nanoseconds** (``*_ns``).
* Runner options (:data:`RUNNER_OPTIONS`) are pinned per model, so Ollama never reloads a
  model because two requests disagree on ``num_ctx`` and the like.
* Thread-safe: one pooled ``requests.Session`` shared by all threads, the pin table behind a
  lock. Nothing is logged here, so prompts and outputs never reach a log.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

from .errors import (
    BackendTimeout,
    BackendUnavailable,
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

_T = TypeVar("_T")

#: Options fixed when Ollama starts a model's runner; a different value forces a reload.
#: ``use_mlock``, ``numa`` and ``low_vram`` only exist in older versions (newer ones ignore
#: them), and pinning them costs nothing.
RUNNER_OPTIONS: frozenset[str] = frozenset(
    {"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread"}
    | {"use_mlock", "numa", "low_vram"}
)

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


class OllamaClient:
    """Typed access to one Ollama server.

    Timeouts are seconds, as ``(connect, read)`` pairs; the read timeout bounds each wait
    for bytes, which with ``"stream": false`` is the whole time Ollama needs to answer:

    * inference (generate, chat, embed, unload, pull, delete): ``(connect_timeout, timeout)``;
    * load: ``(connect_timeout, load_timeout)`` -- long, because Ollama aborts a load when
      the client disconnects;
    * version, tags, show, ps: ``(connect_timeout, info_timeout)``.

    Safe for concurrent use from a thread pool. The session built here pools up to
    ``pool_size`` connections and ignores proxy settings from the environment (Ollama is a
    local backend); a ``session`` passed in is used as it is and not closed by
    :meth:`close`.
    """

    def __init__(
        self,
        base_url: str = "http://localhost:11434",
        *,
        timeout: float = 300.0,
        load_timeout: float = 900.0,
        connect_timeout: float = 5.0,
        info_timeout: float = 10.0,
        pool_size: int = 64,
        session: requests.Session | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"Ollama base URL must be http(s)://host[:port], got {base_url!r}")
        for label, value in (
            ("timeout", timeout),
            ("load_timeout", load_timeout),
            ("connect_timeout", connect_timeout),
            ("info_timeout", info_timeout),
            ("pool_size", pool_size),
        ):
            if not value > 0:
                raise ValueError(f"{label} must be positive, got {value!r}")
        self.base_url = base_url.rstrip("/")
        self._timeout = (connect_timeout, timeout)
        self._load_timeout = (connect_timeout, load_timeout)
        self._info_timeout = (connect_timeout, info_timeout)
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            session.trust_env = False
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self._session = session
        self._pins: dict[str, dict[str, Any]] = {}
        self._pins_lock = threading.Lock()

    # ----------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the pooled connections (only of a session this client built). Idempotent."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> OllamaClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------------- information

    def version(self) -> str:
        """Ollama's version string, e.g. ``"0.12.3"``."""
        doc = self._json("GET", "/api/version", None, timeout=self._info_timeout)
        version = doc.get("version")
        if not isinstance(version, str):
            raise _malformed("/api/version", "no version string", doc)
        return version

    def tags(self) -> list[dict[str, Any]]:
        """The installed models as ``/api/tags`` lists them (raw dicts; sizes in bytes)."""
        doc = self._json("GET", "/api/tags", None, timeout=self._info_timeout)
        return _model_list("/api/tags", doc)

    def show(self, model: str) -> dict[str, Any]:
        """``/api/show`` for one model: details, ``model_info``, ``capabilities``, ...

        Raises :class:`ModelNotFound` when the model is not installed.
        """
        name = normalize_name(model)
        return self._json(
            "POST", "/api/show", {"model": name}, timeout=self._info_timeout, model=name
        )

    def ps(self) -> list[LoadedModel]:
        """The models Ollama has in memory (including ones still loading), names normalised.

        Sizes are bytes; ``vram_bytes`` is the part in GPU memory.
        """
        doc = self._json("GET", "/api/ps", None, timeout=self._info_timeout)
        return [_loaded_model(entry) for entry in _model_list("/api/ps", doc)]

    # ------------------------------------------------------------------------ inference

    def generate(
        self,
        model: str,
        prompt: str,
        *,
        keep_alive: float,
        system: str | None = None,
        images: Sequence[str] | None = None,
        format: str | Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> InferenceResult:
        """One completion (``/api/generate``); ``text`` is the whole response.

        ``keep_alive`` is seconds; ``images`` are base64 strings; ``format`` is ``"json"`` or
        a JSON schema. An empty prompt makes Ollama only load the model (``done_reason``
        ``"load"``).
        """
        name = normalize_name(model)
        body: dict[str, Any] = {"model": name, "prompt": prompt, "stream": False}
        if system is not None:
            body["system"] = system
        if images is not None:
            body["images"] = list(images)
        if format is not None:
            body["format"] = format if isinstance(format, str) else dict(format)
        self._add_common(body, name, keep_alive, options)
        raw = self._json("POST", "/api/generate", body, timeout=self._timeout, model=name)
        return _result(name, raw, text=_text_field("/api/generate", raw, name))

    def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        keep_alive: float,
        format: str | Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> InferenceResult:
        """One chat turn (``/api/chat``); ``text`` is the assistant's ``message.content``.

        ``keep_alive`` is seconds. Empty ``messages`` make Ollama only load the model.
        """
        name = normalize_name(model)
        body: dict[str, Any] = {
            "model": name,
            "messages": [dict(message) for message in messages],
            "stream": False,
        }
        if format is not None:
            body["format"] = format if isinstance(format, str) else dict(format)
        self._add_common(body, name, keep_alive, options)
        raw = self._json("POST", "/api/chat", body, timeout=self._timeout, model=name)
        return _result(name, raw, text=_chat_text(raw, name))

    def embed(
        self,
        model: str,
        input: str | Sequence[str],
        *,
        keep_alive: float,
        options: Mapping[str, Any] | None = None,
    ) -> InferenceResult:
        """Embeddings (``/api/embed``): one L2-normalised vector per input, in order.

        ``keep_alive`` is seconds. An empty input makes Ollama only load the model.
        """
        name = normalize_name(model)
        body: dict[str, Any] = {
            "model": name,
            "input": input if isinstance(input, str) else list(input),
            "stream": False,
        }
        self._add_common(body, name, keep_alive, options)
        raw = self._json("POST", "/api/embed", body, timeout=self._timeout, model=name)
        return _result(name, raw, embeddings=_embeddings("/api/embed", raw, name))

    # --------------------------------------------------------------------- residency

    def load(
        self,
        model: str,
        *,
        keep_alive: float,
        options: Mapping[str, Any] | None = None,
        kind: Literal["generate", "embed"] = "generate",
    ) -> InferenceResult:
        """Load ``model`` and keep it for ``keep_alive`` seconds (negative: forever).

        ``kind="generate"`` sends an empty prompt to ``/api/generate``; ``kind="embed"`` an
        empty input to ``/api/embed`` (embedding models cannot generate). Blocks until the
        model is loaded, up to ``load_timeout``; a read timeout raises :class:`LoadTimeout`.
        ``keep_alive`` 0 would unload, so it is refused.
        """
        seconds = _keep_alive_seconds(keep_alive)
        if seconds == 0:
            raise ValueError("load() with keep_alive 0 would unload the model; use unload()")
        name = normalize_name(model)
        body: dict[str, Any] = {"model": name}
        if kind == "generate":
            path = "/api/generate"
            body["prompt"] = ""
        elif kind == "embed":
            path = "/api/embed"
            body["input"] = []
        else:
            raise ValueError(f"load kind must be 'generate' or 'embed', got {kind!r}")
        body["stream"] = False
        self._add_common(body, name, seconds, options)
        raw = self._json(
            "POST",
            path,
            body,
            timeout=self._load_timeout,
            model=name,
            timeout_error=LoadTimeout,
        )
        if kind == "embed":
            return _result(name, raw, embeddings=_embeddings(path, raw, name))
        return _result(name, raw, text=_text_field(path, raw, name))

    def unload(self, model: str) -> None:
        """Ask Ollama to unload ``model`` (empty prompt, ``keep_alive`` 0) and forget its pin.

        Ollama answers at once; the runner leaves ``/api/ps`` once its in-flight requests
        finish and its VRAM is freed some time after that, so poll ps (and NVML) to see it
        gone. The pin is cleared even when the request fails.
        """
        name = normalize_name(model)
        body = {"model": name, "prompt": "", "keep_alive": 0, "stream": False}
        try:
            self._json("POST", "/api/generate", body, timeout=self._timeout, model=name)
        finally:
            self.unpin(name)

    # -------------------------------------------------------------------- management

    def pull(self, model: str, progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Download ``model``, calling ``progress`` with each NDJSON status object in order.

        Returns after the final ``{"status": "success"}``. An unknown model (which Ollama
        reports as an error line on HTTP 200) raises :class:`ModelNotFound`; any other error
        line :class:`StreamError`. An exception from ``progress`` aborts the pull and
        propagates unchanged. The read timeout applies between two lines.
        """
        name = normalize_name(model)

        def consume(resp: requests.Response) -> None:
            last_status: object = None
            for obj in _objects(resp, "/api/pull", name):
                if "error" in obj:
                    text = str(obj["error"])
                    if any(marker in text.lower() for marker in _PULL_NOT_FOUND_MARKERS):
                        raise ModelNotFound(text, status=resp.status_code, model=name)
                    raise _in_band_error(text, resp.status_code, name)
                if progress is not None:
                    progress(obj)
                last_status = obj.get("status")
            if last_status != "success":
                raise StreamError(
                    f"pull of {name} ended without success (last status {last_status!r})",
                    status=resp.status_code,
                    model=name,
                )

        body = {"model": name, "stream": True}
        self._exchange("POST", "/api/pull", body, self._timeout, name, BackendTimeout, consume)

    def delete(self, model: str) -> None:
        """Remove ``model`` from disk. Does not unload it if it is running."""
        name = normalize_name(model)
        body = {"model": name}
        self._exchange("DELETE", "/api/delete", body, self._timeout, name, BackendTimeout, _drain)

    # ---------------------------------------------------------------- runner options

    def pinned_runner_options(self, model: str) -> dict[str, Any] | None:
        """A copy of the runner options pinned for ``model``, or None if none are pinned."""
        with self._pins_lock:
            pinned = self._pins.get(_pin_key(model))
            return dict(pinned) if pinned is not None else None

    def unpin(self, model: str) -> None:
        """Forget ``model``'s pinned runner options; the next request that carries some
        pins anew. :meth:`unload` does this itself."""
        with self._pins_lock:
            self._pins.pop(_pin_key(model), None)

    def _options_for(self, name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """``options`` with their runner options replaced by ``name``'s pinned ones.

        The first request that carries runner options pins them; from then on every request
        for the model carries exactly the pinned set (its own runner options are dropped),
        and sampling options pass through. A ``None`` value counts as not set.
        """
        given = {key: value for key, value in (options or {}).items() if value is not None}
        sampling = {key: value for key, value in given.items() if key not in RUNNER_OPTIONS}
        runner = {key: value for key, value in given.items() if key in RUNNER_OPTIONS}
        with self._pins_lock:
            pinned = self._pins.get(_pin_key(name))
            if pinned is None and runner:
                pinned = self._pins[_pin_key(name)] = runner
            return {**sampling, **(pinned or {})}

    def _add_common(
        self, body: dict[str, Any], name: str, keep_alive: float, options: Mapping[str, Any] | None
    ) -> None:
        body["keep_alive"] = _keep_alive_seconds(keep_alive)
        merged = self._options_for(name, options)
        if merged:
            body["options"] = merged

    # ------------------------------------------------------------------------ transport

    def _json(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        timeout: tuple[float, float],
        model: str | None = None,
        timeout_error: type[OllamaError] = BackendTimeout,
    ) -> dict[str, Any]:
        """One JSON object from ``path``; a streamed (NDJSON) answer is joined into one."""

        def consume(resp: requests.Response) -> dict[str, Any]:
            return _final_object(resp, path, model)

        return self._exchange(method, path, body, timeout, model, timeout_error, consume)

    def _exchange(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        timeout: tuple[float, float],
        model: str | None,
        timeout_error: type[OllamaError],
        consume: Callable[[requests.Response], _T],
    ) -> _T:
        """Send one request and hand a 2xx response to ``consume``; map every failure.

        The body is read inside the same error mapping, so a connection lost or a read
        timing out mid-answer is typed like one lost before it.
        """
        data: bytes | None = None
        headers: dict[str, str] = {}
        if body is not None:
            try:
                data = json.dumps(body, allow_nan=False).encode()
            except (TypeError, ValueError) as exc:
                raise OllamaBadRequest(
                    f"request to {path} cannot be sent as JSON: {exc}", model=model
                ) from exc
            headers["Content-Type"] = "application/json"
        where = f"{method} {path}"
        try:
            with self._session.request(
                method,
                self.base_url + path,
                data=data,
                headers=headers,
                timeout=timeout,
                stream=True,
            ) as resp:
                if not 200 <= resp.status_code < 300:
                    raise _http_error(resp.status_code, _body_text(resp), model)
                return consume(resp)
        except requests.ConnectTimeout as exc:
            raise BackendUnavailable(
                f"cannot reach Ollama at {self.base_url}: no connection within {timeout[0]} s",
                model=model,
                reached=False,
            ) from exc
        except requests.ReadTimeout as exc:
            raise timeout_error(
                f"Ollama did not answer {where} within {timeout[1]} s", model=model
            ) from exc
        except requests.ConnectionError as exc:
            if any(isinstance(arg, ReadTimeoutError) for arg in exc.args):
                # requests reports a read timeout in the middle of a body this way.
                raise timeout_error(
                    f"Ollama stopped answering {where} for {timeout[1]} s", model=model
                ) from exc
            raise BackendUnavailable(
                f"cannot reach Ollama at {self.base_url} ({where}): {exc}",
                model=model,
                reached=not _never_connected(exc),
            ) from exc
        except requests.exceptions.ChunkedEncodingError as exc:
            raise BackendUnavailable(
                f"connection to Ollama broke during the answer to {where}: {exc}", model=model
            ) from exc
        except requests.RequestException as exc:
            raise OllamaError(f"request {where} to Ollama failed: {exc}", model=model) from exc


# ----------------------------------------------------------------------------- helpers


def _never_connected(exc: requests.ConnectionError) -> bool:
    """True when the connection itself failed (refused, no route): nothing was sent."""
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # urllib3 MaxRetryError wraps the cause
    return isinstance(reason, NewConnectionError | ConnectTimeoutError)


def _pin_key(model: str) -> str:
    # Ollama matches names case-insensitively, so "Llama3.2" and "llama3.2" share a runner.
    return normalize_name(model).casefold()


def _keep_alive_seconds(value: float) -> int | float:
    """``value`` as a finite JSON number of seconds (an integral float becomes an int)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"keep_alive must be a number of seconds, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"keep_alive must be finite (negative means forever), got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _body_text(resp: requests.Response) -> str:
    return resp.content.decode("utf-8", errors="replace").strip()


def _http_error(status: int, text: str, model: str | None) -> OllamaError:
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


def _in_band_error(text: str, status: int, model: str | None) -> OllamaError:
    """The typed error for an ``{"error": ...}`` object inside a successful answer."""
    cls = classify_failure(text) or StreamError
    return cls(text, status=status, model=model)


def _malformed(
    where: str, reason: str, body: object, *, status: int = 200, model: str | None = None
) -> OllamaError:
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
        raise _malformed(
            where, "a body that is not JSON", raw, status=status, model=model
        ) from None
    if not isinstance(doc, dict):
        raise _malformed(where, "JSON that is not an object", raw, status=status, model=model)
    return doc


def _is_ndjson(resp: requests.Response) -> bool:
    return "ndjson" in resp.headers.get("Content-Type", "").lower()


def _objects(resp: requests.Response, where: str, model: str | None) -> Iterator[dict[str, Any]]:
    """The JSON objects of an answer: each NDJSON line, or the one JSON body."""
    if not _is_ndjson(resp):
        yield _parse_object(resp.content, where, resp.status_code, model)
        return
    for line in resp.iter_lines():
        if line.strip():
            yield _parse_object(line, where, resp.status_code, model)


def _final_object(resp: requests.Response, where: str, model: str | None) -> dict[str, Any]:
    """The answer as one object, raising any in-band ``{"error"}``.

    A stream is joined as Ollama joins it for ``"stream": false``: the final (``done``)
    chunk, with ``response``, ``thinking`` and chat ``message`` text concatenated over all
    chunks. A stream that ends before its ``done`` chunk raises :class:`StreamError`.
    """
    if not _is_ndjson(resp):
        doc = _parse_object(resp.content, where, resp.status_code, model)
        if "error" in doc:
            raise _in_band_error(str(doc["error"]), resp.status_code, model)
        return doc
    texts: dict[str, list[str]] = {}
    message_texts: dict[str, list[str]] = {}
    tool_calls: list[Any] = []
    last: dict[str, Any] | None = None
    for obj in _objects(resp, where, model):
        if "error" in obj:
            raise _in_band_error(str(obj["error"]), resp.status_code, model)
        for key in ("response", "thinking"):
            if isinstance(obj.get(key), str):
                texts.setdefault(key, []).append(obj[key])
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
    if isinstance(final.get("message"), dict):
        message = dict(final["message"])
        for key, parts in message_texts.items():
            message[key] = "".join(parts)
        if tool_calls:
            message["tool_calls"] = tool_calls
        final["message"] = message
    return final


def _drain(resp: requests.Response) -> None:
    _ = resp.content  # read the body, so the connection goes back to the pool


def _model_list(where: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    models = doc.get("models")
    if models is None:  # Go encodes an empty slice that was never made as null
        return []
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise _malformed(where, "a models field that is not a list of objects", doc)
    return models


def _loaded_model(entry: dict[str, Any]) -> LoadedModel:
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
        raise _malformed("/api/ps", "a malformed model entry", entry)
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


def _text_field(where: str, raw: dict[str, Any], model: str) -> str:
    text = raw.get("response")
    if not isinstance(text, str):
        raise _malformed(where, "no response text", raw, model=model)
    return text


def _chat_text(raw: dict[str, Any], model: str) -> str:
    message = raw.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise _malformed("/api/chat", "no message content", raw, model=model)
    return content


def _embeddings(where: str, raw: dict[str, Any], model: str) -> list[list[float]]:
    vectors = raw.get("embeddings")
    if not isinstance(vectors, list) or not all(
        isinstance(vector, list)
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in vector)
        for vector in vectors
    ):
        raise _malformed(where, "no list of embedding vectors", raw, model=model)
    return vectors


def _metric(raw: dict[str, Any], key: str) -> int:
    # Metrics are informative; a missing or odd one reads 0 rather than failing the answer.
    value = raw.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _result(
    name: str,
    raw: dict[str, Any],
    *,
    text: str = "",
    embeddings: list[list[float]] | None = None,
) -> InferenceResult:
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
