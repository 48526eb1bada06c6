"""Injected faults and the ``/_sim/`` controls (a path prefix real Ollama never uses).

A :class:`Fault` makes the next matching requests fail in one of four ways; the other
controls steer the simulated GPU, the gate, latency, endpoints and the listener. Every
control is also a method of :class:`~.fake.FakeOllama`; :func:`control` maps the HTTP
form onto those methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .wire import ERR_QUEUE_FULL, ERR_RUNNER_STOPPED

if TYPE_CHECKING:
    from .fake import FakeOllama

INFERENCE_ENDPOINTS = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"})
FAULT_MODES = frozenset({"http", "stream", "hang", "close", "partial"})
#: A pull that breaks part way, in Ollama's words (``server/download.go``: a blob
#: download that fails ``maxRetries`` times ends ``max retries exceeded: <cause>``).
ERR_PULL_BROKEN = "max retries exceeded: unexpected EOF"


@dataclass
class Fault:
    """The next ``count`` requests to ``endpoint`` (None: any inference endpoint) fail:
    ``http`` answers ``status`` with ``{"error": error}``; ``stream`` sends one chunk and
    then an ``{"error"}`` line; ``hang`` answers nothing for ``seconds`` (real) and
    closes; ``close`` closes the connection at once; ``partial`` (``/api/pull`` only)
    downloads half of the first layer it needs, keeps it (``-partial``), then sends an
    ``{"error"}`` line."""

    count: int
    status: int
    error: str
    endpoint: str | None
    mode: str
    seconds: float

    def matches(self, path: str) -> bool:
        """Whether a request to ``path`` takes this fault."""
        return self.endpoint == path or (self.endpoint is None and path in INFERENCE_ENDPOINTS)

    def as_dict(self) -> dict[str, Any]:
        """The fault as ``/_sim/faults`` lists it."""
        return {
            "count": self.count,
            "status": self.status,
            "error": self.error,
            "endpoint": self.endpoint,
            "mode": self.mode,
            "seconds": self.seconds,
        }


def make_fault(
    count: int,
    status: int,
    error: str | None,
    endpoint: str | None,
    mode: str,
    seconds: float,
) -> Fault:
    """A validated :class:`Fault`; raises ``ValueError`` naming the bad argument. Without
    ``error`` the text is the one Ollama gives for such a failure."""
    if mode not in FAULT_MODES:
        raise ValueError(f"mode must be one of {sorted(FAULT_MODES)}, got {mode!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"status must be an HTTP status code, got {status!r}")
    if endpoint is not None and not endpoint.startswith("/"):
        raise ValueError(f"endpoint must be a path such as /api/generate, got {endpoint!r}")
    if mode == "partial" and endpoint != "/api/pull":
        raise ValueError("mode 'partial' is for endpoint /api/pull only")
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds}")
    if error is None:
        if mode == "partial":
            error = ERR_PULL_BROKEN
        elif mode == "stream":
            error = "an error was encountered while running the model: unexpected EOF"
        elif status == 503:
            error = ERR_QUEUE_FULL
        else:
            error = ERR_RUNNER_STOPPED
    return Fault(count, status, error, endpoint, mode, float(seconds))


def control(
    sim: FakeOllama, method: str, name: str, body: dict[str, Any]
) -> tuple[int, Any, bool] | None:
    """Run the control ``method /_sim/<name>``: ``(status, JSON answer, close the
    connection after answering)``, or None for an unknown control. Raises ``KeyError``,
    ``TypeError`` or ``ValueError`` for a bad body (the handler answers 400)."""
    if (method, name) == ("GET", "stats"):
        return 200, sim.stats(), False
    if (method, name) == ("GET", "gpu"):
        return 200, sim.gpu(), False
    if (method, name) == ("GET", "faults"):
        return 200, {"faults": sim.faults()}, False
    if (method, name) == ("DELETE", "faults"):
        sim.clear_faults()
        return 200, {"ok": True}, False
    if (method, name) == ("POST", "faults"):
        sim.inject_fault(
            count=body.get("count", 1),
            status=body.get("status", 500),
            error=body.get("error"),
            endpoint=body.get("endpoint"),
            mode=body.get("mode", "http"),
            seconds=float(body.get("seconds", 30.0)),
        )
        return 200, {"ok": True}, False
    if (method, name) == ("POST", "gpu"):
        sim.set_other_program_mb(int(body["other_mb"]), body.get("gpu"))
        return 200, sim.gpu(), False
    if (method, name) == ("POST", "gate"):
        sim.set_gate(bool(body["closed"]), int(body.get("after_tokens", 0)))
        return 200, {"ok": True, "closed": bool(body["closed"])}, False
    if (method, name) == ("POST", "latency"):
        sim.set_latency(float(body["seconds"]))
        return 200, {"ok": True}, False
    if (method, name) == ("POST", "disable"):
        if body.get("enabled"):
            sim.enable_endpoint(str(body["endpoint"]))
        else:
            sim.disable_endpoint(str(body["endpoint"]))
        return 200, {"ok": True}, False
    if (method, name) == ("POST", "pull"):
        closed, progress = body.get("closed"), body.get("progress")
        sim.set_pull(
            closed=None if closed is None else bool(closed),
            progress=None if progress is None else bool(progress),
        )
        return 200, {"ok": True}, False
    if (method, name) == ("POST", "reset"):
        sim.reset(everything=bool(body.get("everything", False)))
        return 200, {"ok": True}, False
    if (method, name) == ("POST", "refuse"):
        # Stop listening first: once the client has the answer, connects fail.
        sim.refuse_connections(float(body["seconds"]))
        return 200, {"ok": True}, True
    return None
