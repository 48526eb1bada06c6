"""What the workers tell the scheduler: plain, immutable records of finished work.

Loads, unloads, pulls and jobs run on worker threads; each posts one of these when it
ends. The scheduler thread applies them at the start of its next pass, so it alone owns
the state of runners (the workers never touch it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from .errors import OllamaError
from .models import Job


@dataclass(frozen=True)
class LoadEnded:
    """A load finished. ``error`` is None on success; ``size_bytes`` is what it was found
    to take (learned, else the estimate); ``dropped`` means Ollama no longer listed it
    right after loading it (it evicted it again to fit another model)."""

    runner: str
    backend: str
    seconds: float
    size_bytes: int = 0
    error: OllamaError | None = None
    dropped: bool = False


@dataclass(frozen=True)
class UnloadEnded:
    """An unload finished: ``gone`` once Ollama no longer lists the model; else ``why``."""

    runner: str
    backend: str
    gone: bool
    why: str = ""


@dataclass(frozen=True)
class PullEnded:
    runner: str
    backend: str
    error: OllamaError | None = None


class JobOutcome(enum.StrEnum):
    COMPLETE = "complete"
    RETRY = "retry"  # back in the queue after ``not_before``; the store says so already
    RELEASED = "released"  # never reached Ollama: back in the queue, attempt given back
    FAILED = "failed"
    ABORTED = "aborted"  # cancelled, timed out, or stopped at shutdown
    SUPERSEDED = "superseded"  # a newer attempt owns the job: this result was dropped


@dataclass(frozen=True)
class JobEnded:
    job: Job
    backend: str
    outcome: JobOutcome
    not_before: float = 0.0  # RETRY: when it may run again
    out_of_memory: bool = False
    runner_crashed: bool = False
    backend_lost: bool = False  # the connection to Ollama failed: is the server still there?


@dataclass(frozen=True)
class KeepAliveSet:
    """A client asked that the model ``model`` (an identity, :func:`modelmanager.names.
    model_key`) stay loaded ``seconds`` once idle (0: unload it as soon as nothing else
    needs it; negative: until evicted), as Ollama's ``keep_alive`` with an empty prompt
    asks."""

    model: str
    seconds: float


@dataclass(frozen=True)
class NodeAdded:
    """A backend was registered (its health checked): plan with it from now on."""

    backend: Any  # modelmanager.backend.Backend


@dataclass(frozen=True)
class NodeDraining:
    """Stop feeding backend ``name``; once its jobs are done and its models unloaded it
    is removed."""

    name: str


Event = LoadEnded | UnloadEnded | PullEnded | JobEnded | KeepAliveSet | NodeAdded | NodeDraining
