"""This host's GPUs over HTTP, and reading another host's from its Model Manager.

``GET /api/v1/gpu/devices`` and ``GET /api/v1/gpu/driver`` answer from NVML on this host
(through ``nvidia-ml-py``; an empty device list with no GPU or no NVML). A Model Manager
on each GPU host can so be the memory source of a manager that schedules across hosts:
:class:`RemoteGpuSource` reads those endpoints and gives the
:class:`~modelmanager.resource_monitor.ResourceMonitor` the same devices NVML would.

Memory is in MB (MiB, as NVML counts) on the wire, in bytes in :class:`GpuDevice`.
"""

from __future__ import annotations

from typing import Any

import requests

from .models import MIB, GpuDevice
from .ollama_client import connection_failure
from .resource_monitor import GpuUnavailable, NvmlGpuSource

TIMEOUT = (2.0, 5.0)  # seconds to connect, to read


def device_json(d: GpuDevice) -> dict[str, Any]:
    """One device as ``/api/v1/gpu/devices`` shows it."""
    ok = d.error is None
    return {
        "index": d.index,
        "name": d.name,
        "uuid": d.uuid,
        "total_mb": d.total_bytes // MIB if ok else None,
        "free_mb": d.free_bytes // MIB if ok else None,
        "used_mb": d.used_bytes // MIB if ok else None,
        "utilization_pct": d.utilization_pct,
        "temperature_c": d.temperature_c,
        "available": ok,
        "error": d.error,
    }


def local_devices(gpu: NvmlGpuSource | None) -> list[dict[str, Any]]:
    """This host's devices as JSON; ``[]`` without NVML or a GPU."""
    if gpu is None:
        return []
    try:
        return [device_json(d) for d in gpu.devices()]
    except GpuUnavailable:
        return []


def local_driver(gpu: NvmlGpuSource | None) -> dict[str, Any]:
    """Driver, CUDA driver and NVML versions (each null where NVML cannot tell)."""
    empty: dict[str, Any] = {"driver_version": None, "cuda_driver_version": None}
    empty["nvml_version"] = None
    return dict(gpu.system_info()) if gpu is not None else empty


class RemoteGpuSource:
    """The GPUs of another host, from the Model Manager at ``url`` (its
    ``/api/v1/gpu/devices``). Raises :class:`GpuUnavailable` when the endpoint does not
    answer or does not exist (an older manager, or none), so the monitor falls back to a
    budget. Thread-safe (one pooled session)."""

    def __init__(self, url: str, api_key: str = "") -> None:
        self.url = url.rstrip("/") + "/api/v1/gpu/devices"
        self._session = requests.Session()
        self._session.trust_env = False
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"

    def devices(self) -> tuple[GpuDevice, ...]:
        try:
            resp = self._session.get(self.url, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise GpuUnavailable(f"cannot reach {self.url}: {connection_failure(exc)}") from None
        if resp.status_code != 200:
            raise GpuUnavailable(f"{self.url} answered {resp.status_code}")
        try:
            listed = resp.json()["devices"]
            devices = tuple(_device(d) for d in listed)
        except (ValueError, KeyError, TypeError) as exc:
            raise GpuUnavailable(f"{self.url} answered something else ({exc})") from None
        if not devices:
            raise GpuUnavailable(f"{self.url} reports no GPU")
        return devices

    def close(self) -> None:
        self._session.close()


def _device(d: dict[str, Any]) -> GpuDevice:
    def mb(key: str) -> int:
        value = d.get(key)
        return int(value) * MIB if isinstance(value, int | float) else 0

    return GpuDevice(
        index=int(d["index"]),
        name=str(d.get("name") or ""),
        uuid=str(d.get("uuid") or ""),
        total_bytes=mb("total_mb"),
        used_bytes=mb("used_mb"),
        free_bytes=mb("free_mb"),
        utilization_pct=d.get("utilization_pct"),
        temperature_c=d.get("temperature_c"),
        error=None if d.get("available", True) else str(d.get("error") or "not available"),
    )
