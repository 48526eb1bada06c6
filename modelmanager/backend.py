"""A backend: one Ollama server, the client that talks to it, where its memory figures
come from (NVML for GPUs on this host, else a budget minus its ``/api/ps``) and what
its Ollama supports (:mod:`modelmanager.features`).

The scheduler reads a backend's :meth:`Backend.snapshot` and sends loads, unloads and jobs
through its :attr:`Backend.client`. Thread-safe as its parts are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .features import Features
from .models import ResourceSnapshot
from .ollama_client import OllamaClient
from .resource_monitor import ResourceMonitor


@dataclass
class Backend:
    """One Ollama server. ``name`` is how plans, logs and job records refer to it."""

    name: str
    url: str
    client: OllamaClient
    monitor: ResourceMonitor
    max_loaded: int = 3  # Ollama's OLLAMA_MAX_LOADED_MODELS
    num_parallel: int = 1  # Ollama's OLLAMA_NUM_PARALLEL
    features: Features = field(default=None)  # type: ignore[assignment]  # set below

    def __post_init__(self) -> None:
        if self.features is None:
            self.features = Features(self.client, self.name)

    def snapshot(self) -> ResourceSnapshot:
        """Memory and loaded models now (one ``/api/ps`` request and an NVML read)."""
        return self.monitor.snapshot()

    def close(self) -> None:
        self.monitor.close()
        self.client.close()
