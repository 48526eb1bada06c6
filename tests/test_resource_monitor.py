"""Resource monitor: the real pynvml binding over ../shared/fake-nvml, plus a subprocess
with no NVML library at all."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pynvml
import pytest
from conftest import ROOT, write_gpu_state

from modelmanager.errors import BackendUnavailable, OllamaError
from modelmanager.models import MIB, GpuDevice, LoadedModel
from modelmanager.resource_monitor import GpuUnavailable, NvmlGpuSource, ResourceMonitor

TWO_GPUS = """\
device_count=2
gpu0.name=NVIDIA GeForce RTX 4090
gpu0.uuid=GPU-aaaa
gpu0.total_mb=24576
gpu0.used_mb=1000
gpu1.name=NVIDIA RTX A4000
gpu1.uuid=GPU-bbbb
gpu1.total_mb=16384
gpu1.used_mb=384
"""


class FakePs:
    """Stands in for the Ollama client's ``ps``: returns ``models`` or raises ``error``."""

    def __init__(self, *models: LoadedModel) -> None:
        self.models = list(models)
        self.error: OllamaError | None = None

    def __call__(self) -> list[LoadedModel]:
        if self.error is not None:
            raise self.error
        return list(self.models)


def model(name: str, vram_mb: int) -> LoadedModel:
    return LoadedModel(name=name, size_bytes=vram_mb * MIB, vram_bytes=vram_mb * MIB)


def nvml_with(**overrides: Any) -> ModuleType:
    """A copy of the real pynvml module with some functions replaced."""
    mod = ModuleType("pynvml_patched")
    mod.__dict__.update({k: v for k, v in vars(pynvml).items() if not k.startswith("__")})
    mod.__dict__.update(overrides)
    return mod


def raises(error: type[pynvml.NVMLError]) -> Callable[..., Any]:
    def fn(*args: Any) -> Any:
        raise error()

    return fn


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Monitors and sources appended here are closed after the test (NVML refcount)."""
    opened: list[Any] = []
    yield opened
    for thing in opened:
        thing.close()


@pytest.fixture
def make_monitor(gpu_state: Path, closing: list[Any]) -> Callable[..., ResourceMonitor]:
    def make(
        ps: FakePs | None = None,
        *,
        nvml: ModuleType | None = None,
        gpu: bool = True,
        budget_mb: int | None = 24576,
        clock: Callable[[], float] = lambda: 1000.0,
    ) -> ResourceMonitor:
        source = NvmlGpuSource(nvml) if gpu else None
        monitor = ResourceMonitor(
            ps or FakePs(),
            gpu=source,
            budget_bytes=None if budget_mb is None else budget_mb * MIB,
            clock=clock,
        )
        closing.append(monitor)
        return monitor

    return make


@pytest.fixture
def monitor_log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Callable[[], list[str]]:
    """The MONITOR component's log messages (INFO and up) recorded during the test."""
    # setup_logging() stops propagation at "modelmanager"; caplog listens at the root.
    monkeypatch.setattr(logging.getLogger("modelmanager"), "propagate", True)
    caplog.set_level(logging.INFO, logger="modelmanager.MONITOR")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "modelmanager.MONITOR"]


# ------------------------------------------------------------------------ NvmlGpuSource


def test_nvml_source_reads_every_field_through_pynvml(gpu_state: Path, closing: list[Any]) -> None:
    write_gpu_state(
        gpu_state,
        "gpu0.name=NVIDIA H100 80GB HBM3\ngpu0.uuid=GPU-1234\ngpu0.total_mb=81559\n"
        "gpu0.used_mb=2048\ngpu0.util=37\ngpu0.mem_util=12\ngpu0.temp=55\ngpu0.power_mw=123456\n",
    )
    source = NvmlGpuSource()
    closing.append(source)

    assert source.devices() == (
        GpuDevice(
            index=0,
            name="NVIDIA H100 80GB HBM3",
            uuid="GPU-1234",
            total_bytes=81559 * MIB,
            used_bytes=2048 * MIB,
            free_bytes=(81559 - 2048) * MIB,
            utilization_pct=37,
            memory_utilization_pct=12,
            temperature_c=55,
            power_mw=123456,
        ),
    )


def test_nvml_source_missing_functions_give_none(gpu_state: Path, closing: list[Any]) -> None:
    nvml = nvml_with(
        nvmlDeviceGetPowerUsage=raises(pynvml.NVMLError_FunctionNotFound),
        nvmlDeviceGetUtilizationRates=raises(pynvml.NVMLError_NotSupported),
        nvmlDeviceGetTemperature=raises(pynvml.NVMLError_FunctionNotFound),
    )
    source = NvmlGpuSource(nvml)
    closing.append(source)

    (device,) = source.devices()

    assert device.error is None
    assert device.free_bytes == 24576 * MIB  # the fake's default idle 24 GiB GPU
    assert (device.utilization_pct, device.memory_utilization_pct) == (None, None)
    assert (device.temperature_c, device.power_mw) == (None, None)


def test_nvml_source_init_failure_raises_gpu_unavailable(gpu_state: Path) -> None:
    write_gpu_state(gpu_state, "init_error=9\n")

    with pytest.raises(GpuUnavailable) as info:
        NvmlGpuSource().devices()

    assert info.value.reason == "Driver Not Loaded"


def test_nvml_source_inits_once_and_close_shuts_down(gpu_state: Path) -> None:
    calls = {"init": 0, "shutdown": 0}

    def init() -> None:
        calls["init"] += 1
        pynvml.nvmlInit()

    def shutdown() -> None:
        calls["shutdown"] += 1
        pynvml.nvmlShutdown()

    source = NvmlGpuSource(nvml_with(nvmlInit=init, nvmlShutdown=shutdown))
    assert calls == {"init": 0, "shutdown": 0}  # lazy: nothing at construction
    for _ in range(3):
        source.devices()
    source.system_info()
    source.close()
    source.close()

    assert calls == {"init": 1, "shutdown": 1}


def test_nvml_source_system_info(gpu_state: Path, closing: list[Any]) -> None:
    write_gpu_state(
        gpu_state, "driver_version=570.1.2\ncuda_driver_version=12080\nnvml_version=12.570.1.2\n"
    )
    source = NvmlGpuSource()
    closing.append(source)

    assert source.system_info() == {
        "driver_version": "570.1.2",
        "cuda_driver_version": 12080,
        "nvml_version": "12.570.1.2",
    }


def test_nvml_source_system_info_none_without_nvml(gpu_state: Path) -> None:
    write_gpu_state(gpu_state, "init_error=9\n")

    assert NvmlGpuSource().system_info() == {
        "driver_version": None,
        "cuda_driver_version": None,
        "nvml_version": None,
    }


# ------------------------------------------------------------------- ResourceMonitor / NVML


def test_snapshot_sums_two_devices(gpu_state: Path, make_monitor: Callable[..., Any]) -> None:
    write_gpu_state(gpu_state, TWO_GPUS)
    ps = FakePs(model("llama3.2:3b", 3000))

    snap = make_monitor(ps, clock=lambda: 1234.5).snapshot()

    assert snap.source == "nvml"
    assert snap.taken_at == 1234.5
    assert [d.uuid for d in snap.devices] == ["GPU-aaaa", "GPU-bbbb"]
    assert snap.total_bytes == (24576 + 16384) * MIB
    assert snap.used_bytes == (1000 + 384) * MIB
    assert snap.free_bytes == (23576 + 16000) * MIB
    assert snap.loaded == (model("llama3.2:3b", 3000),)
    assert (snap.backend_up, snap.backend_error) == (True, None)


def test_snapshot_sees_memory_change(gpu_state: Path, make_monitor: Callable[..., Any]) -> None:
    write_gpu_state(gpu_state, "gpu0.total_mb=24576\ngpu0.used_mb=0\n")
    monitor = make_monitor()
    assert monitor.snapshot().free_bytes == 24576 * MIB

    write_gpu_state(gpu_state, "gpu0.total_mb=24576\ngpu0.used_mb=5000\n")
    snap = monitor.snapshot()

    assert (snap.used_bytes, snap.free_bytes) == (5000 * MIB, 19576 * MIB)


def test_lost_gpu_reported_and_excluded_from_totals(
    gpu_state: Path, make_monitor: Callable[..., Any], monitor_log: Callable[[], list[str]]
) -> None:
    write_gpu_state(gpu_state, TWO_GPUS)
    monitor = make_monitor()
    monitor.snapshot()

    write_gpu_state(gpu_state, TWO_GPUS + "gpu1.error=15\n")
    snaps = [monitor.snapshot() for _ in range(3)]

    lost = snaps[-1].devices[1]
    assert lost == GpuDevice(
        index=1, name="NVIDIA RTX A4000", uuid="GPU-bbbb", error="GPU is lost"
    )  # last known name and uuid, zero memory
    assert snaps[-1].source == "nvml"
    assert snaps[-1].total_bytes == 24576 * MIB
    assert snaps[-1].free_bytes == 23576 * MIB
    assert monitor_log() == ["GPU 1 GPU-bbbb failing: GPU is lost"]

    write_gpu_state(gpu_state, TWO_GPUS)
    for _ in range(2):
        recovered = monitor.snapshot()

    assert recovered.devices[1].error is None
    assert recovered.free_bytes == (23576 + 16000) * MIB
    assert monitor_log() == ["GPU 1 GPU-bbbb failing: GPU is lost", "GPU 1 GPU-bbbb recovered"]


def test_lost_gpu_from_the_start_has_no_name(
    gpu_state: Path, make_monitor: Callable[..., Any]
) -> None:
    write_gpu_state(gpu_state, TWO_GPUS + "gpu1.error=15\n")

    snap = make_monitor().snapshot()

    assert snap.devices[1] == GpuDevice(index=1, name="", uuid="", error="GPU is lost")
    assert snap.total_bytes == 24576 * MIB


def test_all_devices_lost_gives_zero_nvml_totals(
    gpu_state: Path, make_monitor: Callable[..., Any]
) -> None:
    write_gpu_state(gpu_state, TWO_GPUS + "gpu0.error=15\ngpu1.error=15\n")

    snap = make_monitor(budget_mb=8192).snapshot()

    assert snap.source == "nvml"
    assert (snap.total_bytes, snap.used_bytes, snap.free_bytes) == (0, 0, 0)
    assert [d.error for d in snap.devices] == ["GPU is lost", "GPU is lost"]


def test_nvml_stopping_mid_run_reports_no_free_vram_until_it_recovers(
    gpu_state: Path, make_monitor: Callable[..., Any], monitor_log: Callable[[], list[str]]
) -> None:
    monitor = make_monitor()
    assert monitor.snapshot().free_bytes == 24576 * MIB

    write_gpu_state(gpu_state, "device_count=0\n")
    gone = [monitor.snapshot() for _ in range(3)]

    assert all((s.source, s.free_bytes, s.devices) == ("nvml", 0, ()) for s in gone)
    assert monitor_log() == ["NVML stopped answering (NVML reports no GPU); reporting no free VRAM"]

    write_gpu_state(gpu_state, "")
    assert monitor.snapshot().free_bytes == 24576 * MIB
    assert monitor_log()[1:] == ["NVML answers again"]


# --------------------------------------------------------------------- budget fallback


def test_init_error_falls_back_to_budget_logged_once(
    gpu_state: Path, make_monitor: Callable[..., Any], monitor_log: Callable[[], list[str]]
) -> None:
    write_gpu_state(gpu_state, "init_error=9\n")
    ps = FakePs(model("a:1", 4096), model("b:2", 1024))
    monitor = make_monitor(ps, budget_mb=24576)

    snaps = [monitor.snapshot() for _ in range(3)]
    ps.models.append(model("c:3", 20000))
    overfull = monitor.snapshot()

    assert all(s.source == "budget" and s.devices == () for s in snaps)
    assert snaps[0].total_bytes == 24576 * MIB
    assert snaps[0].used_bytes == 5120 * MIB
    assert snaps[0].free_bytes == (24576 - 5120) * MIB
    assert (overfull.used_bytes, overfull.free_bytes) == (25120 * MIB, 0)
    assert monitor_log() == [
        "NVML unavailable (Driver Not Loaded); using VRAM budget 24576 MB minus /api/ps"
    ]


def test_budget_fallback_stays_even_if_nvml_comes_back(
    gpu_state: Path, make_monitor: Callable[..., Any]
) -> None:
    write_gpu_state(gpu_state, "init_error=9\n")
    monitor = make_monitor(budget_mb=1000)
    assert monitor.snapshot().source == "budget"

    write_gpu_state(gpu_state, "")

    assert monitor.snapshot().source == "budget"


def test_no_nvml_and_no_budget_reports_zero_and_says_so_once(
    gpu_state: Path, make_monitor: Callable[..., Any], monitor_log: Callable[[], list[str]]
) -> None:
    write_gpu_state(gpu_state, "init_error=9\n")
    monitor = make_monitor(FakePs(model("a:1", 100)), budget_mb=None)

    snaps = [monitor.snapshot() for _ in range(2)]

    assert [(s.source, s.total_bytes, s.free_bytes) for s in snaps] == [("budget", 0, 0)] * 2
    (message,) = monitor_log()
    assert "Driver Not Loaded" in message
    assert "--vram-budget-mb" in message


def test_no_gpu_source_uses_budget(
    make_monitor: Callable[..., Any], monitor_log: Callable[[], list[str]]
) -> None:
    monitor = make_monitor(FakePs(model("a:1", 2048)), gpu=False, budget_mb=8192)

    snaps = [monitor.snapshot() for _ in range(2)]

    assert [(s.source, s.free_bytes) for s in snaps] == [("budget", 6144 * MIB)] * 2
    assert monitor_log() == [
        "NVML unavailable (no GPU source configured); using VRAM budget 8192 MB minus /api/ps"
    ]


def test_library_not_found_in_process_falls_back(
    gpu_state: Path, make_monitor: Callable[..., Any], monitor_log: Callable[[], list[str]]
) -> None:
    nvml = nvml_with(nvmlInit=raises(pynvml.NVMLError_LibraryNotFound))
    monitor = make_monitor(FakePs(model("a:1", 1000)), nvml=nvml, budget_mb=4000)

    snap = monitor.snapshot()

    assert (snap.source, snap.free_bytes) == ("budget", 3000 * MIB)
    assert monitor_log() == [
        "NVML unavailable (NVML Shared Library Not Found); using VRAM budget 4000 MB minus /api/ps"
    ]


def test_library_not_found_for_real_in_a_clean_process() -> None:
    script = (
        "import ctypes, json\n"
        "from modelmanager.logger import setup_logging\n"
        "from modelmanager.models import MIB, LoadedModel\n"
        "from modelmanager.resource_monitor import NvmlGpuSource, ResourceMonitor\n"
        "try:\n"
        "    ctypes.CDLL('libnvidia-ml.so.1')\n"
        "    present = True\n"
        "except OSError:\n"
        "    present = False\n"
        "setup_logging(None)\n"
        "ps = lambda: [LoadedModel('a:1', 1024 * MIB, 1024 * MIB)]\n"
        "m = ResourceMonitor(ps, gpu=NvmlGpuSource(), budget_bytes=8192 * MIB)\n"
        "s = [m.snapshot() for _ in range(3)][-1]\n"
        "m.close()\n"
        "print(json.dumps({'present': present, 'source': s.source, 'free': s.free_bytes,\n"
        "                  'total': s.total_bytes, 'devices': len(s.devices)}))\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD", "FAKE_NVML_STATE")
    }

    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    if result["present"]:
        pytest.skip("a real libnvidia-ml.so.1 is installed on this machine")
    assert result == {
        "present": False,
        "source": "budget",
        "free": 7168 * MIB,
        "total": 8192 * MIB,
        "devices": 0,
    }
    warnings = [line for line in done.stderr.splitlines() if "NVML unavailable" in line]
    assert len(warnings) == 1
    assert "[MONITOR] NVML unavailable (NVML Shared Library Not Found)" in warnings[0]


# ------------------------------------------------------------------------------ Ollama


def test_ollama_down_gives_backend_down_snapshot(
    gpu_state: Path, make_monitor: Callable[..., Any], monitor_log: Callable[[], list[str]]
) -> None:
    write_gpu_state(gpu_state, "gpu0.total_mb=24576\ngpu0.used_mb=4096\n")
    ps = FakePs(model("a:1", 4000))
    monitor = make_monitor(ps)
    ps.error = BackendUnavailable("connection refused")

    snaps = [monitor.snapshot() for _ in range(2)]

    for snap in snaps:
        assert (snap.backend_up, snap.backend_error, snap.loaded) == (
            False,
            "connection refused",
            (),
        )
        assert (snap.source, snap.free_bytes) == ("nvml", 20480 * MIB)
    ps.error = None
    back = monitor.snapshot()
    assert (back.backend_up, back.loaded) == (True, (model("a:1", 4000),))
    assert monitor_log() == ["Ollama unreachable: connection refused", "Ollama reachable again"]


def test_ollama_down_in_budget_mode(gpu_state: Path, make_monitor: Callable[..., Any]) -> None:
    ps = FakePs(model("a:1", 4000))
    ps.error = BackendUnavailable("connection refused")

    snap = make_monitor(ps, gpu=False, budget_mb=8000).snapshot()

    assert (snap.source, snap.backend_up, snap.loaded) == ("budget", False, ())
    assert (snap.used_bytes, snap.free_bytes) == (0, 8000 * MIB)


# ------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("state", ["", "init_error=9\n"], ids=["nvml", "no-nvml"])
def test_concurrent_snapshots_init_once_and_log_once(
    gpu_state: Path,
    closing: list[Any],
    monitor_log: Callable[[], list[str]],
    state: str,
) -> None:
    write_gpu_state(gpu_state, state)
    inits: list[int] = []

    def init() -> None:
        inits.append(1)
        pynvml.nvmlInit()

    monitor = ResourceMonitor(
        FakePs(), gpu=NvmlGpuSource(nvml_with(nvmlInit=init)), budget_bytes=1000 * MIB
    )
    closing.append(monitor)
    threads = 8
    barrier = threading.Barrier(threads)
    sources: list[str] = []

    def worker() -> None:
        barrier.wait()
        for _ in range(20):
            sources.append(monitor.snapshot().source)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=10)

    assert len(sources) == threads * 20
    assert set(sources) == {"budget" if state else "nvml"}
    assert len(inits) == 1
    assert len(monitor_log()) == (1 if state else 0)
