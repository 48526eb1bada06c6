"""GPU memory accounting: what each simulated GPU holds, as NVML and as Ollama see it.

:class:`GpuMemory` is the base of :class:`~.residency.Residency`: it owns the GPUs
(:class:`~.gpu.Gpu`) and the fake-NVML state file, and computes per-GPU use from the
runners Residency keeps. Methods whose names start with ``_`` must be called with the
simulator's condition variable ``_cv`` held; :meth:`GpuMemory.gpu` takes it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from .catalog import MIB
from .gpu import Gpu
from .nvml import GpuSnapshot, NvmlStateFile, gpu_uuid
from .runners import Runner


class GpuMemory:
    """The simulated GPUs and their memory. Memory is in MiB where a name ends in
    ``_mb``, bytes elsewhere. GPUs are numbered as inside this Ollama (``gpu``
    arguments, as ``CUDA_VISIBLE_DEVICES`` renumbers them); GPU ``i`` is NVML device
    ``nvml_index + i``."""

    # Residency's state, guarded by _cv; declared here for the accounting below.
    _cv: threading.Condition
    _loaded: dict[str, Runner]
    _releasing: list[Runner]
    _peak_mb: int

    def __init__(
        self,
        *,
        gpu_vram_mb: tuple[int, ...],
        nvml_index: int,
        nvml_state: Path | None,
        gpu_name: str,
    ) -> None:
        self.gpu_vram_mb = gpu_vram_mb
        self.vram_mb = sum(gpu_vram_mb)  # all GPUs together
        self.nvml_index = nvml_index
        self.nvml_state = nvml_state
        self.gpu_name = gpu_name
        self._gpus = [Gpu(i, nvml_index + i, mb) for i, mb in enumerate(gpu_vram_mb)]
        self._nvml = (
            NvmlStateFile(nvml_state, gpu_name, nvml_index) if nvml_state is not None else None
        )

    # ----- accounting (lock held) ------------------------------------------------------

    def _on_gpu(self, gpu: int | None = None) -> list[Runner]:
        """Runners whose memory is really on GPU ``gpu`` (None: on any), including those
        releasing it."""
        held = [r for r in list(self._loaded.values()) + self._releasing if r.counted]
        return held if gpu is None else [r for r in held if gpu in r.gpus]

    def _runners_mb(self, gpu: int | None = None) -> int:
        """MiB runners hold on GPU ``gpu`` (None: on all GPUs)."""
        if gpu is None:
            return sum(self._runners_mb(g.index) for g in self._gpus)
        return sum(r.mb_on(gpu) for r in self._on_gpu(gpu))

    def _real_used_mb(self, gpu: int | None = None) -> int:
        """MiB really in use on GPU ``gpu`` (None: on all), possibly above its size."""
        if gpu is None:
            return sum(self._real_used_mb(g.index) for g in self._gpus)
        return self._gpus[gpu].other_mb + self._runners_mb(gpu)

    def _ollama_free(self) -> list[int]:
        """Free bytes per GPU as Ollama's fit check sees them: its runners' memory (loaded
        or still releasing) counts; other programs are invisible."""
        held = list(self._loaded.values()) + self._releasing
        return [g.total_mb * MIB - sum(r.bytes_on(g.index) for r in held) for g in self._gpus]

    def _track_peaks(self) -> None:
        self._peak_mb = max(self._peak_mb, self._real_used_mb())
        for g in self._gpus:
            g.peak_mb = max(g.peak_mb, self._real_used_mb(g.index))

    def _reset_peaks(self) -> None:
        self._peak_mb = self._real_used_mb()
        for g in self._gpus:
            g.peak_mb = self._real_used_mb(g.index)

    def _write_nvml(self) -> None:
        """Bring this simulator's devices in the fake-NVML state file (if any) up to date."""
        if self._nvml is None:
            return
        snaps = []
        for g in self._gpus:
            on_gpu = sorted(self._on_gpu(g.index), key=lambda r: r.seq)
            snaps.append(
                GpuSnapshot(
                    total_mb=g.total_mb,
                    used_mb=min(g.total_mb, self._real_used_mb(g.index)),
                    other_mb=g.other_mb,
                    runner_procs=tuple((r.pid, r.mb_on(g.index)) for r in on_gpu),
                    busy=any(r.generating > 0 for r in on_gpu),
                )
            )
        self._nvml.write(snaps)

    # ----- reports -----------------------------------------------------------------------

    def gpu(self) -> dict[str, Any]:
        """The GPUs as NVML shows them, in MiB: ``total_mb``, ``used_mb``, ``free_mb``,
        ``other_mb`` and ``runners_mb`` summed over all GPUs (with one GPU: that GPU), and
        ``gpus``: each GPU's own figures and runners (see :meth:`_gpu_report`)."""
        with self._cv:
            return self._gpu_totals()

    def _gpu_totals(self) -> dict[str, Any]:
        gpus = [self._gpu_report(g) for g in self._gpus]
        keys = ("total_mb", "used_mb", "free_mb", "other_mb", "runners_mb")
        return {**{k: sum(g[k] for g in gpus) for k in keys}, "gpus": gpus}

    def _gpu_report(self, g: Gpu) -> dict[str, Any]:
        """One GPU: ``index`` (in this Ollama), ``nvml_index``, ``uuid``, sizes in MiB
        (``used_mb`` capped at ``total_mb``), ``peak_mb`` and the runners whose memory is
        on it (``model``, ``pid``, ``state``, ``size_vram`` bytes, ``gpu_mb``)."""
        on_gpu = sorted(self._on_gpu(g.index), key=lambda r: r.seq)
        runners_mb = sum(r.mb_on(g.index) for r in on_gpu)
        used = min(g.total_mb, g.other_mb + runners_mb)
        return {
            "index": g.index,
            "nvml_index": g.nvml_index,
            "uuid": gpu_uuid(g.nvml_index),
            "total_mb": g.total_mb,
            "used_mb": used,
            "free_mb": g.total_mb - used,
            "other_mb": g.other_mb,
            "runners_mb": runners_mb,
            "peak_mb": g.peak_mb,
            "runners": [
                {
                    "model": r.name,
                    "pid": r.pid,
                    "state": r.state,
                    "size_vram": dict(r.parts)[g.index],
                    "gpu_mb": r.mb_on(g.index),
                }
                for r in on_gpu
            ],
        }
