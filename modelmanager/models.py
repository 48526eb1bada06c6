"""Plain data: jobs, their lifecycle, resource snapshots and plans. No I/O here.

Units: memory in **bytes**, times as **seconds** since the epoch (``float``) unless a
name says otherwise (``*_ns`` are Ollama's nanosecond durations).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

MIB = 1024 * 1024
GIB = 1024 * MIB


class JobStatus(enum.StrEnum):
    PENDING = "pending"  # stored, waiting for its model
    QUEUED = "queued"  # planned; its model is loading
    RUNNING = "running"  # request in flight to Ollama
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETE, JobStatus.FAILED, JobStatus.CANCELLED)


# Allowed moves. PENDING -> RUNNING skips QUEUED when the model is already loaded;
# QUEUED/RUNNING -> PENDING is a retry or a restart; FAILED -> PENDING is a manual retry.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset(
        {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.QUEUED: frozenset(
        {JobStatus.RUNNING, JobStatus.PENDING, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.RUNNING: frozenset(
        {JobStatus.COMPLETE, JobStatus.FAILED, JobStatus.PENDING, JobStatus.CANCELLED}
    ),
    JobStatus.COMPLETE: frozenset(),
    JobStatus.FAILED: frozenset({JobStatus.PENDING}),
    JobStatus.CANCELLED: frozenset(),
}


class Priority(enum.StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 is the most urgent."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}


class JobKind(enum.StrEnum):
    GENERATE = "generate"
    CHAT = "chat"
    EMBED = "embed"


@dataclass
class Job:
    """One inference job. ``payload`` holds what goes to Ollama (prompt, messages, ...).

    ``model`` is the name as the client sent it (what it sees back, and what is sent to
    Ollama, which resolves names itself); ``runner`` is the runner key the job is grouped
    and scheduled by (:func:`modelmanager.runners.runner_key`).
    """

    id: str
    model: str
    kind: JobKind
    priority: Priority
    payload: dict[str, Any]
    metadata: Any = None
    status: JobStatus = JobStatus.PENDING
    result: Any = None
    error: str | None = None
    error_code: str | None = None
    submitted_at: float = 0.0
    started_at: float | None = None
    completed_at: float | None = None
    attempts: int = 0
    not_before: float = 0.0  # earliest time a retry may run (backoff)
    timings: dict[str, int] = field(default_factory=dict)  # Ollama's *_duration (ns), counts
    idempotency_key: str | None = None
    seq: int = 0  # store insertion order: FIFO within a priority
    runner: str = ""
    source: str = "api"  # the front door that took it: api (the job API), ollama, openai
    node: str | None = None  # the backend that runs (or ran) its latest attempt


# ------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class GpuDevice:
    """One GPU as NVML reports it. ``error`` is set (and the numbers are 0) when the device
    answered with an error such as "GPU is lost"."""

    index: int
    name: str
    uuid: str = ""
    total_bytes: int = 0
    used_bytes: int = 0
    free_bytes: int = 0
    utilization_pct: int | None = None
    memory_utilization_pct: int | None = None
    temperature_c: int | None = None
    power_mw: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class LoadedModel:
    """A model Ollama reports in ``/api/ps``: ``name`` as Ollama stores it (case kept,
    ``:tag`` added); :func:`modelmanager.names.model_key` of it is its identity."""

    name: str
    size_bytes: int
    vram_bytes: int
    expires_at: str | None = None
    context_length: int | None = None
    digest: str = ""


@dataclass(frozen=True)
class ResourceSnapshot:
    """What the GPU(s) and Ollama look like at one moment.

    ``source`` is ``"nvml"`` when memory came from NVML (includes other programs' use) or
    ``"budget"`` when it is the configured budget minus what ``/api/ps`` reports.
    ``loaded`` is empty and ``backend_up`` False when Ollama could not be reached.
    ``ps_available`` is False for an Ollama without ``/api/ps`` (an older version):
    ``loaded`` is then empty because nothing can be seen, not because nothing is loaded.
    """

    taken_at: float
    source: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    devices: tuple[GpuDevice, ...] = ()
    loaded: tuple[LoadedModel, ...] = ()
    backend_up: bool = True
    backend_error: str | None = None
    ps_available: bool = True
