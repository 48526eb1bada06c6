"""The simulated GPU as NVML shows it: a fake-NVML state file kept in step.

``../shared/fake-nvml`` is a ``libnvidia-ml.so.1`` that reads a small ``key=value`` state
file; programs using NVML through it see the simulator's GPU. Memory is in MiB, as NVML
counts it per process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: The pid NVML lists for the simulated "other program" holding memory.
OTHER_PROGRAM_PID = 31337
GPU_UUID = "GPU-5a1f0c3e-7d2b-4c8e-9f61-0a0b0c0d0e0f"


@dataclass(frozen=True)
class GpuSnapshot:
    """What NVML should report now: sizes in MiB, one ``(pid, MiB)`` per process."""

    total_mb: int
    used_mb: int
    other_mb: int
    runner_procs: tuple[tuple[int, int], ...]
    busy: bool


class NvmlStateFile:
    """Writes :class:`GpuSnapshot`\\ s to a fake-NVML state file, atomically and only when
    the content changes. Not thread-safe: the simulator calls it with its lock held."""

    def __init__(self, path: Path, gpu_name: str) -> None:
        self.path = path
        self.gpu_name = gpu_name
        self.error: str | None = None
        self._last = ""

    def render(self, snap: GpuSnapshot) -> str:
        """The state file's text for ``snap``."""
        procs = [f"{pid}:{mb}" for pid, mb in snap.runner_procs]
        if snap.other_mb:
            procs.insert(0, f"{OTHER_PROGRAM_PID}:{snap.other_mb}")
        loaded = len(snap.runner_procs)
        lines = [
            "# written by the Model Manager Ollama simulator",
            "device_count=1",
            f"gpu0.name={self.gpu_name}",
            f"gpu0.uuid={GPU_UUID}",
            f"gpu0.total_mb={snap.total_mb}",
            f"gpu0.used_mb={snap.used_mb}",
            f"gpu0.util={90 if snap.busy else 0}",
            f"gpu0.mem_util={45 if snap.busy else (2 if loaded else 0)}",
            f"gpu0.temp={72 if snap.busy else 41}",
            f"gpu0.power_mw={285000 if snap.busy else 28000 + 4000 * loaded}",
            f"gpu0.procs={','.join(procs[:32])}",
        ]
        return "\n".join(lines) + "\n"

    def write(self, snap: GpuSnapshot) -> None:
        """Replace the file if its content changed; an error is kept in :attr:`error`."""
        text = self.render(snap)
        if text == self._last:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, self.path)
        except OSError as exc:
            self.error = str(exc)
            return
        self._last = text
