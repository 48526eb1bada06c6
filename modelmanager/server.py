"""The HTTP server: waitress, built in one place so that main.py and the tests serve alike.

waitress refuses a body over its limit by itself: a plain-text "Request Entity Too
Large", then it closes the connection with the rest of the body unread, which a client
still sending sees as a connection reset, not as an answer. Here an oversized body,
declared or chunked, gets the API's JSON ``PAYLOAD_TOO_LARGE`` 413 instead (in the front
door's own error shape on Ollama's and OpenAI's paths), sent after the
rest of the body has been read and dropped (counted, never stored), so that a client that
reads only after sending receives it. The reading is bounded: a body declared larger than
:data:`DRAIN_LIMIT` is answered at once, and one sent chunked is cut off there. This
hooks waitress 3.0's request parser and channel classes (pinned in requirements.txt).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from waitress import create_server, wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer, MultiSocketServer
from waitress.utilities import RequestEntityTooLarge

from config import Config

from .frontdoors.errors import door_error
from .http_api import MAX_BODY_BYTES, payload_too_large

CONNECTION_LIMIT = 200  # beyond the MAX_OPEN_REQUESTS that Ollama/OpenAI API clients hold
CHANNEL_TIMEOUT = 60  # seconds a connection may stay silent
# A channel keeps reading while its request runs, so that a client closing its connection
# is seen at once (environ["waitress.client_disconnected"]) even when nothing is written:
# a front door waiting for a model then cancels the client's job.
REQUEST_LOOKAHEAD = 1
DRAIN_LIMIT = 4 * MAX_BODY_BYTES  # most bytes of a refused body read before answering


def build_server(app: Any, config: Config) -> Any:
    """A waitress server for ``app``, bound (not yet running) to HOST:HTTP_PORT.

    Raises ``OSError`` when the address cannot be bound (port in use, address not
    local). ``run()`` serves; ``close()`` stops.
    """
    server = create_server(
        app,
        host=config.HOST,  # always explicit: waitress would bind every interface
        port=config.HTTP_PORT,
        # Ollama/OpenAI API requests hold a thread while they wait or stream: up to
        # MAX_OPEN_REQUESTS of them, and HTTP_THREADS are left for everything else
        threads=config.HTTP_THREADS + config.MAX_OPEN_REQUESTS,
        connection_limit=CONNECTION_LIMIT + config.MAX_OPEN_REQUESTS,
        channel_request_lookahead=REQUEST_LOOKAHEAD,
        channel_timeout=CHANNEL_TIMEOUT,
        max_request_body_size=MAX_BODY_BYTES + 1,  # waitress refuses at >=
        ident="modelmanager",
    )
    # one listener per address the host resolves to ("localhost": IPv4 and IPv6)
    listeners = server.map if isinstance(server, MultiSocketServer) else server._map
    for listener in list(listeners.values()):
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = _Channel
    if not isinstance(server, MultiSocketServer):  # whose close() already does this
        _stop_threads_on_close(server)
    return server


def _stop_threads_on_close(server: Any) -> None:
    """A single-listener waitress server leaves its thread pool running after ``close()``,
    and its open connections too (a keep-alive client's socket stays open, unowned, until
    the client goes). With a thread per waiting Ollama/OpenAI client (MAX_OPEN_REQUESTS)
    that is too much to leave behind, so close also closes every connection and stops the
    idle threads (a busy one ends with its request), as ``MultiSocketServer.close`` does."""
    close, run = server.close, server.run
    closing = threading.Event()

    def close_and_stop_threads() -> None:
        closing.set()
        close()
        server.task_dispatcher.shutdown(timeout=2)
        wasyncore.close_all(server._map)

    def run_until_closed() -> None:
        """``run()``; a descriptor closed under its select() by ``close()`` from another
        thread is the expected end of a stop, not an error."""
        try:
            run()
        except OSError:
            if not closing.is_set():
                raise

    server.close = close_and_stop_threads
    server.run = run_until_closed


def bound_address(server: Any) -> tuple[str, int]:
    """The (host, port) ``server`` listens on; with several listeners, the first."""
    if isinstance(server, MultiSocketServer):
        host, port = server.effective_listen[0]
    else:
        host, port = server.getsockname()[:2]
    return str(host), int(port)


class _TooLarge(RequestEntityTooLarge):
    """waitress's 413, answered in the error shape of the API whose path it is: the job
    API's ``PAYLOAD_TOO_LARGE``, or a front door's own (:func:`door_error`:
    ``{"error": "..."}`` on Ollama's paths, ``{"error": {"message", "type", ...}}`` under
    ``/v1/``). The parser has read the request line when it refuses, so the path is
    known."""

    method = ""
    path = ""

    def to_response(self, ident: str | None = None) -> tuple[str, list[tuple[str, str]], bytes]:
        err = payload_too_large()
        door = door_error(self.method, self.path, err.status, err.message)
        if door is not None:
            _, body, content_type, _ = door
        else:
            body = json.dumps(err.to_json(), separators=(",", ":")).encode()
            content_type = "application/json"
        return f"{self.code} {self.reason}", [("Content-Type", content_type)], body


class _Discard:
    """A request body buffer that keeps nothing: what a refused body is read into."""

    def __init__(self) -> None:
        self.length = 0

    def append(self, data: bytes) -> None:
        self.length += len(data)

    def __len__(self) -> int:
        return self.length

    def close(self) -> None:
        pass


class _Parser(HTTPRequestParser):
    """waitress's request parser, but a body over the limit is read to its end (up to
    :data:`DRAIN_LIMIT`) and dropped before the request counts as complete."""

    error: Any  # declared for mypy (waitress is untyped); set by waitress
    expect_continue: bool
    draining = False
    drained = 0

    def received(self, data: bytes) -> int:
        if self.draining:
            return self._drain(data)
        consumed = int(super().received(data))
        if isinstance(self.error, RequestEntityTooLarge) and not isinstance(self.error, _TooLarge):
            self.error = _TooLarge(self.error.body)
            self.error.method = getattr(self, "command", "") or ""
            self.error.path = getattr(self, "path", "") or ""
            self._start_draining()
        return consumed

    def _start_draining(self) -> None:
        receiver = self.body_rcv
        if receiver is None or receiver.completed or receiver.error:
            return  # the body has ended (its last bytes went over the limit): answer now
        if self.expect_continue and self.body_bytes_received == 0:
            # the client waits for "100 Continue" before it sends the body: answer now
            # (and never send the 100), there is nothing to read
            self.expect_continue = False
            return
        if not self.chunked and self.content_length > DRAIN_LIMIT:
            return  # too much to read: answer and close
        kept, receiver.buf = receiver.buf, _Discard()
        kept.close()  # what a chunked body buffered before it went over the limit
        self.draining = True
        self.completed = False

    def _drain(self, data: bytes) -> int:
        receiver = self.body_rcv
        consumed = int(receiver.received(data))
        self.drained += consumed
        if receiver.completed or receiver.error or self.drained >= DRAIN_LIMIT:
            self.completed = True
        return consumed


class _Channel(HTTPChannel):
    parser_class = _Parser
