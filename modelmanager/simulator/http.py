"""The simulator's HTTP server: one thread per connection, HTTP/1.1 keep-alive, Ollama's
status codes and NDJSON streaming, injected faults, and the ``/_sim/`` controls.

:class:`Handler` does the plumbing (reading bodies, sending JSON, text and chunked
NDJSON, logging each request); the Ollama semantics of each route live in
:mod:`.endpoints` (models) and :mod:`.inference` (generate, chat, embed).
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import sys
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from . import endpoints, inference
from .faults import INFERENCE_ENDPOINTS, Fault, control
from .fields import bench_tag
from .watch import UNWATCHED, ClientGone, ShuttingDown, Watch
from .wire import ERR_SHUTDOWN, NOT_FOUND_TEXT, VERSION, ApiError, to_json

if TYPE_CHECKING:
    from .fake import FakeOllama

Route = Callable[["Handler", bytes], None]

ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/"): endpoints.root,
    ("HEAD", "/"): endpoints.root,
    ("GET", "/api/version"): endpoints.version,
    ("HEAD", "/api/version"): endpoints.version,
    ("GET", "/api/tags"): endpoints.tags,
    ("HEAD", "/api/tags"): endpoints.tags,
    ("GET", "/api/ps"): endpoints.ps,
    ("POST", "/api/show"): endpoints.show,
    ("POST", "/api/copy"): endpoints.copy,
    ("DELETE", "/api/delete"): endpoints.delete,
    ("POST", "/api/pull"): endpoints.pull,
    ("POST", "/api/generate"): inference.generate,
    ("POST", "/api/chat"): inference.chat,
    ("POST", "/api/embed"): inference.embed,
    ("POST", "/api/embeddings"): inference.embeddings,
}
#: Requests that wait or work long enough for a vanished client to matter.
WATCHED_ENDPOINTS = INFERENCE_ENDPOINTS | {"/api/pull"}


def _names_no_model(path: str, raw: bytes) -> bool:
    """A pull that names no model (a client probing whether the endpoint exists): it is
    refused with a 400 and takes no fault meant for a pull."""
    if path != "/api/pull":
        return False
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return True
    return not (isinstance(body, dict) and (body.get("model") or body.get("name")))


class Server(ThreadingHTTPServer):
    """One listening socket; the simulator makes a new one after ``refuse_connections``."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sim: FakeOllama) -> None:
        self.sim = sim
        super().__init__(address, Handler)

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


class Handler(BaseHTTPRequestHandler):
    """One connection. Per request: ``t0`` (arrival, monotonic s), ``endpoint``,
    ``model`` (the name as sent, for the log), ``status`` (None until an answer began),
    ``tag`` (bench tag), ``watch`` (whether the client is still there)."""

    protocol_version = "HTTP/1.1"
    server_version = "fake-ollama/" + VERSION
    sys_version = ""
    # TCP_NODELAY, as Go's net package (so Ollama) sets it: headers and body go out in two
    # writes, and with Nagle on, the body would wait for the client's delayed ACK (~40 ms).
    disable_nagle_algorithm = True

    t0: float
    endpoint: str
    model: str | None
    status: int | None
    streaming: bool
    fault: str | None
    tag: str | None
    log_entry: dict[str, Any] | None
    watch: Watch = UNWATCHED

    @property
    def sim(self) -> FakeOllama:
        """The simulator this connection belongs to."""
        return cast(Server, self.server).sim

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.sim.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.sim.track(self.connection, False)

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
        sim.set_busy(self.connection, True)
        self.t0 = time.monotonic()
        self.status = None
        self.streaming = False
        self.model = None
        self.fault = None
        self.tag = None
        self.log_entry = None
        path = urlsplit(self.path).path
        self.endpoint = path
        control_path = path == "/_sim" or path.startswith("/_sim/")
        try:
            body = self._read_body()
            if control_path:
                self._control(method, path, body)
            else:
                self._api(method, path, body)
        except (ClientGone, OSError):
            self.close_connection = True
            if not control_path and (self.status is None or self.log_entry is not None):
                sim._record_cancel(self.log_entry, self.t0, path, self.model, self.tag)
        finally:
            sim.set_busy(self.connection, False)
            if sim.refusing():  # not listening: drop keep-alive connections
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

    def send(self, status: int, body: bytes, content_type: str) -> None:
        """Send a complete answer (no body for HEAD)."""
        self.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_answer(self, status: int) -> None:
        """Put this request in the simulator's request log with ``status``."""
        self.log_entry = self.sim._record(
            self.t0, self.endpoint, self.model, status, self.fault, self.tag
        )

    def send_json(self, status: int, obj: Any) -> None:
        """Send ``obj`` as ``application/json; charset=utf-8`` (logged for /api paths)."""
        if self.endpoint.startswith("/api/") or self.endpoint == "/":
            self.log_answer(status)
        self.send(status, to_json(obj), "application/json; charset=utf-8")

    def send_text(self, status: int, text: str, content_type: str = "text/plain") -> None:
        """Send plain text (logged unless it answers a control)."""
        if not self.endpoint.startswith("/_sim"):
            self.log_answer(status)
        self.send(status, text.encode(), content_type)

    def stream_line(self, obj: Any) -> None:
        """Write one NDJSON line as an HTTP chunk; the first call sends the 200 headers."""
        if not self.streaming:
            self.streaming = True
            self.status = 200
            self.log_answer(200)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
        data = to_json(obj) + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def end_stream(self) -> None:
        """End a chunked answer, if one was started."""
        if self.streaming:
            self.wfile.write(b"0\r\n\r\n")

    def fail(self, status: int, message: str) -> None:
        """An error: an HTTP status before the answer began, an ``{"error"}`` line after."""
        if self.streaming:
            self.stream_line({"error": message})
        else:
            self.send_json(status, {"error": message})

    # ----- /api routing -------------------------------------------------------------

    def _api(self, method: str, path: str, raw: bytes) -> None:
        sim = self.sim
        route = ROUTES.get((method, path))
        if route is None or sim.is_disabled(path):
            self.send_text(404, NOT_FOUND_TEXT)
            return
        with sim._cv:
            sim._in_flight += 1
        if path in WATCHED_ENDPOINTS:
            self.watch = sim.watch(self.connection)
        try:
            try:
                sim._sleep(sim.latency())
                fault = None if _names_no_model(path, raw) else sim.take_fault(path)
                if fault is not None:
                    self._apply_fault(fault, path, raw)
                else:
                    route(self, raw)
            except ApiError as exc:
                self.fail(exc.status, exc.message)
            except ShuttingDown:
                self.fail(500, ERR_SHUTDOWN)
            self.end_stream()
        finally:
            if self.watch is not UNWATCHED:
                sim.unwatch(self.watch)
                self.watch = UNWATCHED
            with sim._cv:
                sim._in_flight -= 1

    def _apply_fault(self, fault: Fault, path: str, raw: bytes) -> None:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        model = body.get("model") if isinstance(body, dict) else None
        self.model = model if isinstance(model, str) else None
        self.fault = fault.mode
        if isinstance(body, dict):
            self.tag = bench_tag(body.get("prompt"))
        if fault.mode in ("hang", "close"):
            if fault.mode == "hang":
                with contextlib.suppress(ShuttingDown):
                    self.sim._sleep(fault.seconds)
            self.log_answer(0)
            self.status = 0
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        streaming = isinstance(body, dict) and body.get("stream") is not False
        if fault.mode == "stream" and streaming and path in ("/api/generate", "/api/chat"):
            self.stream_line(inference.chunk(path == "/api/chat", self.model or "", "The"))
            self.stream_line({"error": fault.error})
            return
        if fault.mode == "partial":
            endpoints.pull(self, raw, fail=fault.error)
            return
        if fault.mode == "stream" and streaming and path == "/api/pull":
            self.stream_line({"status": "pulling manifest"})
            self.stream_line({"error": fault.error})
            return
        status = fault.status if fault.mode == "http" else 500
        self.send_json(status, {"error": fault.error})

    # ----- /_sim/ controls ------------------------------------------------------------

    def _control(self, method: str, path: str, raw: bytes) -> None:
        try:
            body: Any = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            answer = control(self.sim, method, path[len("/_sim/") :], body)
            if answer is None:
                self.send_text(404, NOT_FOUND_TEXT)
                return
            status, obj, close = answer
            if close:
                self.close_connection = True
            self.send_json(status, obj)
        except (KeyError, TypeError, ValueError) as exc:
            self.send_json(400, {"error": f"bad control request: {exc!r}"})
