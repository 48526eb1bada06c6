"""Thin typed client for Ollama's HTTP API over ``requests``.

This module does the transport (sessions, timeouts, connection failures) and pins runner
options; reading answers and mapping Ollama's errors to typed ones is
:mod:`modelmanager.ollama_wire`'s, whose public names are re-exported here.

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
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

from .errors import (
    BackendTimeout,
    BackendUnavailable,
    LoadTimeout,
    OllamaBadRequest,
    OllamaError,
    StreamError,
)
from .models import LoadedModel
from .ollama_wire import (
    InferenceResult,
    body_text,
    chat_text,
    classify_failure,
    embedding_vectors,
    final_object,
    http_error,
    inference_result,
    json_objects,
    keep_alive_seconds,
    loaded_model,
    malformed,
    model_list,
    normalize_name,
    pull_error,
    text_field,
)

__all__ = [
    "RUNNER_OPTIONS",
    "InferenceResult",
    "OllamaClient",
    "classify_failure",
    "normalize_name",
]

_T = TypeVar("_T")

#: Options fixed when Ollama starts a model's runner; a different value forces a reload.
#: ``use_mlock``, ``numa`` and ``low_vram`` only exist in older versions (newer ones ignore
#: them), and pinning them costs nothing.
RUNNER_OPTIONS: frozenset[str] = frozenset(
    {"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread"}
    | {"use_mlock", "numa", "low_vram"}
)


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
    local backend); a ``session`` passed in is used as it is (its headers, auth and cookies
    as they stand at the first request to each endpoint) and not closed by :meth:`close`.
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
        self._endpoints: dict[tuple[str, str, bool], _Endpoint] = {}
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
            raise malformed("/api/version", "no version string", doc)
        return version

    def tags(self) -> list[dict[str, Any]]:
        """The installed models as ``/api/tags`` lists them (raw dicts; sizes in bytes)."""
        doc = self._json("GET", "/api/tags", None, timeout=self._info_timeout)
        return model_list("/api/tags", doc)

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
        return [loaded_model(entry) for entry in model_list("/api/ps", doc)]

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
        return inference_result(name, raw, text=text_field("/api/generate", raw, name))

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
        return inference_result(name, raw, text=chat_text(raw, name))

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
        return inference_result(name, raw, embeddings=embedding_vectors("/api/embed", raw, name))

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
        seconds = keep_alive_seconds(keep_alive)
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
            return inference_result(name, raw, embeddings=embedding_vectors(path, raw, name))
        return inference_result(name, raw, text=text_field(path, raw, name))

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
            for obj in json_objects(resp, "/api/pull", name):
                if "error" in obj:
                    raise pull_error(str(obj["error"]), resp.status_code, name)
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
        body["keep_alive"] = keep_alive_seconds(keep_alive)
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
            return final_object(resp, path, model)

        return self._exchange(method, path, body, timeout, model, timeout_error, consume)

    def _endpoint(self, method: str, path: str, *, with_body: bool) -> _Endpoint:
        """The request to ``path`` prepared through the session, and its send settings.

        ``Session.request`` merges the session's headers, cookies and auth and the
        environment's proxy and TLS settings into every request, which costs more than
        sending it (about 0.5 ms with requests 2.34). None of them changes while the
        client runs (Ollama sets no cookies), so they are merged once per endpoint and
        each call sends a copy with its own body.
        """
        key = (method, path, with_body)
        endpoint = self._endpoints.get(key)
        if endpoint is None:  # two threads may both build it; either result is right
            url = self.base_url + path
            headers = {"Content-Type": "application/json"} if with_body else {}
            request = self._session.prepare_request(requests.Request(method, url, headers=headers))
            settings = self._session.merge_environment_settings(url, {}, True, None, None)
            endpoint = self._endpoints[key] = _Endpoint(request, settings)
        return endpoint

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
        if body is not None:
            try:
                data = json.dumps(body, allow_nan=False).encode()
            except (TypeError, ValueError) as exc:
                raise OllamaBadRequest(
                    f"request to {path} cannot be sent as JSON: {exc}", model=model
                ) from exc
        where = f"{method} {path}"
        try:
            endpoint = self._endpoint(method, path, with_body=data is not None)
            request = endpoint.request.copy()
            request.prepare_body(data, None)
            with self._session.send(request, timeout=timeout, **endpoint.settings) as resp:
                if not 200 <= resp.status_code < 300:
                    raise http_error(resp.status_code, body_text(resp), model)
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


@dataclass(frozen=True)
class _Endpoint:
    """One endpoint's request, prepared without a body, and its ``Session.send`` settings
    (proxies, stream, verify, cert; always streamed, so errors are read inside the mapping)."""

    request: requests.PreparedRequest
    settings: Mapping[str, Any]


def _never_connected(exc: requests.ConnectionError) -> bool:
    """True when the connection itself failed (refused, no route): nothing was sent."""
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # urllib3 MaxRetryError wraps the cause
    return isinstance(reason, NewConnectionError | ConnectTimeoutError)


def _pin_key(model: str) -> str:
    # Ollama matches names case-insensitively, so "Llama3.2" and "llama3.2" share a runner.
    return normalize_name(model).casefold()


def _drain(resp: requests.Response) -> None:
    _ = resp.content  # read the body, so the connection goes back to the pool
