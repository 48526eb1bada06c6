"""What ``GET /api/dashboard`` answers, as pydantic models (for the OpenAPI document).

They describe; ``modelmanager.dashboard`` builds the answer as plain dicts, and the fuzz
tests check it against these schemas. Memory in bytes; times in seconds since the epoch
(the page shows them relative to ``now``). More keys may appear.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from ..models import JobKind, JobStatus, Priority
from .fields import optional

Count = Annotated[int, Field(ge=0)]


class _Answer(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)


class DashboardSegment(_Answer):
    model: str
    bytes: Count
    """What Ollama's `/api/ps` says the model holds."""
    managed: bool
    """False for a model loaded outside the manager."""


class DashboardGpu(_Answer):
    id: str
    """`<node>:gpu<index>`, or `<node>:budget` when memory comes from `VRAM_BUDGET_MB`."""
    index: int = optional()
    name: str
    total: Count
    used: Count
    free: Count
    utilization_pct: int | None = optional()
    temperature_c: int | None = optional()
    error: str | None = optional()
    segments: list[DashboardSegment]
    """The models on this GPU; empty on a node with several GPUs (Ollama does not say
    how it splits a model between them)."""
    other: Count
    """Memory in use that no segment accounts for: other programs, runtime overhead."""


class DashboardNode(_Answer):
    name: str
    url: str
    up: bool
    error: str | None
    source: str = optional()
    """`nvml` or `budget`."""
    taken_at: float = optional()
    gpus: list[DashboardGpu]


class DashboardJobInFlight(_Answer):
    job_id: str
    priority: Priority
    started_at: float | None


class DashboardModel(_Answer):
    model: str
    node: str
    state: str
    """`loading`, `ready` or `unloading`."""
    managed: bool
    ollama_vram_bytes: int | None
    """By `/api/ps`; null while it does not list the model."""
    planned_vram_bytes: int | None
    """What the scheduler plans with (measured once loaded); null if not managed."""
    in_flight: Count
    jobs: list[DashboardJobInFlight]


class DashboardQueue(_Answer):
    model: str
    high: Count
    normal: Count
    low: Count
    waiting_for: str | None
    """Why the model's jobs wait (`memory`, `model_cap`, `load_slot`, ...), if they do."""


class DashboardEvent(_Answer):
    at: float
    kind: str
    """`load` or `unload`."""
    model: str
    what: str
    """`start`, `loaded`, `failed`; `idle`, `room`, `outranked`, `runner_options`, `pinned`,
    `unloaded`."""
    detail: str


class DashboardJob(_Answer):
    job_id: str
    model: str
    kind: JobKind
    priority: Priority
    status: JobStatus
    submitted_at: float
    started_at: float | None
    completed_at: float | None
    attempts: Count
    error_code: str | None
    error: str | None


class DashboardJobs(_Answer):
    by_status: dict[str, Count]
    recent: list[DashboardJob]
    failures: list[DashboardJob]


class DashboardWaiters(_Answer):
    waiting: Count
    """Requests waiting now in `GET /api/job/<id>?wait=S`."""
    limit: Count
    """`MAX_WAITERS`."""


class Dashboard(_Answer):
    """The live dashboard's data, built from the scheduler's published snapshot."""

    now: float
    taken_at: float
    """When the scheduler published what this shows."""
    accepting: bool
    nodes: list[DashboardNode]
    models: list[DashboardModel]
    queue: list[DashboardQueue]
    events: list[DashboardEvent]
    """The last loads, unloads and evictions, newest first."""
    jobs: DashboardJobs
    counters: dict[str, Count]
    counters_since: float
    waiters: DashboardWaiters
