"""What every route answers, as pydantic models: the OpenAPI document's response schemas.

They describe; the service builds its answers as plain dicts (``api.py``), and the fuzz
tests check each answer against these schemas. A field without a default is always
present (``X | None`` when it may be null); one with a default may be left out.
Durations are Ollama's, in nanoseconds; memory in bytes; times ISO 8601 in UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..models import JobKind, JobStatus, Priority
from .fields import optional

ERROR_CODES = {
    400: "INVALID_REQUEST",
    401: "UNAUTHORIZED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    429: "QUEUE_FULL",
    501: "NOT_IMPLEMENTED",
    503: "BACKEND_UNAVAILABLE",
    504: "NODE_UNHEALTHY",
}
# further codes a status may carry (the OpenAPI document's responses list them too)
MORE_ERROR_CODES = {503: ("DATABASE_UNAVAILABLE",)}
ErrorCode = Literal[
    "INVALID_REQUEST",
    "UNAUTHORIZED",
    "NOT_FOUND",
    "METHOD_NOT_ALLOWED",
    "CONFLICT",
    "PAYLOAD_TOO_LARGE",
    "QUEUE_FULL",
    "NOT_IMPLEMENTED",
    "BACKEND_UNAVAILABLE",
    "DATABASE_UNAVAILABLE",
    "NODE_UNHEALTHY",
]
Count = Annotated[int, Field(ge=0)]


class _Answer(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)


# --------------------------------------------------------------------------- errors


class ErrorDetails(_Answer):
    """Facts about the error; more keys may appear."""

    field: str = optional()
    """The request field at fault, narrowed to an element where it helps
    (`messages[2].content`)."""
    index: Count = optional()
    """The job at fault in a batch."""
    job_id: str = optional()
    status: str = optional()
    """The job's status, when it forbids the change."""
    allowed: list[str] = optional()
    """The methods the path allows (405)."""


class ErrorBody(_Answer):
    model_config = ConfigDict(extra="forbid")

    code: ErrorCode
    message: Annotated[str, Field(min_length=1)]
    """A sentence for people, naming the field at fault."""
    details: ErrorDetails


class Error(_Answer):
    """Every error, whatever its status."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorBody


# ------------------------------------------------------------------------------ jobs


class Submitted(_Answer):
    job_id: str
    status: Literal["submitted"]


class BatchSubmitted(_Answer):
    job_ids: list[str]
    """In the order of the jobs sent."""
    status: Literal["submitted"]
    count: Annotated[int, Field(ge=1)]


class Job(_Answer):
    """One job: its state, its answer or error, Ollama's timings, its metadata."""

    job_id: str
    status: JobStatus
    model: str
    """The model name as sent."""
    kind: JobKind
    priority: Priority
    result: Any
    """The text (generate, chat) or the list of vectors (embed); null until complete."""
    error: str | None
    error_code: str | None
    submitted_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    attempts: Count
    metadata: Any
    load_duration: int | None
    total_duration: int | None
    prompt_eval_count: int | None
    eval_count: int | None
    thinking: str | None = None
    """A thinking model's thinking (generate, chat)."""
    tool_calls: list[dict[str, Any]] | None = None
    """The tools the model called (chat), each `{"function": {"name", "arguments"}}`."""
    done_reason: str | None = None
    """Why the answer ended: `stop`, `length`, ..."""
    message: dict[str, Any] | None = None
    """The assistant message to append to the chat for the next turn (chat)."""
    context: list[int] | None = None
    """The `context` to send with a later generate job to continue (generate)."""
    logprobs: list[Any] | None = None
    """Log probabilities of the output tokens, when asked for."""
    node: str | None = None
    """The Ollama server that ran the job."""
    source: str = "api"
    """The front door that took the job: `api` (this job API), `ollama` or `openai`."""


class JobList(_Answer):
    """A page of jobs, newest first."""

    jobs: list[Job]
    count: Count
    """Jobs in this page."""
    next_cursor: str | None
    """The `cursor` of the next page; null on the last page."""


class Cancelled(_Answer):
    job_id: str
    status: Literal["cancelled"]
    was: JobStatus
    """The status the job had."""


class Retried(_Answer):
    job_id: str
    status: JobStatus


# ---------------------------------------------------------------------------- status


class Backend(_Answer):
    url: str
    up: bool
    error: str | None


class NodeHealth(_Answer):
    name: str
    url: str
    up: bool
    error: str | None = optional()
    """Why its Ollama does not answer (null while it does; "not read yet" before the
    first read)."""


class DatabaseHealth(_Answer):
    kind: Literal["sqlite", "postgresql"]
    up: bool
    """Whether the database answered (SQLite's file is this process's own: always)."""
    error: str | None
    """Why not, without the password; null while it answers."""


class Health(_Answer):
    status: Literal["ok", "degraded"]
    accepting: bool
    """False while shutting down."""
    backend: Backend
    """A summary for older clients: `up` when every node is up; `url` and `error` of
    the first node that is down, else of the first node (with several nodes the error
    names the node). See `nodes` for each one."""
    vram_source: str | None
    """`nvml`, `gpu_endpoint` or `budget`; null before the first reading."""
    nodes: list[NodeHealth] = optional()
    """Every node the manager drives."""
    database: DatabaseHealth = optional()
    """The job store: with DATABASE_URL, whether PostgreSQL answers (a `SELECT 1`)."""
    uptime_seconds: float


class ModelInfo(_Answer):
    name: str
    estimated_vram_bytes: int | None
    estimate_source: str
    learned_vram_bytes: int | None
    learned_ps_vram_bytes: int | None
    learned_load_seconds: float | None
    loads: int
    installed: bool | None
    """Null while Ollama's list of models is unknown."""
    loaded: bool
    state: str
    in_flight: int
    queue_depth: int


class Models(_Answer):
    models: list[ModelInfo]


class QueueStats(_Answer):
    total_jobs: int
    by_status: dict[str, int]
    waiting: int
    by_model: dict[str, Any]
    """`{model: {high, normal, low}}`: waiting jobs per model and priority."""


class Vram(_Answer):
    total: int
    used: int
    free: int


class Gpu(_Answer):
    node: str | None = None
    """The node (Ollama server) this GPU serves."""
    device: str | None = None
    """`<node>:gpu<index>`."""
    index: int
    name: str
    uuid: str
    total: int
    used: int
    free: int
    utilization_pct: int | None
    temperature_c: int | None
    error: str | None


class Resources(_Answer):
    source: str | None
    """`nvml`, `gpu_endpoint` or `budget` (of the first node); null before the first
    reading."""
    vram: Vram
    loaded_models: list[str]
    managed_models: dict[str, Any]
    gpus: list[Gpu]
    backend_up: bool


class Stats(_Answer):
    running: bool
    queue: QueueStats
    resources: Resources
    waiting_for: dict[str, str] = optional()
    """Models that wait to be loaded, each with the reason in words."""
    counters: dict[str, int]
    """`loads`, `unloads`, `evictions`, `ooms`, `retries`, `completed`, `failed`."""
    counters_since: datetime = optional()
    """When the counters started (they live in memory: each start of the service)."""
