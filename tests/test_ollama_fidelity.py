"""The manager speaks Ollama exactly: model names in any spelling are one model, every
request field reaches Ollama unchanged, runner options make their own runner, a cancel
stops the work on the GPU, and timeouts measure silence. Real HTTP against the simulator.
"""

from __future__ import annotations

from typing import Any

import requests

from tests.conftest import Service, wait_until

MODEL = "qwen2.5:0.5b"


def _one(svc: Service, **job: Any) -> dict[str, Any]:
    job_id = svc.submit(**job)
    return svc.wait_done([job_id])[job_id]


def _runner(sim: Any, model: str) -> dict[str, Any] | None:
    return next((r for r in sim.stats()["runners"] if r["model"] == model), None)


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
