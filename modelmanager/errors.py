"""The one exception hierarchy of Model Manager.

Everything raised on purpose derives from :class:`ModelManagerError`. Two families hang
below it:

* :class:`ApiError` -- errors a client of our HTTP API sees. Each carries its HTTP status
  and a stable ``code``; ``http_api`` turns any of them into the one error JSON shape
  ``{"error": {"code", "message", "details"}}``.
* :class:`OllamaError` -- what the Ollama backend answered (or failed to answer). Each
  carries ``code`` (stored on a failed job as ``error_code``), ``transient`` (whether a
  retry may succeed) and the backend's own ``message``.
"""

from __future__ import annotations

from typing import Any


class ModelManagerError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(ModelManagerError):
    """A setting has a bad value; the message names the setting and the value."""


class DataDirLocked(ModelManagerError):
    """Another Model Manager instance already uses this data directory."""


# --------------------------------------------------------------------------- HTTP-facing


class ApiError(ModelManagerError):
    """An error answered to an HTTP client: status + stable code + readable message."""

    status: int = 500
    code: str = "INTERNAL_ERROR"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}
        self.headers: dict[str, str] = headers or {}

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class DatabaseUnavailable(ApiError):
    """``DATABASE_URL`` is malformed or its database cannot be reached or set up; the
    message says which, without the password. At start it stops the service (exit 2);
    later (PostgreSQL restarting) a request that needs the database answers 503 with
    ``Retry-After``."""

    status = 503
    code = "DATABASE_UNAVAILABLE"

    def __init__(self, message: str, **kw: Any) -> None:
        kw.setdefault("headers", {"Retry-After": "5"})
        super().__init__(message, **kw)


class InvalidRequest(ApiError):
    status = 400
    code = "INVALID_REQUEST"

    def __init__(self, message: str, *, field: str | None = None, **kw: Any) -> None:
        details = kw.pop("details", None) or {}
        if field is not None:
            details.setdefault("field", field)
        super().__init__(message, details=details, **kw)


class Unauthorized(ApiError):
    status = 401
    code = "UNAUTHORIZED"


class NotFound(ApiError):
    status = 404
    code = "NOT_FOUND"


class MethodNotAllowed(ApiError):
    status = 405
    code = "METHOD_NOT_ALLOWED"


class Conflict(ApiError):
    status = 409
    code = "CONFLICT"


class PayloadTooLarge(ApiError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"


class QueueFull(ApiError):
    status = 429
    code = "QUEUE_FULL"


class GatewayTimeout(ApiError):
    """A backend did not answer in time (e.g. a node being registered)."""

    status = 504
    code = "NODE_UNHEALTHY"


class ServiceUnavailable(ApiError):
    status = 503
    code = "BACKEND_UNAVAILABLE"


class NotImplementedOnNode(ApiError):
    """The node's Ollama lacks the endpoint this needs (an older version)."""

    status = 501
    code = "NOT_IMPLEMENTED"


# ------------------------------------------------------------------------------ backend


class OllamaError(ModelManagerError):
    """Ollama failed a request. ``message`` is the backend's own text where it gave one.

    ``transient`` says whether the same request may succeed later (retry with backoff);
    permanent errors fail the job at once.
    """

    code: str = "BACKEND_ERROR"
    transient: bool = True

    def __init__(self, message: str, *, status: int | None = None, model: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.model = model


class ModelNotFound(OllamaError):
    """The model is not installed in Ollama (404)."""

    code = "MODEL_NOT_FOUND"
    transient = False


class OllamaBadRequest(OllamaError):
    """Ollama rejected the request itself (400): wrong capability, bad option, ..."""

    code = "BACKEND_BAD_REQUEST"
    transient = False


class EndpointNotAvailable(OllamaError):
    """This Ollama has no such endpoint (an older version): plain-text 404."""

    code = "ENDPOINT_NOT_AVAILABLE"
    transient = False


class ServerBusy(OllamaError):
    """Ollama's own pending queue is full (503)."""

    code = "BACKEND_BUSY"


class OutOfMemory(OllamaError):
    """A load or a running model ran out of GPU (or system) memory."""

    code = "OUT_OF_MEMORY"


class RunnerCrashed(OllamaError):
    """The model runner process died (during load or mid-request)."""

    code = "RUNNER_CRASHED"


class LoadTimeout(OllamaError):
    """The model did not finish loading in time (Ollama's stall timer, or ours)."""

    code = "LOAD_TIMEOUT"


class BackendUnavailable(OllamaError):
    """Ollama could not be reached (connection refused) or dropped the connection.

    ``reached`` is False only when no connection was made, so the request cannot have
    run; a dropped connection may have run it (and may even have crashed Ollama).
    """

    code = "BACKEND_UNAVAILABLE"

    def __init__(self, message: str, *, reached: bool = True, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.reached = reached


class BackendTimeout(OllamaError):
    """Ollama accepted the connection but went silent for longer than the read timeout.

    Answers are read as a stream, so this means "no progress", not "too long".
    ``chunks`` is how many pieces of the answer had arrived: with none, the same request
    would most likely wait the same way again (a prompt that takes longer to read than
    the timeout), so it is not transient; a stall after progress is. The job runner's
    silence watch (:mod:`modelmanager.silence`) refines this per request: a request that
    waited behind other silent requests of its runner is retried too
    (``verdicts.silence_retried``).
    """

    code = "BACKEND_TIMEOUT"

    def __init__(self, message: str, *, chunks: int = 0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.chunks = chunks
        self.transient = chunks > 0


class RequestAborted(OllamaError):
    """The request was aborted on purpose (the job was cancelled, timed out, or the
    service stopped); Ollama saw the connection close and stopped the work."""

    code = "ABORTED"
    transient = False


class StreamError(OllamaError):
    """An ``{"error": ...}`` line arrived inside a 200 NDJSON stream."""

    code = "STREAM_ERROR"
