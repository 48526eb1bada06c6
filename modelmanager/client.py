"""A typed Python client for Model Manager's own HTTP API.

    from modelmanager.client import APINotImplemented, ModelManagerClient

    with ModelManagerClient("http://localhost:5001", api_key=None) as mm:
        job_id = mm.submit({"model": "qwen2.5:0.5b", "prompt": "Say hello."})
        job = mm.wait(job_id, timeout=120)          # long-polls GET /api/job/<id>?wait=S
        print(job.status, job.result)
        try:
            print(mm.model_status("qwen2.5:0.5b").status)   # DOWNLOADED, ...
        except APINotImplemented:
            pass                                     # an older Model Manager

Every method sends one request (``wait`` as many as it needs) and returns typed answers:
dataclasses for jobs, models on disk and GPUs, plain dicts for the large documents
(``stats``, ``health``, ``nodes``). Failures raise :class:`ClientError` with the service's
``status``, ``code``, ``message`` and ``details`` (the one error shape
``{"error": {"code", "message", "details"}}``) and ``retry_after`` (seconds, from
``Retry-After``); :class:`Unreachable` when no answer came; :class:`APINotImplemented`
when the server does not have the endpoint: an older Model Manager (it answers 404 "no
such endpoint", or 405 for a path it knows with another method), or a node whose Ollama
lacks what the call needs (501). Callers test for that one exception and carry on.

Units: sizes in bytes (``*_mb``: MiB, ``*_gb``: 10**9 bytes), durations in seconds, times
as the service writes them (ISO 8601, UTC). Thread-safe as ``requests.Session`` is for
concurrent requests (one pooled session).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from .errors import ModelManagerError

TERMINAL = frozenset({"complete", "failed", "cancelled"})
MAX_WAIT = 60.0  # the most one GET /api/job/<id>?wait=S may ask for (the service's limit)
POLL = 0.5  # seconds between polls of a server that cannot wait, or whose waiters are busy


# ------------------------------------------------------------------------------ errors


class ClientError(ModelManagerError):
    """The service refused the request, or could not be reached (``status`` None)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "",
        details: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details: dict[str, Any] = dict(details or {})
        self.retry_after = retry_after


class APINotImplemented(ClientError):
    """The server has no such endpoint (an older Model Manager), or the node's Ollama
    lacks what the call needs (501 ``NOT_IMPLEMENTED``)."""


class Unreachable(ClientError):
    """No answer: connection refused, timed out, or broken."""


# ------------------------------------------------------------------------------ answers


@dataclass(frozen=True)
class Job:
    """A job as ``GET /api/job/<id>`` shows it; ``raw`` is the whole answer."""

    job_id: str
    status: str
    model: str
    kind: str | None = None
    priority: str | None = None
    result: Any = None
    error: str | None = None
    error_code: str | None = None
    node: str | None = None
    attempts: int = 0
    metadata: Any = None
    submitted_at: str | None = None
    completed_at: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> Job:
        return cls(
            job_id=str(doc.get("job_id")),
            status=str(doc.get("status")),
            model=str(doc.get("model")),
            kind=doc.get("kind"),
            priority=doc.get("priority"),
            result=doc.get("result"),
            error=doc.get("error"),
            error_code=doc.get("error_code"),
            node=doc.get("node"),
            attempts=int(doc.get("attempts") or 0),
            metadata=doc.get("metadata"),
            submitted_at=doc.get("submitted_at"),
            completed_at=doc.get("completed_at"),
            raw=dict(doc),
        )


@dataclass(frozen=True)
class Progress:
    """A download under way: bytes are None where the node's Ollama reports none."""

    start_time: str
    elapsed_seconds: float
    completed_bytes: int | None
    total_bytes: int | None


def _progress(doc: Any) -> Progress | None:
    if not isinstance(doc, Mapping):
        return None
    return Progress(
        str(doc.get("start_time")),
        float(doc.get("elapsed_seconds") or 0.0),
        doc.get("completed_bytes"),
        doc.get("total_bytes"),
    )


@dataclass(frozen=True)
class ModelStatus:
    """``DOWNLOADED``, ``DOWNLOADING`` (with ``progress``), ``PARTIAL`` or ``NOT_FOUND``."""

    model: str
    node: str
    status: str
    progress: Progress | None = None
    task_id: str | None = None
    digest: str | None = None
    size_bytes: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class DownloadTask:
    task_id: str
    status: str
    model: str
    node: str


@dataclass(frozen=True)
class DeleteResult:
    """``status`` is ``deleted`` (``deleted`` lists the tags) or ``cancelled``."""

    model: str
    node: str
    status: str
    deleted: tuple[str, ...] = ()
    task_id: str | None = None


@dataclass(frozen=True)
class ModelEntry:
    model: str
    node: str
    status: str
    size_bytes: int | None
    digest: str | None
    progress: Progress | None = None
    task_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class NodeSpace:
    """Sizes in GB (10**9 bytes); None where the node's disk cannot be read (``note``)."""

    node: str
    cache_size_gb: float | None
    available_gb: float | None
    cache_path: str | None
    note: str | None = None


@dataclass(frozen=True)
class GpuDevice:
    """One GPU of the service's host; memory in MiB."""

    index: int
    name: str
    uuid: str
    total_mb: int | None
    free_mb: int | None
    used_mb: int | None
    utilization_pct: int | None
    temperature_c: int | None
    available: bool
    error: str | None


@dataclass(frozen=True)
class GpuDriver:
    driver_version: str | None
    cuda_driver_version: int | None  # 13000 means 13.0
    nvml_version: str | None


def _fields(cls: type, doc: Mapping[str, Any]) -> dict[str, Any]:
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return {k: v for k, v in doc.items() if k in names}


# ------------------------------------------------------------------------------ client


class ModelManagerClient:
    """Model Manager at ``url`` (``http://host:port``). ``api_key`` is sent as
    ``Authorization: Bearer <key>``; ``timeout`` bounds each request (seconds; a wait
    adds its own seconds to it)."""

    def __init__(
        self,
        url: str = "http://localhost:5001",
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        session: requests.Session | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._owns = session is None
        self.session = session or requests.Session()
        if session is None:
            self.session.trust_env = False
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def close(self) -> None:
        if self._owns:
            self.session.close()

    def __enter__(self) -> ModelManagerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------- transport

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> requests.Response:
        try:
            resp = self.session.request(
                method,
                self.url + path,
                json=body,
                params=params,
                timeout=timeout or self.timeout,
            )
        except requests.RequestException as exc:
            raise Unreachable(
                f"Model Manager at {self.url} did not answer {method} {path}: "
                f"{exc.__class__.__name__}",
                code="UNREACHABLE",
            ) from exc
        if resp.status_code >= 400:
            raise _error(resp, method, path)
        return resp

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        resp = self._send(method, path, **kw)
        try:
            return resp.json()
        except ValueError:
            raise ClientError(
                f"{method} {path} answered {resp.status_code} with something that is not JSON",
                status=resp.status_code,
                code="BAD_ANSWER",
            ) from None

    # -------------------------------------------------------------------------- jobs

    def health(self) -> dict[str, Any]:
        """``GET /api/health`` (needs no API key)."""
        return dict(self._json("GET", "/api/health"))

    def submit(self, job: Mapping[str, Any]) -> str:
        """``POST /api/submit``: one job (``model`` and ``prompt``, ``messages`` or
        ``input``, optional ``priority``, ``metadata``, Ollama's fields ...); its id.
        Raises :class:`ClientError` 400 naming the bad field, 429 when the queue is full
        (``retry_after``), 503 while the service stops."""
        return str(self._json("POST", "/api/submit", body=dict(job))["job_id"])

    def submit_batch(self, jobs: Sequence[Mapping[str, Any]]) -> list[str]:
        """``POST /api/submit_batch``: all the jobs or none; their ids, in order."""
        doc = self._json("POST", "/api/submit_batch", body={"jobs": [dict(j) for j in jobs]})
        return [str(i) for i in doc["job_ids"]]

    def get(self, job_id: str, *, wait: float | None = None) -> Job:
        """``GET /api/job/<id>``; with ``wait`` (0 < seconds <= 60) the service answers
        once the job is finished or after that long. Raises :class:`ClientError` 404."""
        job, _ = self._get(job_id, wait)
        return job

    def _get(self, job_id: str, wait: float | None) -> tuple[Job, str | None]:
        params = None if wait is None else {"wait": f"{wait:.3f}"}
        extra = wait or 0.0
        resp = self._send("GET", f"/api/job/{job_id}", params=params, timeout=self.timeout + extra)
        return Job.of(resp.json()), resp.headers.get("X-Wait")

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once finished (complete, failed or cancelled), or as it stands after
        ``timeout`` seconds (None: no limit). Long-polls ``GET /api/job/<id>?wait=S``, so
        the answer comes as the job ends; against a server that cannot wait (an older
        one: no ``X-Wait`` in its answer), or whose waiting places are all taken
        (``X-Wait: busy``), it asks again every half second."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = MAX_WAIT if deadline is None else deadline - time.monotonic()
            job, how = self._get(job_id, max(0.001, min(MAX_WAIT, left)))
            if job.finished or (deadline is not None and time.monotonic() >= deadline):
                return job
            if how in (None, "busy"):
                pause = POLL if deadline is None else min(POLL, deadline - time.monotonic())
                if pause > 0:
                    time.sleep(pause)  # the server answered at once: do not spin

    def cancel(self, job_id: str) -> dict[str, Any]:
        """``POST /api/job/<id>/cancel``: ``{"job_id", "status": "cancelled", "was"}``.
        Raises :class:`ClientError` 404, or 409 for a finished job."""
        return dict(self._json("POST", f"/api/job/{job_id}/cancel"))

    def retry(self, job_id: str) -> dict[str, Any]:
        """``POST /api/job/<id>/retry``: a failed job back in the queue."""
        return dict(self._json("POST", f"/api/job/{job_id}/retry"))

    def stats(self) -> dict[str, Any]:
        """``GET /api/stats``: queue, VRAM, GPUs, counters (see the README)."""
        return dict(self._json("GET", "/api/stats"))

    # ----------------------------------------------------------------- GPUs, nodes

    def gpu_devices(self) -> list[GpuDevice]:
        """``GET /api/v1/gpu/devices``: the service host's GPUs (empty without NVML)."""
        doc = self._json("GET", "/api/v1/gpu/devices")
        return [GpuDevice(**_fields(GpuDevice, d)) for d in doc["devices"]]

    def gpu_driver(self) -> GpuDriver:
        """``GET /api/v1/gpu/driver``."""
        return GpuDriver(**_fields(GpuDriver, self._json("GET", "/api/v1/gpu/driver")))

    def nodes(self) -> list[dict[str, Any]]:
        """``GET /api/v1/nodes``: every Ollama server the service drives."""
        return list(self._json("GET", "/api/v1/nodes")["nodes"])

    # --------------------------------------------------------------- models on disk

    def model_status(self, model: str, node: str | None = None) -> ModelStatus:
        """``POST /api/v1/models/status``. ``node`` is needed when the service drives
        several Ollama servers. Raises :class:`ClientError` 400/404/503."""
        doc = self._json("POST", "/api/v1/models/status", body=_body(model, node))
        values = _fields(ModelStatus, doc)
        values["progress"] = _progress(doc.get("progress"))
        return ModelStatus(**values)

    def download_model(self, model: str, node: str | None = None) -> DownloadTask:
        """``POST /api/v1/models/download``: starts the download and returns at once.
        Raises :class:`ClientError` 409 (downloading already), 429 (the node's
        MAX_DOWNLOADS are running: ``retry_after``), :class:`APINotImplemented` (the
        node's Ollama cannot download)."""
        doc = self._json("POST", "/api/v1/models/download", body=_body(model, node))
        return DownloadTask(**_fields(DownloadTask, doc))

    def delete_model(
        self,
        model: str,
        node: str | None = None,
        *,
        digest: str | None = None,
        force: bool = False,
    ) -> DeleteResult:
        """``DELETE /api/v1/models``: cancel its download, or delete it (a tag; without
        a tag every tag of the model; with ``digest`` only the tags of that digest).
        Raises :class:`ClientError` 404, or 409 while jobs for it wait or run (unless
        ``force``)."""
        body = _body(model, node)
        if digest is not None:
            body["digest"] = digest
        if force:
            body["force"] = True
        doc = self._json("DELETE", "/api/v1/models", body=body)
        values = _fields(DeleteResult, doc)
        values["deleted"] = tuple(doc.get("deleted") or ())
        return DeleteResult(**values)

    def list_models(self, node: str | None = None) -> list[ModelEntry]:
        """``GET /api/v1/models/list``: every model on each node's disk, downloads under
        way and stopped ones included (nodes that did not answer are left out)."""
        params = {"node": node} if node else None
        doc = self._json("GET", "/api/v1/models/list", params=params)
        out = []
        for entry in doc["models"]:
            values = _fields(ModelEntry, entry)
            values["progress"] = _progress(entry.get("progress"))
            out.append(ModelEntry(**values))
        return out

    def disk_space(self, node: str | None = None) -> list[NodeSpace]:
        """``GET /api/v1/models/space``: per node, its models' size, free space, path."""
        params = {"node": node} if node else None
        doc = self._json("GET", "/api/v1/models/space", params=params)
        return [NodeSpace(**_fields(NodeSpace, n)) for n in doc["nodes"]]


def _body(model: str, node: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model}
    if node is not None:
        body["node"] = node
    return body


def _error(resp: requests.Response, method: str, path: str) -> ClientError:
    """The exception for an error answer (see the module docstring)."""
    code, message = "", ""
    details: dict[str, Any] = {}
    try:
        doc = resp.json()
        err = doc["error"]
        code, message = str(err["code"]), str(err["message"])
        details = err.get("details") or {}
    except (ValueError, KeyError, TypeError):
        message = resp.text.strip()[:200] or f"HTTP {resp.status_code}"
    retry_after = None
    header = resp.headers.get("Retry-After")
    if header and header.strip().isdigit():
        retry_after = float(header)
    status = resp.status_code
    missing = (
        status == 501
        or status == 405
        or (status == 404 and (not code or message.startswith("no such endpoint")))
    )
    cls = APINotImplemented if missing else ClientError
    if missing and status != 501:
        message = f"this Model Manager has no {method} {path} (an older version?): {message}"
    return cls(message, status=status, code=code, details=details, retry_after=retry_after)
