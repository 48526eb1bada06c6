"""The manager speaks Ollama exactly: model names in any spelling are one model, every
request field reaches Ollama unchanged, runner options make their own runner, a cancel
stops the work on the GPU, and timeouts measure silence. Real HTTP against the simulator.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import requests

from tests.conftest import Service, wait_until

MODEL = "qwen2.5:0.5b"
HF = "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"


def _one(svc: Service, **job: Any) -> dict[str, Any]:
    job_id = svc.submit(**job)
    return svc.wait_done([job_id])[job_id]


def _runner(sim: Any, model: str) -> dict[str, Any] | None:
    return next((r for r in sim.stats()["runners"] if r["model"] == model), None)


# ------------------------------------------------------------------ 1. model identity


@pytest.mark.parametrize("nvml", [True, False], ids=["nvml", "budget"])
@pytest.mark.parametrize(
    "spelling",
    [HF, HF.lower(), "HF.CO/bartowski/llama-3.2-1b-instruct-gguf:q4_k_m", "https://" + HF],
)
def test_a_model_stored_with_capitals_runs_whatever_the_spelling(
    sim: Any, make_service: Any, caplog: pytest.LogCaptureFixture, spelling: str, nvml: bool
) -> None:
    caplog.set_level(logging.INFO, logger="modelmanager")
    budget = {} if nvml else {"VRAM_BUDGET_MB": 8192}
    svc = make_service(sim, nvml=nvml, **budget)
    body = _one(svc, model=spelling, prompt="Say hello")
    assert body["status"] == "complete" and body["result"], body
    assert body["model"] == spelling  # what the user sent is what they see
    again = _one(svc, model=spelling, prompt="Say hello again")
    assert again["status"] == "complete"
    assert len(sim.stats()["load_events"]) == 1
    lines = [r.getMessage() for r in caplog.records]
    assert not [m for m in lines if "no longer loaded" in m or "raised VRAM" in m], lines


def test_every_spelling_of_one_model_is_one_group(sim: Any, make_service: Any) -> None:
    svc = make_service(sim)
    spellings = [
        "qwen2.5:0.5b",
        "Qwen2.5:0.5B",
        "library/qwen2.5:0.5b",
        "registry.ollama.ai/library/QWEN2.5:0.5b",
    ]
    ids = [svc.submit(model=name, prompt=f"p{i}") for i, name in enumerate(spellings * 3)]
    done = svc.wait_done(ids)
    assert all(b["status"] == "complete" for b in done.values())
    assert [done[i]["model"] for i in ids] == spellings * 3
    assert len(sim.stats()["load_events"]) == 1
    listed = requests.get(f"{svc.url}/api/jobs", params={"model": "QWEN2.5:0.5B"}, timeout=5)
    assert {j["job_id"] for j in listed.json()["jobs"]} == set(ids)


def test_a_copy_under_another_name_shares_the_runner(sim: Any, make_service: Any) -> None:
    """``ollama cp qwen2.5:0.5b MyModel:Latest``: one weights file, one runner, which
    /api/ps lists under the name it was loaded with. Jobs for both names run; nothing
    loops between "loaded" and "dropped"."""
    r = requests.post(
        f"{sim.url}/api/copy", json={"source": MODEL, "destination": "MyModel:Latest"}, timeout=5
    )
    assert r.status_code == 200
    svc = make_service(sim)
    assert _one(svc, model=MODEL, prompt="original")["status"] == "complete"
    ids = [svc.submit(model="mymodel", prompt=f"copy {i}") for i in range(3)]
    assert all(b["status"] == "complete" for b in svc.wait_done(ids).values())
    assert len(sim.stats()["load_events"]) == 1


def _managed(svc: Service) -> dict[str, Any]:
    stats = requests.get(f"{svc.url}/api/stats", timeout=5).json()
    return dict(stats["resources"]["managed_models"])


def _ps(sim: Any) -> list[str]:
    return [m["name"] for m in requests.get(f"{sim.url}/api/ps", timeout=5).json()["models"]]


@pytest.mark.parametrize("copy_first", [True, False], ids=["copy-before-start", "copy-later"])
@pytest.mark.parametrize(
    "copy", ["MyTeam/MyModel:Latest", "aaa:v1", "hf.co/Me/Q:Q4"], ids=["team", "sorts-first", "hf"]
)
def test_copies_are_one_runner_for_grouping_vram_and_keep_alive(
    make_sim: Any,
    gpu_state: Any,
    make_service: Any,
    caplog: pytest.LogCaptureFixture,
    copy_first: bool,
    copy: str,
) -> None:
    """The new user's report: qwen2.5:0.5b (keep_alive 10m), then its copy (keep_alive 0),
    then qwen2.5:0.5b again, with tinyllama loaded beside them. The copy runs on the
    loaded runner (no load, no eviction, no size learned from a load that never
    happened); its keep_alive 0 then ends that one runner, as it does in Ollama, and the
    manager sees it go as its own unload, not as a drop behind its back."""
    caplog.set_level(logging.INFO, logger="modelmanager")
    sim = make_sim(vram_mb=8192, nvml_state=str(gpu_state))

    def make_copy() -> None:
        body = {"source": MODEL, "destination": copy}
        assert requests.post(f"{sim.url}/api/copy", json=body, timeout=5).status_code == 200

    if copy_first:
        make_copy()
    svc = make_service(sim)
    assert _one(svc, model="tinyllama:1.1b", prompt="x", keep_alive="10m")["status"] == "complete"
    assert _one(svc, model=MODEL, prompt="first", keep_alive="10m")["status"] == "complete"
    if not copy_first:
        make_copy()
    done = _one(svc, model=copy, prompt="copy", keep_alive="10m")
    assert done["status"] == "complete" and done["model"] == copy  # the name the user sent
    assert len(sim.stats()["load_events"]) == 2
    assert len(_managed(svc)) == 2 and len(_ps(sim)) == 2  # one runner each, both agree
    assert _one(svc, model=copy, prompt="last", keep_alive=0)["status"] == "complete"
    wait_until(lambda: len(_ps(sim)) == 1 and len(_managed(svc)) == 1, 10, what="unloaded")
    assert _ps(sim) == ["tinyllama:1.1b"]
    assert _one(svc, model=MODEL, prompt="again", keep_alive="10m")["status"] == "complete"
    assert len(sim.stats()["load_events"]) == 3
    assert sorted(_ps(sim)) == sorted(_managed(svc))
    lines = [r.getMessage() for r in caplog.records]
    bad = [m for m in lines if "no longer loaded" in m or "evicting" in m or "raised" in m]
    assert not bad, bad
    assert len([m for m in lines if m.startswith("learned ")]) == 3, lines


def test_a_copy_loaded_before_the_manager_started_is_one_managed_runner(
    sim: Any, make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Ollama holds the runner under the copy's name before the manager starts: jobs for
    either name attach to it, and the manager never loads a second one."""
    caplog.set_level(logging.INFO, logger="modelmanager")
    body = {"source": MODEL, "destination": "MyTeam/MyModel:Latest"}
    assert requests.post(f"{sim.url}/api/copy", json=body, timeout=5).status_code == 200
    load = {"model": "MyTeam/MyModel:Latest", "keep_alive": "1h"}
    assert requests.post(f"{sim.url}/api/generate", json=load, timeout=10).status_code == 200
    svc = make_service(sim)
    ids = [svc.submit(model=name, prompt="p") for name in (MODEL, "myteam/mymodel") * 3]
    assert all(b["status"] == "complete" for b in svc.wait_done(ids).values())
    assert len(sim.stats()["load_events"]) == 1
    assert list(_managed(svc)) == ["MyTeam/MyModel:Latest"] == _ps(sim)
    lines = [r.getMessage() for r in caplog.records]
    assert not [m for m in lines if "no longer loaded" in m or "learned" in m], lines


def test_failures_never_make_a_model_permanently_impossible(sim: Any, make_service: Any) -> None:
    """Out-of-memory answers raise the estimate only so far; jobs keep completing."""
    svc = make_service(sim, nvml=False, VRAM_BUDGET_MB=4096, MAX_ATTEMPTS=5)
    for _ in range(3):
        sim.inject_fault(
            count=1,
            endpoint="/api/generate",
            status=500,
            error="llama runner process has terminated: CUDA error: out of memory",
        )
        assert _one(svc, model="tinyllama:1.1b", prompt="x")["status"] == "complete"
    models = requests.get(f"{svc.url}/api/models", timeout=5).json()["models"]
    tiny = next(m for m in models if m["name"] == "tinyllama:1.1b")
    assert tiny["estimated_vram_bytes"] <= 2 * tiny["evidence_vram_bytes"]


# ------------------------------------------------------------------ 3. runner options


def test_a_jobs_runner_options_reach_ollama_as_given(sim: Any, make_service: Any) -> None:
    """Job 2 asks for num_ctx 16384 after job 1 used 2048: it runs on a 16384 runner
    (loaded with that option), never silently on job 1's."""
    svc = make_service(sim)
    first = _one(svc, model=MODEL, prompt="short question", options={"num_ctx": 2048})
    assert first["status"] == "complete"
    runner = _runner(sim, MODEL)
    assert runner is not None and runner["context_length"] == 2048  # the load carried it
    long_prompt = "context " * 5000  # about 40 kB
    second = _one(svc, model=MODEL, prompt=long_prompt, options={"num_ctx": 16384})
    assert second["status"] == "complete"
    runner = _runner(sim, MODEL)
    assert runner is not None and runner["context_length"] == 16384
    loads = [e for e in sim.stats()["load_events"] if e["model"] == MODEL]
    assert len(loads) == 2  # one per runner: the manager switched, Ollama never reloaded


def test_jobs_with_matching_runner_options_ride_along(sim: Any, make_service: Any) -> None:
    """Interleaved jobs of two runners of one model: each runner loads once."""
    svc = make_service(sim)
    jobs = [
        {"model": MODEL, "prompt": f"job {i}", "options": {"num_ctx": 2048 if i % 2 else 8192}}
        for i in range(12)
    ]
    r = requests.post(f"{svc.url}/api/submit_batch", json={"jobs": jobs}, timeout=10)
    ids = r.json()["job_ids"]
    done = svc.wait_done(ids)
    assert all(body["status"] == "complete" for body in done.values())
    loads = [e for e in sim.stats()["load_events"] if e["model"] == MODEL]
    assert len(loads) == 2


def test_options_that_change_no_runner_do_not_split_the_group(sim: Any, make_service: Any) -> None:
    svc = make_service(sim)
    ids = [
        svc.submit(model=MODEL, prompt=f"p{i}", options={"temperature": i / 10, "seed": i})
        for i in range(6)
    ]
    assert all(b["status"] == "complete" for b in svc.wait_done(ids).values())
    assert len([e for e in sim.stats()["load_events"] if e["model"] == MODEL]) == 1


@pytest.mark.parametrize(
    "options",
    [
        {"main_gpu": 0},
        {"num_ctx": 4096},  # qwen2.5:0.5b's default context: its Modelfile sets none
        {"num_ctx": 4096, "num_batch": 512, "num_gpu": -1, "num_thread": 0},
        {"num_batch": 512, "temperature": 0.2},
    ],
    ids=["main_gpu-0", "num_ctx-default", "all-defaults", "num_batch-default"],
)
def test_runner_options_at_their_default_share_the_default_runner(
    sim: Any, make_service: Any, caplog: pytest.LogCaptureFixture, options: dict[str, Any]
) -> None:
    """Ollama fills in defaults before needsReload compares: a job that spells out a
    default value runs on the loaded default runner, in either order, with no unload."""
    caplog.set_level(logging.INFO, logger="modelmanager")
    svc = make_service(sim)
    assert _one(svc, model=MODEL, prompt="plain")["status"] == "complete"
    assert _one(svc, model=MODEL, prompt="spelled", options=options)["status"] == "complete"
    ids = [
        svc.submit(model=MODEL, prompt=f"p{i}", **({"options": options} if i % 2 else {}))
        for i in range(6)
    ]
    assert all(b["status"] == "complete" for b in svc.wait_done(ids).values())
    assert len(sim.stats()["load_events"]) == 1 and sim.stats()["unloads"] == 0
    assert list(_managed(svc)) == [MODEL]
    lines = [r.getMessage() for r in caplog.records]
    assert not [m for m in lines if "evicting" in m or "unloading" in m], lines


@pytest.mark.parametrize(
    "options", [{"num_ctx": 8192}, {"main_gpu": 1}, {"num_batch": 256}, {"use_mmap": True}]
)
def test_runner_options_off_their_default_still_make_their_own_runner(
    sim: Any, make_service: Any, options: dict[str, Any]
) -> None:
    svc = make_service(sim)
    assert _one(svc, model=MODEL, prompt="plain")["status"] == "complete"
    assert _one(svc, model=MODEL, prompt="other", options=options)["status"] == "complete"
    assert len(sim.stats()["load_events"]) == 2  # the manager switched runners on purpose


# ------------------------------------------------------------- 4. cancel frees the GPU


def test_cancel_aborts_the_request_so_ollama_frees_the_slot(sim: Any, make_service: Any) -> None:
    svc = make_service(sim)
    assert _one(svc, model=MODEL, prompt="warm")["status"] == "complete"
    sim.set_gate(True)  # generation holds: the job stays in Ollama's hands
    job = svc.submit(model=MODEL, prompt="long answer", options={"num_predict": 2000})
    wait_until(lambda: sim.stats()["gated"] == 1, what="the request reached Ollama")
    r = requests.post(f"{svc.url}/api/job/{job}/cancel", timeout=5)
    assert r.json()["status"] == "cancelled" and r.json()["was"] == "running"
    # Ollama sees the client go and stops: nothing is held any more, gate still closed
    wait_until(
        lambda: sim.stats()["gated"] == 0 and sim.stats()["in_flight"] == 0,
        timeout=5,
        what="the simulator dropped the cancelled request",
    )
    sim.set_gate(False)
    nxt = _one(svc, model=MODEL, prompt="next")
    assert nxt["status"] == "complete"
    assert svc.job(job)["status"] == "cancelled"  # the aborted attempt changed nothing


def test_job_timeout_aborts_the_running_request(sim: Any, make_service: Any) -> None:
    svc = make_service(sim, JOB_TIMEOUT=1.0)
    assert _one(svc, model=MODEL, prompt="warm")["status"] == "complete"
    sim.set_gate(True)
    job = svc.submit(model=MODEL, prompt="never ends")
    body = svc.wait_done([job], timeout=15)[job]
    assert body["status"] == "failed" and body["error_code"] == "JOB_TIMEOUT"
    wait_until(lambda: sim.stats()["in_flight"] == 0, timeout=5, what="request dropped")


# ------------------------------------------------------------- 5. timeouts are silence


def test_an_answer_longer_than_the_timeout_completes_while_tokens_flow(
    make_sim: Any, gpu_state: Any, make_service: Any
) -> None:
    """REQUEST_TIMEOUT 1 s and an answer that takes about 3 s at the model's real speed:
    it completes in one attempt, because the timeout measures silence."""
    real_speed = make_sim(vram_mb=24576, nvml_state=str(gpu_state), time_scale=1.0)
    svc = make_service(real_speed, REQUEST_TIMEOUT=1.0)
    body = _one(svc, model=MODEL, prompt="a long answer", options={"num_predict": 1000})
    assert body["status"] == "complete" and body["attempts"] == 1, body
    assert body["eval_count"] == 1000 and body["done_reason"] == "length"
    total_seconds = body["total_duration"] / 1e9
    assert total_seconds > 2.0  # longer than the timeout by far
