"""What both front doors share: the request body, the key's default priority, and
Ollama's own answers for what is not a job (tags, show, ps, version)."""

from __future__ import annotations

import json
import math
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any

import requests

from config import Config

from ..errors import InvalidRequest

INFO_TIMEOUT = (5.0, 30.0)  # s: connect, read (tags, show, ps, version)
RETRY_AFTER = "5"  # s: sent with a 503 when Ollama cannot be reached


def parse_json(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object, or a 400 saying what is wrong.

    Text is read as Go's ``encoding/json`` reads it for Ollama (``Unmarshal``: "invalid
    UTF-8 or invalid UTF-16 surrogate pairs are not treated as an error. Instead, they
    are replaced by the Unicode replacement character U+FFFD"): bytes that are not UTF-8,
    and lone surrogates written as ``\\ud800`` escapes, become U+FFFD instead of a 400.
    NUL characters (``\\u0000``) are kept, as Go keeps them."""
    if not raw:
        raise InvalidRequest("missing request body")
    text = raw.decode("utf-8", errors="replace")
    try:
        body = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"invalid JSON in the request body: {exc}") from None
    except RecursionError:
        raise InvalidRequest("the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(text):  # (rare: only then can a string hold one)
        replaced = _without_surrogates(body)
        assert isinstance(replaced, dict)
        return replaced
    return body


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_surrogates(value: Any) -> Any:
    """``value`` with each lone surrogate in its strings (keys included) replaced by
    U+FFFD; a valid pair was already joined into one character by the decoder. Walks the
    body without recursion, so that any depth the decoder accepted is fine."""
    root: list[Any] = [value]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        holder, at = stack.pop()
        item = holder[at]
        if isinstance(item, str):
            holder[at] = _SURROGATE.sub("\ufffd", item)
        elif isinstance(item, list):
            stack.extend((item, i) for i in range(len(item)))
        elif isinstance(item, dict):
            fixed = {_SURROGATE.sub("\ufffd", k): v for k, v in item.items()}
            item.clear()
            item.update(fixed)
            stack.extend((item, k) for k in item)
    return root[0]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


class KeyPriorities:
    """The default priority of the API key a request carries (None: none set)."""

    def __init__(self, config: Config) -> None:
        self._by_header = {f"Bearer {key}": p for key, p in config.api_keys.items()}

    def __call__(self, authorization: str) -> str | None:
        """The priority of the key in this ``Authorization`` header, which was checked
        (in constant time) before the request got here."""
        return self._by_header.get(authorization)


def node_urls(api: Any, config: Config) -> Callable[[], list[str]]:
    """The base URLs of the nodes the manager drives now (registered ones included), read
    at each call; ``OLLAMA_BASE_URL`` where the API has no fleet."""
    default = config.OLLAMA_BASE_URL.rstrip("/")

    def urls() -> list[str]:
        fleet = getattr(api, "fleet", None)
        if fleet is None:
            return [default]
        return [backend.client.base_url for backend in fleet.backends().values()]

    return urls


class Backend:
    """Ollama's own answers, passed through: status, body and content type unchanged.
    With several nodes (a fleet), ``/api/tags`` and ``/api/ps`` list the models of every
    node that answers (each name once, the first node's entry), and other requests are
    answered by the first node that answers 200 (else the first answer that is not a 503;
    else a 503). A connection per call (these are rare): nothing to close when the app
    goes. Thread-safe."""

    MERGED = ("/api/tags", "/api/ps")  # answers that list models: one list for the fleet

    def __init__(self, config: Config, urls: Callable[[], list[str]] | None = None) -> None:
        default = config.OLLAMA_BASE_URL.rstrip("/")
        self._urls = urls or (lambda: [default])

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes, str]:
        """``(status, body, content type)`` of Ollama's answer; a 503 in Ollama's error
        shape when no node can be reached, whose text says why in a few words:
        ``{"error": "cannot reach Ollama at http://host:11434: connection refused"}``
        (or ``timed out``, ...). Callers add :func:`retry_headers`."""
        merged = path in self.MERGED
        answers = []
        for url in self._urls() or [""]:
            answer = self._one(url, method, path, body)
            if answer[0] == 200 and not merged:
                return answer  # the first node that has it: the others are not asked
            answers.append(answer)
        ok = [a for a in answers if a[0] == 200]
        if len(ok) > 1:
            return 200, _merged(ok), "application/json; charset=utf-8"
        return next(iter(ok or [a for a in answers if a[0] != 503] or answers))

    @staticmethod
    def _one(url: str, method: str, path: str, body: Any) -> tuple[int, bytes, str]:
        if not url:
            text = json.dumps({"error": "no Ollama server is configured or registered"})
            return 503, text.encode(), "application/json; charset=utf-8"
        try:
            with requests.Session() as session:
                session.trust_env = False  # Ollama is a local backend: no proxy settings
                resp = session.request(method, url + path, json=body, timeout=INFO_TIMEOUT)
        except requests.RequestException as exc:
            text = json.dumps({"error": f"cannot reach Ollama at {url}: {unreachable(exc)}"})
            return 503, text.encode(), "application/json; charset=utf-8"
        return resp.status_code, resp.content, resp.headers.get("Content-Type", "")

    def json(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """``(status, decoded body)``; a body that is not JSON reads as ``{"error": text}``."""
        status, content, _ = self.call(method, path, body)
        try:
            return status, json.loads(content)
        except ValueError:
            return status, {"error": content.decode(errors="replace").strip() or "no answer"}


def retry_headers(status: int) -> dict[str, str] | None:
    """``Retry-After`` (seconds) for a 503 (Ollama unreachable, or Ollama's own busy
    answer), as the manager's other 503s carry it; None for any other status."""
    return {"Retry-After": RETRY_AFTER} if status == 503 else None


def unreachable(exc: requests.RequestException) -> str:
    """Why ``exc`` got no answer, in a few words (``"connection refused"``, ``"timed
    out"``, ...), not urllib3's ``HTTPConnectionPool(host=...): Max retries exceeded ...``
    text, which names the pool and the retry policy rather than the cause."""
    if isinstance(exc, requests.Timeout):  # ConnectTimeout is a ConnectionError too
        return "timed out"
    for cause in _causes(exc):
        if isinstance(cause, TimeoutError | socket.timeout):
            return "timed out"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError | ConnectionAbortedError):
            return "the connection was closed before an answer"
        if isinstance(cause, socket.gaierror):
            return "its host name cannot be resolved"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[:1].lower() + cause.strerror[1:]
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return "the URL is not valid"
    if isinstance(exc, requests.ConnectionError):
        return "the connection failed"
    return "no valid answer came"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps (``args``, urllib3's ``reason``, ``__cause__``,
    ``__context__``), breadth first, each once, at most 32."""
    queue: list[BaseException] = [exc]
    seen: set[int] = set()
    while queue and len(seen) < 32:
        item = queue.pop(0)
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        wrapped = [*item.args, getattr(item, "reason", None), item.__cause__, item.__context__]
        queue.extend(w for w in wrapped if isinstance(w, BaseException))


def _merged(answers: list[tuple[int, bytes, str]]) -> bytes:
    """One ``{"models": [...]}`` from several nodes' answers, each model name once."""
    seen: set[str] = set()
    models: list[Any] = []
    for _, content, _ in answers:
        try:
            entries = json.loads(content).get("models") or []
        except (ValueError, AttributeError):
            continue
        for entry in entries:
            name = (
                str(entry.get("name") or entry.get("model") or "")
                if isinstance(entry, dict)
                else ""
            )
            if name not in seen:
                seen.add(name)
                models.append(entry)
    return json.dumps({"models": models}).encode()
