"""The Ollama simulator with several GPUs (OLLAMA_FACTS §2.9), and several simulators on
one host sharing one fake-NVML state file (one Ollama per GPU, pinned with
``CUDA_VISIBLE_DEVICES``; NVML still shows every GPU).

NVML is read through the real ``pynvml`` binding over ``../shared/fake-nvml``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from modelmanager.simulator import CATALOG, CUDA_CONTEXT_BYTES, ERR_LOAD_OOM, MIB, FakeOllama
from modelmanager.simulator.cli import _parse_args
from modelmanager.simulator.gpu import place, spill, split
from modelmanager.simulator.nvml import gpu_uuid, merge
from tests.conftest import ROOT, wait_until, write_gpu_state

TIMEOUT = 10.0
CTX = CUDA_CONTEXT_BYTES
BIG_CTX = 32768  # llama3.1:8b at this context: 9,079 MiB, more than one 8 GiB GPU holds


def post(sim: FakeOllama | str, path: str, body: dict[str, Any]) -> requests.Response:
    url = sim if isinstance(sim, str) else sim.url
    return requests.post(url + path, json=body, timeout=TIMEOUT)


def load(sim: FakeOllama | str, model: str, **options: Any) -> requests.Response:
    body = {"model": model, "keep_alive": "1h", "options": options}
    if CATALOG[model].is_embedding:
        return post(sim, "/api/embed", {**body, "input": []})
    return post(sim, "/api/generate", body)


def generate(sim: FakeOllama, model: str) -> requests.Response:
    return post(sim, "/api/generate", {"model": model, "prompt": "hi", "stream": False})


def ps(sim: FakeOllama) -> dict[str, dict[str, Any]]:
    models = requests.get(sim.url + "/api/ps", timeout=TIMEOUT).json()["models"]
    return {m["name"]: m for m in models}


def placement(sim: FakeOllama) -> dict[str, list[int]]:
    """Model -> the GPUs its runner uses, from /_sim/stats."""
    stats = requests.get(sim.url + "/_sim/stats", timeout=TIMEOUT).json()
    return {r["model"]: [g["index"] for g in r["gpus"]] for r in stats["runners"]}


def mb(model: str, vram: int | None = None) -> int:
    """MiB a runner holds on one GPU: its VRAM there plus a CUDA context, rounded up."""
    size = CATALOG[model].vram_bytes if vram is None else vram
    return -(-(size + CTX) // MIB)


def nvml() -> list[dict[str, Any]]:
    """Every device as the real pynvml binding reads it from the fake NVML library."""
    import pynvml

    pynvml.nvmlInit()
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            devices.append(
                {
                    "uuid": pynvml.nvmlDeviceGetUUID(handle),
                    "total_mb": int(memory.total) // MIB,
                    "used_mb": int(memory.used) // MIB,
                    "procs": sorted((int(p.pid), int(p.usedGpuMemory) // MIB) for p in procs),
                }
            )
        return devices
    finally:
        pynvml.nvmlShutdown()


# ----- placement (pure) ----------------------------------------------------------------

GIB = 1024 * MIB


@pytest.mark.parametrize(
    ("vram", "free", "expected"),
    [
        (1 * GIB, [8 * GIB, 6 * GIB], ((0, 1 * GIB),)),  # most free memory wins
        (1 * GIB, [4 * GIB, 6 * GIB], ((1, 1 * GIB),)),
        (1 * GIB, [6 * GIB, 6 * GIB], ((0, 1 * GIB),)),  # a tie: the lower index
        (6 * GIB - CTX, [6 * GIB, 2 * GIB], ((0, 6 * GIB - CTX),)),  # exactly fits
        (8 * GIB, [6 * GIB, 6 * GIB], ((0, 4 * GIB), (1, 4 * GIB))),  # spread evenly
        # in proportion to the room beyond a context; the rounding's byte to the roomiest
        (
            8 * GIB,
            [4 * GIB + CTX, 6 * GIB + CTX],
            ((0, 8 * GIB * 2 // 5), (1, 8 * GIB * 3 // 5 + 1)),
        ),
        (12 * GIB, [6 * GIB, 6 * GIB], None),  # with a context on each GPU it does not fit
        (1 * GIB, [1 * GIB, 1 * GIB], ((0, 512 * MIB), (1, 512 * MIB))),
        (0, [CTX, 0], ()),  # num_gpu 0: no VRAM, a context's room somewhere
        (0, [CTX - 1], None),
        (2 * GIB, [2 * GIB, CTX], None),  # a GPU with no room beyond a context: no spread
    ],
)
def test_place_follows_pick_best_full_fit(
    vram: int, free: list[int], expected: tuple[tuple[int, int], ...] | None
) -> None:
    parts = place(vram, free, CTX)
    assert parts == expected
    if parts:
        assert sum(part for _, part in parts) == vram
        assert all(part + CTX <= free[i] for i, part in parts)


def test_split_never_overfills_and_spill_fills_to_95_percent() -> None:
    assert split(10, {0: 3, 1: 3, 2: 4}) == ((0, 3), (1, 3), (2, 4))
    assert split(7, {0: 1, 1: 100}) == ((1, 7),)  # the small share rounds to nothing
    assert spill(100 * GIB, [24 * GIB], CTX) == ((0, 24 * GIB * 19 // 20 - CTX),)
    parts = spill(100 * GIB, [8 * GIB, 4 * GIB], CTX)
    assert parts == ((0, 8 * GIB * 19 // 20 - CTX), (1, 4 * GIB * 19 // 20 - CTX))


# ----- one Ollama, two GPUs ------------------------------------------------------------


def test_gpus_a_runner_that_fits_one_gpu_goes_to_the_one_with_most_free_memory(
    make_sim: Callable[..., FakeOllama], gpu_state: Path
) -> None:
    sim = make_sim(vram_mb=[8192, 6144], nvml_state=gpu_state)
    assert load(sim, "phi3:mini").ok  # 8192 vs 6144 free
    assert load(sim, "gemma:2b").ok  # 8192 - 3913 = 4279 vs 6144
    assert load(sim, "qwen2.5:0.5b").ok  # 4279 vs 6144 - 2396 = 3748
    assert placement(sim) == {"phi3:mini": [0], "gemma:2b": [1], "qwen2.5:0.5b": [0]}
    for name, entry in ps(sim).items():
        assert entry["size"] == entry["size_vram"] == CATALOG[name].vram_bytes

    gpu = requests.get(sim.url + "/_sim/gpu", timeout=TIMEOUT).json()
    used0, used1 = mb("phi3:mini") + mb("qwen2.5:0.5b"), mb("gemma:2b")
    assert [(g["index"], g["total_mb"], g["used_mb"]) for g in gpu["gpus"]] == [
        (0, 8192, used0),
        (1, 6144, used1),
    ]
    assert [r["model"] for r in gpu["gpus"][0]["runners"]] == ["phi3:mini", "qwen2.5:0.5b"]
    assert (gpu["total_mb"], gpu["used_mb"]) == (8192 + 6144, used0 + used1)
    assert (gpu["free_mb"], gpu["runners_mb"]) == (8192 + 6144 - used0 - used1, used0 + used1)

    dev0, dev1 = nvml()
    assert (dev0["uuid"], dev1["uuid"]) == (gpu_uuid(0), gpu_uuid(1)) != (gpu_uuid(0),) * 2
    assert (dev0["total_mb"], dev0["used_mb"], dev1["total_mb"], dev1["used_mb"]) == (
        8192,
        used0,
        6144,
        used1,
    )
    assert sorted(m for _, m in dev0["procs"]) == sorted([mb("phi3:mini"), mb("qwen2.5:0.5b")])
    assert [m for _, m in dev1["procs"]] == [mb("gemma:2b")]
    stats = sim.stats()
    assert (stats["used_vram_mb"], stats["peak_vram_mb"]) == (used0 + used1,) * 2
    assert [g["peak_mb"] for g in stats["gpus"]] == [used0, used1]


def test_gpus_a_runner_bigger_than_any_gpu_spreads_over_both(
    make_sim: Callable[..., FakeOllama], gpu_state: Path
) -> None:
    sim = make_sim(vram_mb=[8192, 6144], nvml_state=gpu_state)
    assert load(sim, "llama3.1:8b", num_ctx=BIG_CTX).ok
    full = CATALOG["llama3.1:8b"].vram_for(BIG_CTX, 1)
    assert mb("llama3.1:8b", full) > 8192
    entry = ps(sim)["llama3.1:8b"]
    assert entry["size"] == entry["size_vram"] == full  # all on the GPUs, summed over both
    (runner,) = sim.stats()["runners"]
    part0, part1 = (g["size_vram"] for g in runner["gpus"])
    assert part0 + part1 == full
    # layers split in proportion to each GPU's free memory beyond its CUDA context
    assert part0 / part1 == pytest.approx((8192 * MIB - CTX) / (6144 * MIB - CTX), rel=1e-6)
    assert runner["gpu_mb"] == mb("llama3.1:8b", part0) + mb("llama3.1:8b", part1)

    dev0, dev1 = nvml()
    pid = runner["pid"]
    assert dev0["procs"] == [(pid, mb("llama3.1:8b", part0))] == [(pid, dev0["used_mb"])]
    assert dev1["procs"] == [(pid, mb("llama3.1:8b", part1))] == [(pid, dev1["used_mb"])]

    # a spread runner dies when either of its GPUs overflows
    sim.set_other_program_mb(6144 - dev1["used_mb"] + 1, gpu=1)
    assert ps(sim) == {} and sim.stats()["crashes"] == 1
    assert sim.gpu()["gpus"][0]["used_mb"] == 0


def test_gpus_another_program_on_gpu1_makes_loads_there_oom_while_gpu0_works(
    make_sim: Callable[..., FakeOllama],
) -> None:
    sim = make_sim(vram_mb=[8192, 6144])
    sim.set_other_program_mb(5000, gpu=1)  # invisible to Ollama: 1144 MiB really free
    assert load(sim, "llava:7b").ok  # 7146 MiB: only GPU 0 holds it
    resp = load(sim, "gemma:2b")  # Ollama picks GPU 1 (6144 "free"): CUDA OOM
    assert (resp.status_code, resp.json()) == (500, {"error": ERR_LOAD_OOM})
    assert sim.stats()["ooms"] == 1 and list(ps(sim)) == ["llava:7b"]
    assert generate(sim, "llava:7b").status_code == 200  # GPU 0 still works
    assert load(sim, "all-minilm:latest").ok  # small enough for what GPU 1 really has
    assert placement(sim) == {"llava:7b": [0], "all-minilm:latest": [1]}
    assert sim.gpu()["gpus"][1]["used_mb"] == 5000 + mb("all-minilm:latest")


def test_gpus_crashes_hit_only_runners_on_the_gpu_that_overflowed(
    make_sim: Callable[..., FakeOllama],
) -> None:
    sim = make_sim(vram_mb=[8192, 6144])
    for model in ("phi3:mini", "gemma:2b", "qwen2.5:0.5b"):
        assert load(sim, model).ok
    assert placement(sim) == {"phi3:mini": [0], "gemma:2b": [1], "qwen2.5:0.5b": [0]}
    sim.set_other_program_mb(6144 - mb("gemma:2b") + 1, gpu=1)
    assert sorted(ps(sim)) == ["phi3:mini", "qwen2.5:0.5b"]
    stats = sim.stats()
    assert stats["crashes"] == 1 and stats["unload_events"][-1]["model"] == "gemma:2b"
    assert generate(sim, "phi3:mini").status_code == 200
    sim.set_other_program_mb(8192)  # None: GPU 0, as with one GPU
    assert ps(sim) == {} and sim.stats()["crashes"] == 3


def test_gpus_controls_validation_and_defaults(make_sim: Callable[..., FakeOllama]) -> None:
    sim = make_sim(gpus=2, vram_mb=4096)
    assert (sim.gpu_vram_mb, sim.vram_mb, sim.max_loaded_models) == ((4096, 4096), 8192, 6)
    gpu = post(sim, "/_sim/gpu", {"other_mb": 500, "gpu": 1}).json()
    assert [g["other_mb"] for g in gpu["gpus"]] == [0, 500] and gpu["other_mb"] == 500
    assert post(sim, "/_sim/gpu", {"other_mb": 700}).json()["gpus"][0]["other_mb"] == 700
    for body in ({"other_mb": 1, "gpu": 2}, {"other_mb": 1, "gpu": "1"}):
        assert post(sim, "/_sim/gpu", body).status_code == 400
    sim.reset(everything=True)
    assert sim.stats()["other_mb"] == 0

    one = make_sim().gpu()  # one GPU: the top level is that GPU
    assert len(one["gpus"]) == 1 and one["gpus"][0]["total_mb"] == one["total_mb"] == 24576
    for kwargs in (
        {"gpus": 3, "vram_mb": [8192, 4096]},
        {"vram_mb": [8192, 0]},
        {"vram_mb": []},
        {"gpus": 0},
        {"gpus": 2, "nvml_index": 15},
        {"nvml_index": -1},
    ):
        with pytest.raises(ValueError):
            FakeOllama(**kwargs)
    args = _parse_args(["--vram-mb", "8192,4096", "--nvml-index", "2"])
    assert (args.vram_mb, args.gpus, args.nvml_index) == ([8192, 4096], None, 2)
    assert _parse_args(["--gpus", "2", "--vram-mb", "8192"]).vram_mb == 8192


# ----- several simulators, one NVML ----------------------------------------------------


def test_shared_nvml_two_simulators_in_one_process(
    make_sim: Callable[..., FakeOllama], gpu_state: Path
) -> None:
    first = make_sim(vram_mb=8192, nvml_state=gpu_state)
    second = make_sim(vram_mb=8192, nvml_state=gpu_state, nvml_index=1)
    assert load(first, "llama3.2:1b").ok and load(second, "phi3:mini").ok
    dev0, dev1 = nvml()
    pid0, pid1 = (sim.stats()["runners"][0]["pid"] for sim in (first, second))
    assert pid0 != pid1
    assert (dev0["uuid"], dev1["uuid"]) == (gpu_uuid(0), gpu_uuid(1))
    assert dev0 == {**dev0, "used_mb": mb("llama3.2:1b"), "procs": [(pid0, mb("llama3.2:1b"))]}
    assert dev1 == {**dev1, "used_mb": mb("phi3:mini"), "procs": [(pid1, mb("phi3:mini"))]}
    assert second.gpu()["gpus"][0]["nvml_index"] == 1

    second.set_other_program_mb(1000)  # its GPU 0 is NVML device 1
    assert [d["used_mb"] for d in nvml()] == [mb("llama3.2:1b"), mb("phi3:mini") + 1000]
    second.stop()  # its runners are gone; its device stays, the other's keys stay
    assert [d["used_mb"] for d in nvml()] == [mb("llama3.2:1b"), 1000]
    post(first, "/api/generate", {"model": "llama3.2:1b", "keep_alive": 0})
    wait_until(lambda: nvml()[0]["used_mb"] == 0, what="device 0 freed")
    assert [d["used_mb"] for d in nvml()] == [0, 1000]


def test_shared_nvml_two_simulators_in_two_processes(
    make_sim: Callable[..., FakeOllama], gpu_state: Path
) -> None:
    first = make_sim(vram_mb=8192, nvml_state=gpu_state)
    flags = f"--port 0 --time-scale 0.02 --vram-mb 8192 --nvml-state {gpu_state} --nvml-index 1"
    cmd = [sys.executable, "-m", "modelmanager.simulator", *flags.split()]
    with subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line.startswith("fake ollama listening on http://127.0.0.1:"), line
            other = line.rsplit(" ", 1)[1]
            assert load(first, "gemma:2b").ok and load(other, "qwen2.5:0.5b").ok
            wait_until(lambda: len(nvml()) == 2, what="both devices in NVML")
            dev0, dev1 = nvml()
            assert (dev0["total_mb"], dev0["used_mb"]) == (8192, mb("gemma:2b"))
            assert (dev1["total_mb"], dev1["used_mb"]) == (8192, mb("qwen2.5:0.5b"))
            assert [m for _, m in dev1["procs"]] == [mb("qwen2.5:0.5b")]
            assert dev0["uuid"] != dev1["uuid"]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [d["used_mb"] for d in nvml()] == [mb("gemma:2b"), 0]
    assert load(first, "all-minilm:latest").ok  # the first keeps writing its own device
    assert [d["used_mb"] for d in nvml()] == [mb("gemma:2b") + mb("all-minilm:latest"), 0]


def test_shared_nvml_concurrent_writers_lose_no_update(
    make_sim: Callable[..., FakeOllama], gpu_state: Path
) -> None:
    sims = [make_sim(vram_mb=8192, nvml_state=gpu_state, nvml_index=i) for i in range(3)]

    def churn(sim: FakeOllama, base: int) -> None:
        for step in range(150):
            sim.set_other_program_mb(base + step)

    threads = [threading.Thread(target=churn, args=(s, 100 * (i + 1))) for i, s in enumerate(sims)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [d["used_mb"] for d in nvml()] == [249, 349, 449]


def test_shared_nvml_keeps_other_keys_and_counts_to_the_highest_device(
    make_sim: Callable[..., FakeOllama], gpu_state: Path
) -> None:
    write_gpu_state(gpu_state, "driver_version=999.99\ngpu0.total_mb=4096\n")
    make_sim(vram_mb=[8192, 2048], nvml_state=gpu_state, nvml_index=2)
    text = gpu_state.read_text()
    assert "device_count=4" in text and "driver_version=999.99" in text
    assert [d["total_mb"] for d in nvml()] == [4096, 24576, 8192, 2048]  # 1: library default
    assert merge("", {}) == "# written by the Model Manager Ollama simulator\ndevice_count=0\n"
