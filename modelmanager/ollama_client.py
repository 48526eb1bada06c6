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
* Requests go out as the caller gives them: model names as spelled (Ollama resolves them
  case-insensitively, with its defaults), options unchanged. Only :meth:`OllamaClient.ps`
  normalises names (``name:tag``, case kept).
* ``keep_alive`` is always sent as a JSON number of **seconds** (negative: forever, 0:
  unload once idle). Durations that Ollama reports are integer **nanoseconds** (``*_ns``).
* Generate and chat are streamed, so timeouts measure silence; any request can be aborted
  from another thread through a :class:`~modelmanager.abortable.Call`.
* Thread-safe: one pooled ``requests.Session`` shared by all threads. Nothing is logged
  here, so prompts and outputs never reach a log.
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

from .abortable import AbortableAdapter, Call, calling
from .errors import (
    BackendTimeout,
    BackendUnavailable,
    EndpointNotAvailable,
    LoadTimeout,
    OllamaBadRequest,
    OllamaError,
    RequestAborted,
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
    "Call",
    "InferenceResult",
    "Kind",
    "OllamaClient",
    "classify_failure",
    "normalize_name",
]

_T = TypeVar("_T")

Kind = Literal["generate", "chat", "embed"]
_PATHS: dict[str, str] = {"generate": "/api/generate", "chat": "/api/chat", "embed": "/api/embed"}


class OllamaClient:
    """Typed access to one Ollama server.

    Timeouts are seconds, as ``(connect, read)`` pairs; the read timeout bounds each wait
    for bytes, which with ``"stream": false`` is the whole time Ollama needs to answer:

    * inference (generate, chat, embed, unload, pull, delete): ``(connect_timeout, timeout)``;
      a ``watched`` inference request (:meth:`infer`) has no read timeout: its caller
      bounds its silence;
    * load: ``(connect_timeout, load_timeout)`` -- long, because Ollama aborts a load when
      the client disconnects;
    * version, tags, show, ps: ``(connect_timeout, info_timeout)``.

    Safe for concurrent use from a thread pool. The session built here pools up to
    ``pool_size`` connections, can abort calls (:class:`Call`) and ignores proxy settings
    from the environment (Ollama is a local backend); a ``session`` passed in is used as
    it is (its headers, auth and cookies as they stand at the first request to each
    endpoint; aborting needs its adapter to be an ``AbortableAdapter``) and not closed by
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
            adapter = AbortableAdapter(pool_connections=4, pool_maxsize=pool_size)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self._session = session
        self._endpoints: dict[tuple[str, str, bool], _Endpoint] = {}

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
        return self._json(
            "POST", "/api/show", {"model": model}, timeout=self._info_timeout, model=model
        )

    def ps(self) -> list[LoadedModel]:
        """The models Ollama has in memory (including ones still loading), names normalised.

        Sizes are bytes; ``vram_bytes`` is the part in GPU memory.
        """
        doc = self._json("GET", "/api/ps", None, timeout=self._info_timeout)
        return [loaded_model(entry) for entry in model_list("/api/ps", doc)]

    # ------------------------------------------------------------------------ inference

    def infer(
        self,
        kind: Kind,
        model: str,
        fields: Mapping[str, Any],
        *,
        keep_alive: float,
        call: Call | None = None,
        on_chunk: Callable[[dict[str, Any]], None] | None = None,
        watched: bool = False,
    ) -> InferenceResult:
        """One generate, chat or embed request with ``fields`` sent as they are.

        ``fields`` are Ollama's request fields for the endpoint (``prompt``, ``messages``,
        ``input``, ``options``, ``think``, ``tools``, ...); ``None`` values are left out and
        nothing is added but ``model``, ``keep_alive`` (seconds) and, for generate and chat,
        ``"stream": true``: the answer is read as it is produced, so the read timeout
        measures silence, not length (:class:`BackendTimeout` carries how many chunks had
        arrived). ``on_chunk`` sees each streamed object as it arrives. ``call`` lets
        another thread abort the request (:class:`RequestAborted`); Ollama then stops the
        work. Embed answers in one piece. ``watched``: the caller bounds the silence
        itself, through ``call`` (:mod:`modelmanager.silence`), so the read has no timeout
        (only the connection has): a request that waits in Ollama's queue behind another
        one gets no byte for as long as that one takes.

        ``text`` of the result is generate's ``response`` or chat's ``message.content``;
        ``embeddings`` is embed's vectors; ``raw`` the whole final object.
        """
        path = _PATHS.get(kind)
        if path is None:
            raise ValueError(f"kind must be one of {', '.join(_PATHS)}, got {kind!r}")
        body: dict[str, Any] = {"model": model}
        body.update((key, value) for key, value in fields.items() if value is not None)
        if kind != "embed":
            body["stream"] = True
        body["keep_alive"] = keep_alive_seconds(keep_alive)
        if watched and call is None:
            raise ValueError("a watched request needs a call to abort it by")
        timeout = (self._timeout[0], None) if watched else self._timeout
        raw = self._json(
            "POST", path, body, timeout=timeout, model=model, call=call, on_chunk=on_chunk
        )
        if kind == "embed":
            return inference_result(model, raw, embeddings=embedding_vectors(path, raw, model))
        text = chat_text(raw, model) if kind == "chat" else text_field(path, raw, model)
        return inference_result(model, raw, text=text)

    def generate(
        self,
        model: str,
        prompt: str,
        *,
        keep_alive: float,
        call: Call | None = None,
        on_chunk: Callable[[dict[str, Any]], None] | None = None,
        **fields: Any,
    ) -> InferenceResult:
        """A completion (``/api/generate``); ``fields`` as in :meth:`infer` (``system``,
        ``images`` as base64 strings, ``format`` "json" or a schema, ``options``, ...)."""
        return self.infer(
            "generate",
            model,
            {"prompt": prompt, **fields},
            keep_alive=keep_alive,
            call=call,
            on_chunk=on_chunk,
        )

    def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        keep_alive: float,
        call: Call | None = None,
        on_chunk: Callable[[dict[str, Any]], None] | None = None,
        **fields: Any,
    ) -> InferenceResult:
        """A chat turn (``/api/chat``); ``fields`` as in :meth:`infer` (``tools``, ...)."""
        listed = [dict(message) for message in messages]
        return self.infer(
            "chat",
            model,
            {"messages": listed, **fields},
            keep_alive=keep_alive,
            call=call,
            on_chunk=on_chunk,
        )

    def embed(
        self,
        model: str,
        input: str | Sequence[str],
        *,
        keep_alive: float,
        call: Call | None = None,
        **fields: Any,
    ) -> InferenceResult:
        """Embeddings (``/api/embed``): one L2-normalised vector per input, in order."""
        given = input if isinstance(input, str) else list(input)
        return self.infer(
            "embed", model, {"input": given, **fields}, keep_alive=keep_alive, call=call
        )

    # --------------------------------------------------------------------- residency

    def load(
        self,
        model: str,
        *,
        keep_alive: float,
        options: Mapping[str, Any] | None = None,
        kind: Literal["generate", "embed", "embeddings"] = "generate",
    ) -> InferenceResult:
        """Load ``model`` and keep it for ``keep_alive`` seconds (negative: forever).

        ``options`` are sent as given: a job's runner options (``num_ctx``, ...) must reach
        the load, or Ollama starts a runner with its defaults and reloads it for the job.
        ``kind="generate"`` sends an empty prompt to ``/api/generate``; ``kind="embed"`` an
        empty input to ``/api/embed`` (embedding models cannot generate);
        ``kind="embeddings"`` an empty prompt to the legacy ``/api/embeddings``, for an
        Ollama older than ``/api/embed`` (it answers ``{"embedding": []}``). Blocks until the
        model is loaded, up to ``load_timeout``; a read timeout raises :class:`LoadTimeout`.
        ``keep_alive`` 0 would unload, so it is refused.
        """
        seconds = keep_alive_seconds(keep_alive)
        if seconds == 0:
            raise ValueError("load() with keep_alive 0 would unload the model; use unload()")
        body: dict[str, Any] = {"model": model}
        if kind == "generate":
            path = "/api/generate"
            body["prompt"] = ""
        elif kind == "embed":
            path = "/api/embed"
            body["input"] = []
        elif kind == "embeddings":
            path = "/api/embeddings"
            body["prompt"] = ""
        else:
            raise ValueError(f"load kind must be 'generate', 'embed' or 'embeddings', got {kind!r}")
        body["stream"] = False
        body["keep_alive"] = seconds
        if options:
            body["options"] = dict(options)
        raw = self._json(
            "POST",
            path,
            body,
            timeout=self._load_timeout,
            model=model,
            timeout_error=LoadTimeout,
        )
        if kind == "embed":
            return inference_result(model, raw, embeddings=embedding_vectors(path, raw, model))
        if kind == "embeddings":
            return inference_result(model, raw, embeddings=[])
        return inference_result(model, raw, text=text_field(path, raw, model))

    def embeddings(
        self,
        model: str,
        prompt: str,
        *,
        keep_alive: float,
        options: Mapping[str, Any] | None = None,
        call: Call | None = None,
    ) -> list[float]:
        """One vector from the legacy ``/api/embeddings`` (``{"model", "prompt"}`` ->
        ``{"embedding": [...]}``), which Ollama had before ``/api/embed``: one prompt per
        request, and the vector is **not** L2-normalised (OLLAMA_FACTS §1.4)."""
        body: dict[str, Any] = {"model": model, "prompt": prompt}
        if options:
            body["options"] = dict(options)
        body["keep_alive"] = keep_alive_seconds(keep_alive)
        path = "/api/embeddings"
        raw = self._json("POST", path, body, timeout=self._timeout, model=model, call=call)
        vector = raw.get("embedding")
        if not isinstance(vector, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in vector
        ):
            raise malformed(path, "no embedding vector", raw, model=model)
        return [float(x) for x in vector]

    def probe(self, method: str, path: str) -> bool:
        """Whether this Ollama has the endpoint ``method path``: False when it answers Go's
        plain-text ``404 page not found`` (a route it does not have, so an older version);
        True for any other answer. A ``POST`` or ``DELETE`` is sent ``{}``, which every
        Ollama endpoint refuses (400, or a JSON 404 for the empty model name) before
        doing anything. Raises :class:`BackendUnavailable` or :class:`BackendTimeout` when
        no answer came, so the question stays open."""
        body: dict[str, Any] | None = None if method in ("GET", "HEAD") else {}
        try:
            self._exchange(method, path, body, self._info_timeout, None, BackendTimeout, _drain)
        except EndpointNotAvailable:
            return False
        except (BackendUnavailable, BackendTimeout):
            raise
        except OllamaError:
            return True
        return True

    def unload(self, model: str) -> None:
        """Ask Ollama to unload ``model`` (empty prompt, ``keep_alive`` 0).

        Ollama answers at once; the runner leaves ``/api/ps`` once its in-flight requests
        finish and its VRAM is freed some time after that, so poll ps (and NVML) to see it
        gone.
        """
        body = {"model": model, "prompt": "", "keep_alive": 0, "stream": False}
        self._json("POST", "/api/generate", body, timeout=self._timeout, model=model)

    # -------------------------------------------------------------------- management

    def pull(
        self,
        model: str,
        progress: Callable[[dict[str, Any]], None] | None = None,
        *,
        call: Call | None = None,
    ) -> None:
        """Download ``model``, calling ``progress`` with each NDJSON status object in order.

        The objects are Ollama's ``api.ProgressResponse``: ``status``, and for a layer
        being downloaded ``digest``, ``total`` and ``completed`` bytes (every 60 ms,
        ``server/download.go``). Returns after the final ``{"status": "success"}``. An
        unknown model (which Ollama reports as an error line on HTTP 200) raises
        :class:`ModelNotFound`; any other error line :class:`StreamError`. An exception from
        ``progress`` aborts the pull and propagates unchanged. The read timeout applies
        between two lines. ``call`` lets another thread abort the pull
        (:class:`RequestAborted`); Ollama then stops it and keeps what it downloaded
        (``-partial`` files), which the next pull of the model resumes.
        """
        name = model

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
        self._exchange(
            "POST", "/api/pull", body, self._timeout, name, BackendTimeout, consume, call=call
        )

    def delete(self, model: str) -> None:
        """Remove ``model`` from disk. Does not unload it if it is running."""
        body = {"model": model}
        self._exchange("DELETE", "/api/delete", body, self._timeout, model, BackendTimeout, _drain)

    # ------------------------------------------------------------------------ transport

    def _json(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        timeout: tuple[float, float | None],
        model: str | None = None,
        timeout_error: type[OllamaError] = BackendTimeout,
        call: Call | None = None,
        on_chunk: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """One JSON object from ``path``; a streamed (NDJSON) answer is joined into one."""
        progress = _Progress()

        def seen(obj: dict[str, Any]) -> None:
            progress.chunks += 1
            if on_chunk is not None:
                on_chunk(obj)

        def consume(resp: requests.Response) -> dict[str, Any]:
            return final_object(resp, path, model, seen)

        return self._exchange(
            method, path, body, timeout, model, timeout_error, consume, call=call, progress=progress
        )

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
        timeout: tuple[float, float | None],
        model: str | None,
        timeout_error: type[OllamaError],
        consume: Callable[[requests.Response], _T],
        *,
        call: Call | None = None,
        progress: _Progress | None = None,
    ) -> _T:
        """Send one request and hand a 2xx response to ``consume``; map every failure.

        The body is read inside the same error mapping, so a connection lost or a read
        timing out mid-answer is typed like one lost before it. A call aborted through
        ``call`` raises :class:`RequestAborted`, whatever the broken connection looked like.
        """
        data: bytes | None = None
        if body is not None:
            try:
                data = json.dumps(body, allow_nan=False).encode()
            except (TypeError, ValueError) as exc:
                raise OllamaBadRequest(
                    f"request to {path} cannot be sent as JSON: {exc}", model=model
                ) from exc
        try:
            endpoint = self._endpoint(method, path, with_body=data is not None)
            request = endpoint.request.copy()
            request.prepare_body(data, None)
            with (
                calling(call),
                self._session.send(request, timeout=timeout, **endpoint.settings) as resp,
            ):
                if not 200 <= resp.status_code < 300:
                    raise http_error(resp.status_code, body_text(resp), model)
                return consume(resp)
        except (requests.RequestException, OllamaError) as exc:
            if call is not None and call.aborted:
                raise RequestAborted(
                    f"the request {method} {path} was aborted", model=model
                ) from exc
            if isinstance(exc, OllamaError):
                raise
            chunks = progress.chunks if progress is not None else 0
            raise self._transport_error(
                exc, f"{method} {path}", timeout, model, timeout_error, chunks
            ) from exc

    def _transport_error(
        self,
        exc: requests.RequestException,
        where: str,
        timeout: tuple[float, float | None],
        model: str | None,
        timeout_error: type[OllamaError],
        chunks: int,
    ) -> OllamaError:
        """The typed error for a failure of the connection itself."""
        if isinstance(exc, requests.ConnectTimeout):
            return BackendUnavailable(
                f"cannot reach Ollama at {self.base_url}: no connection within {timeout[0]} s",
                model=model,
                reached=False,
            )
        timed_out = isinstance(exc, requests.ReadTimeout) or (
            # requests reports a read timeout in the middle of a body this way
            isinstance(exc, requests.ConnectionError)
            and any(isinstance(arg, ReadTimeoutError) for arg in exc.args)
        )
        if timed_out:
            if chunks:
                message = (
                    f"Ollama stopped answering {where} for {timeout[1]} s after {chunks} chunk(s)"
                )
            else:
                message = f"Ollama sent nothing for {timeout[1]} s in answer to {where}"
            if timeout_error is BackendTimeout:
                return BackendTimeout(message, model=model, chunks=chunks)
            return timeout_error(message, model=model)
        if isinstance(exc, requests.ConnectionError):
            never = _never_connected(exc)
            if never:
                message = f"cannot reach Ollama at {self.base_url}: {connection_failure(exc)}"
            else:
                message = (
                    f"connection to Ollama at {self.base_url} lost during {where}: "
                    f"{connection_failure(exc)}"
                )
            return BackendUnavailable(message, model=model, reached=not never)
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):
            return BackendUnavailable(
                f"connection to Ollama at {self.base_url} broke during the answer to {where}: "
                f"{connection_failure(exc)}",
                model=model,
            )
        return OllamaError(
            f"request {where} to Ollama at {self.base_url} failed: {connection_failure(exc)}",
            model=model,
        )


# ----------------------------------------------------------------------------- helpers


class _Progress:
    """How many objects of an answer have arrived (for timeout messages and retries)."""

    __slots__ = ("chunks",)

    def __init__(self) -> None:
        self.chunks = 0


@dataclass(frozen=True)
class _Endpoint:
    """One endpoint's request, prepared without a body, and its ``Session.send`` settings
    (proxies, stream, verify, cert; always streamed, so errors are read inside the mapping)."""

    request: requests.PreparedRequest
    settings: Mapping[str, Any]


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.ETIMEDOUT: "timed out",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable",
    errno.EPIPE: "connection closed",
}


def connection_failure(exc: BaseException) -> str:
    """A few words for why a connection failed ("connection refused", "timed out", ...),
    read from the chain of causes of a ``requests``/``urllib3`` error, without their
    internals (pool objects, retry counts, addresses of Python objects)."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        cur = todo.pop(0)
        if not isinstance(cur, BaseException) or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, socket.gaierror):
            return "host name not found"
        if isinstance(cur, TimeoutError | socket.timeout | ReadTimeoutError | ConnectTimeoutError):
            return "timed out"
        if isinstance(cur, OSError) and cur.errno in _ERRNO_WORDS:
            return _ERRNO_WORDS[cur.errno]
        if isinstance(cur, http.client.RemoteDisconnected):
            return "the connection was closed without an answer"
        if isinstance(cur, ssl.SSLError):
            return "TLS handshake failed"
        text = str(cur)
        for number, words in _ERRNO_WORDS.items():
            if f"[Errno {number}]" in text:
                return words
        if "Name or service not known" in text or "nodename nor servname" in text:
            return "host name not found"
        todo.extend([getattr(cur, "reason", None), cur.__cause__, cur.__context__, *cur.args])
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the answer was cut short"
    return "connection failed"


def _never_connected(exc: requests.ConnectionError) -> bool:
    """True when the connection itself failed (refused, no route): nothing was sent."""
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # urllib3 MaxRetryError wraps the cause
    return isinstance(reason, NewConnectionError | ConnectTimeoutError)


def _drain(resp: requests.Response) -> None:
    _ = resp.content  # read the body, so the connection goes back to the pool
