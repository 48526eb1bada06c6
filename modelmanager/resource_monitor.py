"""Snapshots of GPU memory (NVML) and of the models Ollama has loaded. No decisions here.

Memory comes from NVML when it answers: per device, so it includes what other programs
hold. Without NVML (no driver, no GPU) the monitor falls back to the configured VRAM
budget minus what ``/api/ps`` reports, and says so once in the log.

Units: memory in **bytes**, power in **milliwatts**, temperature in degrees Celsius,
times in **seconds** since the epoch.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol

import pynvml

from .errors import EndpointNotAvailable, ModelManagerError, OllamaError
from .logger import get_logger
from .models import MIB, GpuDevice, LoadedModel, ResourceSnapshot

log = get_logger("MONITOR")


class GpuUnavailable(ModelManagerError):
    """NVML cannot be used at all: no library, driver not loaded, no GPU, ...

    ``reason`` is NVML's own sentence (e.g. "NVML Shared Library Not Found").
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"NVML unavailable: {reason}")
        self.reason = reason


class GpuSource(Protocol):
    """Where a monitor reads GPUs from: NVML here, or a Model Manager's GPU endpoint."""

    def devices(self) -> tuple[GpuDevice, ...]: ...

    def close(self) -> None: ...


class NvmlGpuSource:
    """Reads every GPU through NVML (the ``pynvml`` binding of ``nvidia-ml-py``).

    ``nvml`` is a module with pynvml's API (default: ``pynvml`` itself); tests pass a
    wrapped copy to simulate a missing library. NVML is initialised on first use, once,
    and :meth:`close` shuts it down (a later call initialises it again).

    Thread-safe: one lock serialises initialisation, reads and shutdown.
    """

    def __init__(self, nvml: ModuleType | None = None) -> None:
        self._nvml: Any = nvml if nvml is not None else pynvml
        self._lock = threading.Lock()
        self._initialised = False
        self._names: dict[int, tuple[str, str]] = {}  # index -> (name, uuid); never change

    def devices(self) -> tuple[GpuDevice, ...]:
        """Every device, in NVML index order, with memory in bytes.

        A device whose calls fail (e.g. "GPU is lost") comes back with ``error`` set to
        NVML's error string, zero memory, and its last known name and uuid: it is
        reported, never raised. Telemetry NVML cannot give for a device (function
        missing in an older driver, not supported, ...) is ``None``.

        Raises :class:`GpuUnavailable` when NVML cannot be initialised, the device count
        cannot be read, or there is no device.
        """
        nv = self._nvml
        with self._lock:
            self._init_locked()
            try:
                count = nv.nvmlDeviceGetCount()
            except nv.NVMLError as e:
                raise GpuUnavailable(str(e)) from e
            if count == 0:
                raise GpuUnavailable("NVML reports no GPU")
            return tuple(self._read_locked(i) for i in range(count))

    def system_info(self) -> dict[str, str | int | None]:
        """``driver_version`` (str), ``cuda_driver_version`` (int, 13000 means 13.0) and
        ``nvml_version`` (str); each ``None`` where NVML cannot tell. Never raises."""
        nv = self._nvml
        info: dict[str, str | int | None] = dict.fromkeys(
            ("driver_version", "cuda_driver_version", "nvml_version")
        )
        with self._lock:
            try:
                self._init_locked()
            except GpuUnavailable:
                return info
            info["driver_version"] = _optional(nv, nv.nvmlSystemGetDriverVersion)
            info["cuda_driver_version"] = _optional(nv, nv.nvmlSystemGetCudaDriverVersion)
            info["nvml_version"] = _optional(nv, nv.nvmlSystemGetNVMLVersion)
        return info

    def close(self) -> None:
        """Shut NVML down if this source initialised it. Idempotent; never raises."""
        nv = self._nvml
        with self._lock:
            if not self._initialised:
                return
            self._initialised = False
            try:
                nv.nvmlShutdown()
            except nv.NVMLError as e:
                log.warning("nvmlShutdown failed: %s", e)

    def _init_locked(self) -> None:
        if self._initialised:
            return
        nv = self._nvml
        try:
            nv.nvmlInit()
        except nv.NVMLError as e:
            raise GpuUnavailable(str(e)) from e
        self._initialised = True

    def _read_locked(self, index: int) -> GpuDevice:
        nv = self._nvml
        name, uuid = self._names.get(index, ("", ""))
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            if index not in self._names:
                name, uuid = nv.nvmlDeviceGetName(handle), nv.nvmlDeviceGetUUID(handle)
                self._names[index] = (name, uuid)
            mem = nv.nvmlDeviceGetMemoryInfo(handle)
        except nv.NVMLError as e:
            return GpuDevice(index=index, name=name, uuid=uuid, error=str(e))
        util = _optional(nv, nv.nvmlDeviceGetUtilizationRates, handle)
        return GpuDevice(
            index=index,
            name=name,
            uuid=uuid,
            total_bytes=int(mem.total),
            used_bytes=int(mem.used),
            free_bytes=int(mem.free),
            utilization_pct=None if util is None else int(util.gpu),
            memory_utilization_pct=None if util is None else int(util.memory),
            temperature_c=_optional(
                nv, nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU
            ),
            power_mw=_optional(nv, nv.nvmlDeviceGetPowerUsage, handle),
        )


def _optional(nv: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or ``None`` on any NVML error: optional telemetry must never turn a
    readable device into a failed one (FunctionNotFound, NotSupported, ...)."""
    try:
        return fn(*args)
    except nv.NVMLError:
        return None


class ResourceMonitor:
    """Takes :class:`ResourceSnapshot` s: GPU memory plus the models Ollama has loaded.

    ``ps`` lists what Ollama has loaded (the Ollama client's ``ps``); an
    :class:`OllamaError` from it gives a snapshot with ``backend_up=False``, never an
    exception. ``gpu`` is the NVML source or ``None`` for no GPU; ``budget_bytes`` the
    configured VRAM budget used when NVML is unavailable.

    Memory rules:

    * NVML works: ``source="nvml"``; totals sum the devices without an error;
      ``devices`` lists all of them, failed ones included. If every device fails, or
      NVML stops answering after it has worked, totals are 0 (the planner loads nothing)
      until it recovers; each change is logged once.
    * No NVML (``gpu`` is ``None`` or its first read raises :class:`GpuUnavailable`):
      ``source="budget"`` for the rest of the monitor's life; total = ``budget_bytes``,
      used = sum of ``vram_bytes`` in ``/api/ps`` (0 while Ollama is down), free =
      max(0, total - used), ``devices=()``. Without a budget, total and free are 0.
      Logged once with the reason.

    An Ollama without ``/api/ps`` (an older version; it answers Go's plain-text 404)
    gives snapshots with ``ps_available=False`` and nothing in ``loaded``; from then on
    ``alive`` (``/api/version``) tells whether the server is up, and ``features`` (if
    given) logs the skip once.

    Thread-safe: :meth:`snapshot` may run from several threads at once. ``ps`` is called
    outside the lock (it is an HTTP request); the GPU read (microseconds) is inside it.
    """

    def __init__(
        self,
        ps: Callable[[], list[LoadedModel]],
        *,
        gpu: GpuSource | None,
        budget_bytes: int | None,
        clock: Callable[[], float] = time.time,
        indices: tuple[int, ...] | None = None,
        node: str | None = None,
        remote: bool = False,
        alive: Callable[[], object] | None = None,
        features: Any = None,
    ) -> None:
        self._ps = ps
        self._alive = alive
        self._features = features  # modelmanager.features.Features, or None
        self._no_ps = False  # the server has no /api/ps
        self._gpu = gpu
        self._indices = indices
        self._node = node
        self._remote = remote
        self._budget_bytes = budget_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._nvml_seen = False  # NVML has answered at least once
        self._nvml_down: str | None = None  # why NVML stopped answering, after it worked
        self._device_errors: dict[int, str] = {}  # index -> error of failing devices
        self._backend_error: str | None = None
        if gpu is None:
            self._fall_back_locked("no GPU source configured")

    def snapshot(self) -> ResourceSnapshot:
        """What the GPU(s) and Ollama look like now (see the class docstring)."""
        taken_at = self._clock()
        loaded: tuple[LoadedModel, ...] = ()
        backend_error: str | None = None
        try:
            if self._no_ps:
                self._check_alive()
            else:
                loaded = tuple(self._ps())
        except EndpointNotAvailable:
            self._lacks_ps()  # it answered: it is up, only older
        except OllamaError as e:
            backend_error = str(e)
        with self._lock:
            self._note_backend_locked(backend_error)
            devices = self._read_gpu_locked()
        common: dict[str, Any] = {
            "taken_at": taken_at,
            "loaded": loaded,
            "backend_up": backend_error is None,
            "backend_error": backend_error,
            "ps_available": not self._no_ps,
        }
        if devices is None:
            total = self._budget_bytes or 0
            used = sum(m.vram_bytes for m in loaded)
            return ResourceSnapshot(
                source="budget",
                total_bytes=total,
                used_bytes=used,
                free_bytes=max(0, total - used),
                **common,
            )
        good = [d for d in devices if d.error is None]
        return ResourceSnapshot(
            source="gpu_endpoint" if self._remote else "nvml",
            total_bytes=sum(d.total_bytes for d in good),
            used_bytes=sum(d.used_bytes for d in good),
            free_bytes=sum(d.free_bytes for d in good),
            devices=devices,
            **common,
        )

    def _check_alive(self) -> None:
        if self._alive is None:
            return
        with contextlib.suppress(EndpointNotAvailable):  # no /api/version: an answer too
            self._alive()

    def _lacks_ps(self) -> None:
        if self._no_ps:
            return
        self._no_ps = True
        if self._features is not None:
            from .features import Feature

            self._features.lacks(Feature.PS)
        else:
            log.info(
                "Skipping /api/ps for node %s as endpoints are not available", self._node or "?"
            )

    def close(self) -> None:
        """Shut NVML down. Idempotent; a later :meth:`snapshot` initialises it again."""
        with self._lock:
            if self._gpu is not None:
                self._gpu.close()

    def _read_gpu_locked(self) -> tuple[GpuDevice, ...] | None:
        """The devices, or ``None`` in budget mode."""
        gpu = self._gpu
        if gpu is None:
            return None
        try:
            devices = gpu.devices()
            if self._indices is not None:
                devices = tuple(d for d in devices if d.index in self._indices)
                if not devices:
                    missing = "+".join(str(i) for i in self._indices)
                    raise GpuUnavailable(f"this host has no GPU {missing}")
        except GpuUnavailable as e:
            if not self._nvml_seen:
                if not self._remote:  # a remote source is not ours to shut down
                    gpu.close()
                self._fall_back_locked(e.reason)
                return None
            if self._nvml_down is None:
                log.warning(
                    "%s stopped answering (%s); reporting no free VRAM", self._what(), e.reason
                )
            self._nvml_down = e.reason
            return ()
        if self._nvml_down is not None:
            log.info("%s answers again", self._what())
            self._nvml_down = None
        self._nvml_seen = True
        self._note_devices_locked(devices)
        return devices

    def _what(self) -> str:
        where = f" of node {self._node}" if self._node else ""
        return f"the GPU endpoint{where}" if self._remote else f"NVML{where}"

    def _fall_back_locked(self, reason: str) -> None:
        self._gpu = None
        budget = (
            f"using VRAM budget {self._budget_bytes // MIB} MB minus /api/ps"
            if self._budget_bytes is not None
            else "no VRAM budget set: reporting 0 bytes free; set VRAM_BUDGET_MB (--vram-budget-mb)"
        )
        if self._remote:
            log.warning(
                "Skipping GPU monitoring for node %s as endpoints are not available (%s); %s",
                self._node,
                reason,
                budget,
            )
        elif self._budget_bytes is None:
            log.warning("NVML unavailable (%s) and %s", reason, budget)
        else:
            log.warning("NVML unavailable (%s); %s", reason, budget)

    def _note_devices_locked(self, devices: tuple[GpuDevice, ...]) -> None:
        for d in devices:
            before = self._device_errors.get(d.index)
            if d.error is not None and d.error != before:
                log.warning("GPU %d %s failing: %s", d.index, d.uuid, d.error)
                self._device_errors[d.index] = d.error
            elif d.error is None and before is not None:
                log.info("GPU %d %s recovered", d.index, d.uuid)
                del self._device_errors[d.index]

    def _note_backend_locked(self, error: str | None) -> None:
        if error is not None and self._backend_error is None:
            log.warning("Ollama unreachable: %s", error)
        elif error is None and self._backend_error is not None:
            log.info("Ollama reachable again")
        self._backend_error = error
