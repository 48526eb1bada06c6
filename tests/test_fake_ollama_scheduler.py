"""The Ollama simulator's scheduler, residency and GPU model (OLLAMA_FACTS.md §1.2, §1.5, §2).

Requests are held "running" with the simulator's gate so every ordering is a reached
state, polled with a deadline, never a timing guess.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from modelmanager.simulator import (
    CATALOG,
    CUDA_CONTEXT_BYTES,
    ERR_LOAD_OOM,
    ERR_MIDSTREAM_OOM,
    ERR_QUEUE_FULL,
    ERR_RUNNER_STOPPED,
    MIB,
    FakeOllama,
)
from tests.conftest import wait_until

TIMEOUT = 10.0


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=8) as executor:
        yield executor


def post(sim: FakeOllama, path: str, body: dict[str, Any], **kw: Any) -> requests.Response:
    kw.setdefault("timeout", TIMEOUT)
    return requests.post(sim.url + path, json=body, **kw)


def generate(sim: FakeOllama, model: str, prompt: str = "hello", **extra: Any) -> requests.Response:
    return post(sim, "/api/generate", {"model": model, "prompt": prompt, "stream": False, **extra})


def load(sim: FakeOllama, model: str, keep_alive: object = "1h", **extra: Any) -> None:
    spec = CATALOG[model]
    if spec.is_embedding:
        body = {"model": model, "input": [], "keep_alive": keep_alive, **extra}
        resp = post(sim, "/api/embed", body)
    else:
        resp = post(sim, "/api/generate", {"model": model, "keep_alive": keep_alive, **extra})
    assert resp.status_code == 200, resp.text


def ps(sim: FakeOllama) -> list[dict[str, Any]]:
    return list(requests.get(sim.url + "/api/ps", timeout=TIMEOUT).json()["models"])


def ps_names(sim: FakeOllama) -> list[str]:
    return [m["name"] for m in ps(sim)]


def runner(sim: FakeOllama, model: str) -> dict[str, Any] | None:
    return next((r for r in sim.stats()["runners"] if r["model"] == model), None)


def gpu_mb(model: str, vram: int | None = None) -> int:
    """MiB a runner of ``model`` holds on the GPU (VRAM part + CUDA context), rounded up."""
    size = CATALOG[model].vram_bytes if vram is None else vram
    return -(-(size + CUDA_CONTEXT_BYTES) // MIB)


def seconds_left(entry: dict[str, Any]) -> float:
    expires = datetime.fromisoformat(entry["expires_at"])
    return (expires - datetime.now(UTC)).total_seconds()


# ----- load / unload -------------------------------------------------------------------


def test_model_is_listed_while_still_loading(
    make_sim: Callable[..., FakeOllama], pool: ThreadPoolExecutor
) -> None:
    sim = make_sim(time_scale=0.5)  # phi3:mini takes ~1.2 s to load
    pending = pool.submit(load, sim, "phi3:mini")
    wait_until(lambda: (r := runner(sim, "phi3:mini")) and r["state"] == "loading")
    listed = ps(sim)
    state_after = runner(sim, "phi3:mini")
    assert [m["name"] for m in listed] == ["phi3:mini"]
    assert state_after is not None and state_after["state"] == "loading"
    assert seconds_left(listed[0]) > 60  # now + keep_alive while loading (1h scaled: 1800 s)
    assert not pending.done()
    pending.result(timeout=TIMEOUT)
    event = sim.stats()["load_events"][-1]
    assert event["ok"] is True and event["finished"] - event["started"] >= 0.5


def test_unload_answers_at_once_and_waits_for_in_flight_requests(
    make_sim: Callable[..., FakeOllama], pool: ThreadPoolExecutor
) -> None:
    sim = make_sim()
    load(sim, "llama3.2:1b")
    sim.set_gate(True)
    busy = pool.submit(generate, sim, "llama3.2:1b")
    wait_until(lambda: sim.stats()["gated"] == 1)
    resp = post(sim, "/api/generate", {"model": "llama3.2:1b", "keep_alive": 0})
    assert resp.json()["done_reason"] == "unload"
    assert resp.json()["response"] == "" and resp.json()["done"] is True
    assert ps_names(sim) == ["llama3.2:1b"]  # still serving its request
    assert not busy.done()
    sim.set_gate(False)
    assert busy.result(timeout=TIMEOUT).status_code == 200
    wait_until(lambda: ps_names(sim) == [])
    assert sim.stats()["unload_events"][-1] | {"t": 0} == {
        "model": "llama3.2:1b",
        "t": 0,
        "reason": "requested",
    }


def test_unload_of_model_not_loaded_is_200_but_unknown_is_404(
    make_sim: Callable[..., FakeOllama],
) -> None:
    sim = make_sim()
    ok = post(sim, "/api/generate", {"model": "gemma:2b", "keep_alive": "0s"})
    assert (ok.status_code, ok.json()["done_reason"]) == (200, "unload")
    missing = post(sim, "/api/generate", {"model": "ghost", "keep_alive": 0})
    assert missing.status_code == 404


def test_idle_expiry_follows_keep_alive(make_sim: Callable[..., FakeOllama]) -> None:
    sim = make_sim()
    assert generate(sim, "qwen2.5:0.5b", keep_alive="1s").status_code == 200  # 20 ms scaled
    wait_until(lambda: ps_names(sim) == [], what="expiry after keep_alive")
    assert sim.stats()["unload_events"][-1]["reason"] == "expired"
    assert generate(sim, "qwen2.5:0.5b", keep_alive=0).status_code == 200
    wait_until(lambda: ps_names(sim) == [], timeout=1.0, what="unload at once with keep_alive 0")
    load(sim, "qwen2.5:0.5b", keep_alive=-1)
    (entry,) = ps(sim)
    assert datetime.fromisoformat(entry["expires_at"]).year >= 2250  # "Forever"


def test_last_explicit_keep_alive_wins(make_sim: Callable[..., FakeOllama]) -> None:
    sim = make_sim()  # time_scale 0.02: 1h -> 72 s, 10m -> 12 s, default 5m -> 6 s
    load(sim, "smollm:360m", keep_alive="1h")
    assert 60 < seconds_left(ps(sim)[0]) < 80
    generate(sim, "smollm:360m")  # no keep_alive: the runner keeps its 1h
    assert 60 < seconds_left(ps(sim)[0]) < 80
    generate(sim, "smollm:360m", keep_alive="10m")
    assert 8 < seconds_left(ps(sim)[0]) < 16


def test_default_keep_alive_applies_at_load(make_sim: Callable[..., FakeOllama]) -> None:
    sim = make_sim(default_keep_alive=3600.0)
    generate(sim, "smollm:360m")
    assert 60 < seconds_left(ps(sim)[0]) < 80
    real = make_sim(scale_keep_alive=False)
    generate(real, "smollm:360m", keep_alive=600)
    assert 590 < seconds_left(ps(real)[0]) < 610


def test_ps_sorts_longest_remaining_time_first(make_sim: Callable[..., FakeOllama]) -> None:
    sim = make_sim()
    load(sim, "smollm:360m", keep_alive="10m")
    load(sim, "qwen2.5:0.5b", keep_alive=-1)
    load(sim, "all-minilm:latest", keep_alive="1h")
    assert ps_names(sim) == ["qwen2.5:0.5b", "all-minilm:latest", "smollm:360m"]


def test_one_runner_per_model(
    make_sim: Callable[..., FakeOllama], pool: ThreadPoolExecutor
) -> None:
    sim = make_sim()
    results = [pool.submit(generate, sim, "qwen2.5:0.5b", f"p{i}") for i in range(4)]
    assert all(f.result(timeout=TIMEOUT).status_code == 200 for f in results)
    assert sim.stats()["loads"] == 1
    assert ps_names(sim) == ["qwen2.5:0.5b"]


def test_client_disconnect_aborts_the_load(make_sim: Callable[..., FakeOllama]) -> None:
    sim = make_sim(time_scale=0.5)  # phi3:mini: ~1.2 s to load
    body = {"model": "phi3:mini", "prompt": "x", "stream": False}
    with pytest.raises(requests.ReadTimeout):
        post(sim, "/api/generate", body, timeout=0.15)
    wait_until(lambda: sim.stats()["load_events"][-1]["ok"] is False, what="load aborted")
    event = sim.stats()["load_events"][-1]
    assert event["finished"] - event["started"] < 1.0
    wait_until(lambda: ps_names(sim) == [])
    assert sim.stats()["unload_events"][-1]["reason"] == "load aborted"


# ----- the scheduler -------------------------------------------------------------------


def test_fifo_head_of_line_blocking(
    make_sim: Callable[..., FakeOllama], pool: ThreadPoolExecutor
) -> None:
    # 6 GiB: phi3:mini (3.9 GiB with its context) leaves room for all-minilm but not gemma:2b.
    sim = make_sim(vram_mb=6144)
    load(sim, "phi3:mini")
    sim.set_gate(True)
    busy = pool.submit(generate, sim, "phi3:mini")
    wait_until(lambda: sim.stats()["gated"] == 1)
    head = pool.submit(generate, sim, "gemma:2b")  # must evict phi3, which is busy
    wait_until(lambda: (r := runner(sim, "phi3:mini")) and r["expiring"], what="victim chosen")
    sent_behind = time.monotonic()
    behind = pool.submit(post, sim, "/api/embed", {"model": "all-minilm", "input": "x"})
    wait_until(lambda: sim.stats()["queued"] == 2, what="both requests queued")
    stats = sim.stats()
    assert [e["model"] for e in stats["load_events"]] == ["phi3:mini"]
    assert ps_names(sim) == ["phi3:mini"]
    opened = time.monotonic()
    sim.set_gate(False)
    for future in (busy, head, behind):
        assert future.result(timeout=TIMEOUT).status_code == 200
    events = {e["model"]: e for e in sim.stats()["load_events"]}
    assert events["gemma:2b"]["started"] >= opened
    assert events["all-minilm:latest"]["started"] >= events["gemma:2b"]["finished"]
    load_s = behind.result().json()["load_duration"] / 1e9
    assert load_s >= (opened - sent_behind) * 0.9  # load_duration includes the queue wait


def test_eviction_order_is_keep_alive_then_name(make_sim: Callable[..., FakeOllama]) -> None:
    sim = make_sim(max_loaded_models=3)
    load(sim, "smollm:360m", keep_alive="1h")
    load(sim, "all-minilm:latest", keep_alive="1h")
    load(sim, "qwen2.5:0.5b", keep_alive="30m")
    load(sim, "tinyllama:1.1b", keep_alive="1h")  # evicts qwen2.5 (shortest keep_alive)
    assert sorted(ps_names(sim)) == ["all-minilm:latest", "smollm:360m", "tinyllama:1.1b"]
    load(sim, "gemma:2b", keep_alive="1h")  # all 1h now: "all-minilm" sorts first
    assert sorted(ps_names(sim)) == ["gemma:2b", "smollm:360m", "tinyllama:1.1b"]
    victims = [e["model"] for e in sim.stats()["unload_events"]]
    assert victims == ["qwen2.5:0.5b", "all-minilm:latest"]


def test_eviction_prefers_an_idle_runner(
    make_sim: Callable[..., FakeOllama], pool: ThreadPoolExecutor
) -> None:
    sim = make_sim(max_loaded_models=3)
    load(sim, "all-minilm:latest")
    load(sim, "smollm:360m")
    load(sim, "qwen2.5:0.5b", keep_alive="2h")
    sim.set_gate(True)
    busy = pool.submit(post, sim, "/api/embed", {"model": "all-minilm", "input": "x"})
    wait_until(lambda: sim.stats()["gated"] == 1)
    load(sim, "tinyllama:1.1b")  # all-minilm sorts first but is busy: smollm goes
    assert sorted(ps_names(sim)) == ["all-minilm:latest", "qwen2.5:0.5b", "tinyllama:1.1b"]
    sim.set_gate(False)
    assert busy.result(timeout=TIMEOUT).status_code == 200


def test_max_loaded_models_evicts_even_when_vram_fits(make_sim: Callable[..., FakeOllama]) -> None:
    sim = make_sim(max_loaded_models=2)
    for model in ("smollm:360m", "tinyllama:1.1b", "qwen2.5:0.5b"):
        load(sim, model)
    assert len(ps_names(sim)) == 2 and "qwen2.5:0.5b" in ps_names(sim)
    stats = sim.stats()
    assert stats["unloads"] == 1 and "max loaded models" in stats["unload_events"][0]["reason"]
    assert stats["used_vram_mb"] < 24576 // 4


def test_runner_option_change_forces_reload(make_sim: Callable[..., FakeOllama]) -> None:
    sim = make_sim()
    load(sim, "llama3.2:1b")
    (before,) = ps(sim)
    generate(sim, "llama3.2:1b", options={"num_ctx": 8192})
    (after,) = ps(sim)
    assert (before["context_length"], after["context_length"]) == (4096, 8192)
    kv = CATALOG["llama3.2:1b"].kv_bytes_per_token
    assert after["size_vram"] - before["size_vram"] == kv * 4096
    stats = sim.stats()
    assert stats["loads"] == 2 and stats["unload_events"][-1]["reason"] == "reload"
    generate(sim, "llama3.2:1b", options={"num_ctx": 8192, "num_gpu": -1, "temperature": 0})
    assert sim.stats()["loads"] == 2  # same runner options: no reload
    generate(sim, "llama3.2:1b")  # no num_ctx means the default 4096 again: reload
    assert sim.stats()["loads"] == 3 and ps(sim)[0]["context_length"] == 4096


@pytest.mark.parametrize(
    ("options", "reloads"),
    [
        ({"main_gpu": 0}, False),
        ({"num_ctx": 4096}, False),
        ({"num_batch": 512, "num_thread": 0, "num_gpu": -1}, False),
        ({"num_gpu": -2}, False),  # any negative num_gpu is "automatic"
        ({"main_gpu": 1}, True),
        ({"num_batch": 256}, True),
        ({"use_mmap": False}, True),  # Ollama's default is unset, not false
    ],
)
def test_options_spelled_at_ollamas_defaults_keep_the_runner(
    make_sim: Callable[..., FakeOllama], options: dict[str, Any], reloads: bool
) -> None:
    """needsReload compares options after the defaults are filled in on both sides."""
    sim = make_sim()
    load(sim, "qwen2.5:0.5b")
    assert generate(sim, "qwen2.5:0.5b", options=options).ok
    assert sim.stats()["loads"] == (2 if reloads else 1)
    assert generate(sim, "qwen2.5:0.5b").ok  # back to the default runner
    assert sim.stats()["loads"] == (3 if reloads else 1)


def test_context_is_clamped_to_training_context_and_scales_with_parallel(
    make_sim: Callable[..., FakeOllama],
) -> None:
    sim = make_sim(num_parallel=2)
    load(sim, "tinyllama:1.1b", options={"num_ctx": 8192})  # trained on 2048
    (entry,) = ps(sim)
    spec = CATALOG["tinyllama:1.1b"]
    assert entry["context_length"] == 2048
    assert entry["size_vram"] == spec.vram_bytes + spec.kv_bytes_per_token * 2048
    load(sim, "nomic-embed-text:latest")  # embedding models always get one slot
    assert runner(sim, "nomic-embed-text:latest")["num_parallel"] == 1  # type: ignore[index]


def test_parallel_slots_wait_inside_the_runner(
    make_sim: Callable[..., FakeOllama], pool: ThreadPoolExecutor
) -> None:
    sim = make_sim(num_parallel=2)
    load(sim, "smollm:360m")
    load(sim, "all-minilm:latest")
    sim.set_gate(True)
    texts = [pool.submit(generate, sim, "smollm:360m", f"p{i}") for i in range(3)]
    embeds = [
        pool.submit(post, sim, "/api/embed", {"model": "all-minilm", "input": f"{i}"})
        for i in range(2)
    ]
    wait_until(lambda: sim.stats()["gated"] == 3, what="2 text slots + 1 embedding slot")
    wait_until(lambda: sim.stats()["in_flight"] == 5)
    stats = sim.stats()
    assert stats["queued"] == 0  # waiting for a slot is not waiting in the queue
    assert runner(sim, "smollm:360m")["active"] == 2  # type: ignore[index]
    assert runner(sim, "all-minilm:latest")["active"] == 1  # type: ignore[index]
    sim.set_gate(False)
    assert all(f.result(timeout=TIMEOUT).status_code == 200 for f in texts + embeds)


def test_full_queue_answers_503_with_two_spaces(
    make_sim: Callable[..., FakeOllama], pool: ThreadPoolExecutor
) -> None:
    sim = make_sim(max_loaded_models=1, max_queue=1)
    load(sim, "smollm:360m")
    sim.set_gate(True)
    busy = pool.submit(generate, sim, "smollm:360m")
    wait_until(lambda: sim.stats()["gated"] == 1)
    head = pool.submit(generate, sim, "tinyllama:1.1b")  # taken off the queue; waits to evict
    wait_until(lambda: sim.stats()["queued"] == 1)
    queued = pool.submit(generate, sim, "qwen2.5:0.5b")  # fills the queue (capacity 1)
    wait_until(lambda: sim.stats()["queue_depth"] == 1)
    refused = generate(sim, "gemma:2b")
    assert refused.status_code == 503
    assert refused.json() == {"error": ERR_QUEUE_FULL}
    assert "try again.  maximum" in refused.json()["error"]
    sim.set_gate(False)
    for future in (busy, head, queued):
        assert future.result(timeout=TIMEOUT).status_code == 200
    assert sim.stats()["requests_by_status"]["503"] == 1


# ----- GPU memory ----------------------------------------------------------------------


def test_load_oom_when_another_program_holds_memory(make_sim: Callable[..., FakeOllama]) -> None:
    sim = make_sim(vram_mb=6144)
    load(sim, "all-minilm:latest")
    sim.set_other_program_mb(5000)  # invisible to Ollama's fit check
    resp = generate(sim, "phi3:mini")
    assert (resp.status_code, resp.json()) == (500, {"error": ERR_LOAD_OOM})
    assert resp.json()["error"] == "llama runner process has terminated: CUDA error: out of memory"
    assert ps_names(sim) == ["all-minilm:latest"]  # it "fitted", so nothing was evicted
    stats = sim.stats()
    assert stats["ooms"] == 1 and stats["unloads"] == 0
    assert stats["load_events"][-1]["model"] == "phi3:mini"
    assert stats["load_events"][-1]["ok"] is False
    load(sim, "smollm:360m")  # small enough for what is really free
    assert sim.gpu()["used_mb"] == 5000 + gpu_mb("all-minilm:latest") + gpu_mb("smollm:360m")
    sim.set_other_program_mb(0)
    assert generate(sim, "phi3:mini").status_code == 200


def test_other_program_growth_crashes_most_recent_runner_first(
    make_sim: Callable[..., FakeOllama], pool: ThreadPoolExecutor
) -> None:
    sim = make_sim(vram_mb=8192)
    load(sim, "llama3.2:1b")
    load(sim, "qwen2.5:0.5b")
    both = gpu_mb("llama3.2:1b") + gpu_mb("qwen2.5:0.5b")
    sim.set_other_program_mb(8192 - both + 1)
    assert ps_names(sim) == ["llama3.2:1b"]
    assert sim.stats()["crashes"] == 1
    assert sim.stats()["unload_events"][-1]["model"] == "qwen2.5:0.5b"
    sim.set_gate(True)
    busy = pool.submit(generate, sim, "llama3.2:1b")
    wait_until(lambda: sim.stats()["gated"] == 1)
    sim.set_other_program_mb(8192)
    resp = busy.result(timeout=TIMEOUT)
    assert (resp.status_code, resp.json()) == (500, {"error": ERR_RUNNER_STOPPED})
    assert ps_names(sim) == [] and sim.stats()["crashes"] == 2


def test_crash_mid_stream_is_an_in_band_error_line(make_sim: Callable[..., FakeOllama]) -> None:
    sim = make_sim(vram_mb=8192)
    load(sim, "llama3.2:1b")
    sim.set_gate(True, after_tokens=1)
    body = {"model": "llama3.2:1b", "prompt": "a long story"}
    with post(sim, "/api/generate", body, stream=True) as resp:
        lines = resp.iter_lines()
        first = json.loads(next(lines))
        assert resp.status_code == 200 and first["done"] is False and first["response"]
        wait_until(lambda: sim.stats()["gated"] == 1)
        sim.set_other_program_mb(8000)
        rest = [json.loads(line) for line in lines if line]
    assert rest == [{"error": ERR_MIDSTREAM_OOM}]


def test_model_bigger_than_the_gpu_spills_to_cpu(make_sim: Callable[..., FakeOllama]) -> None:
    sim = make_sim()
    load(sim, "qwen2.5:0.5b")
    resp = generate(sim, "llama3.1:70b", options={"num_predict": 2})
    assert resp.status_code == 200
    (entry,) = ps(sim)  # it needed every byte: the small model was evicted
    assert entry["name"] == "llama3.1:70b"
    assert 0 < entry["size_vram"] < entry["size"] == CATALOG["llama3.1:70b"].vram_bytes
    assert sim.gpu()["used_mb"] <= 24576


def test_num_gpu_zero_runs_on_cpu(make_sim: Callable[..., FakeOllama]) -> None:
    sim = make_sim()
    load(sim, "smollm:360m", options={"num_gpu": 0})
    (entry,) = ps(sim)
    assert entry["size_vram"] == 0 and entry["size"] > 0
    assert sim.gpu()["used_mb"] == 0


def nvml() -> dict[str, Any]:
    """What the real pynvml binding reads from the fake NVML library."""
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        return {
            "total": int(memory.total),
            "used": int(memory.used),
            "free": int(memory.free),
            "procs": sorted(int(p.usedGpuMemory) // MIB for p in procs),
            "util": int(util.gpu),
        }
    finally:
        pynvml.nvmlShutdown()


def test_nvml_state_tracks_memory_and_release_lag(
    make_sim: Callable[..., FakeOllama], gpu_state: Path, pool: ThreadPoolExecutor
) -> None:
    # Release lag 50 x 0.02 = 1 s: long enough to see the memory outlive the /api/ps entry.
    sim = make_sim(nvml_state=gpu_state, vram_release_lag=50.0)
    assert nvml() == {"total": 24576 * MIB, "used": 0, "free": 24576 * MIB, "procs": [], "util": 0}
    load(sim, "llama3.2:1b")
    mine = gpu_mb("llama3.2:1b")
    assert nvml()["used"] == mine * MIB > ps(sim)[0]["size_vram"]  # CUDA context on top
    assert nvml()["procs"] == [mine]
    sim.set_other_program_mb(1000)
    assert nvml()["used"] == (1000 + mine) * MIB
    assert nvml()["free"] == (24576 - 1000 - mine) * MIB
    assert nvml()["procs"] == sorted([1000, mine])

    sim.set_gate(True, after_tokens=1)
    busy = pool.submit(generate, sim, "llama3.2:1b")
    wait_until(lambda: sim.stats()["gated"] == 1)
    assert nvml()["util"] == 90
    sim.set_gate(False)
    assert busy.result(timeout=TIMEOUT).status_code == 200
    wait_until(lambda: nvml()["util"] == 0)

    post(sim, "/api/generate", {"model": "llama3.2:1b", "keep_alive": 0})
    wait_until(lambda: ps_names(sim) == [])
    assert nvml()["used"] == (1000 + mine) * MIB  # freed with a lag
    wait_until(lambda: nvml()["used"] == 1000 * MIB, what="VRAM released after the lag")
    assert sim.stats()["peak_vram_mb"] == 1000 + mine


def test_stop_releases_the_gpu_in_the_state_file(
    make_sim: Callable[..., FakeOllama], gpu_state: Path
) -> None:
    sim = make_sim(nvml_state=gpu_state)
    load(sim, "gemma:2b")
    assert nvml()["used"] == gpu_mb("gemma:2b") * MIB
    sim.stop()
    assert nvml()["used"] == 0
