"""Backend faults, limits and security, each against the simulator over real HTTP.

Every case ends with no job left queued or running (``wait_done`` requires a terminal
status for each job)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from modelmanager.logger import setup_logging
from tests.conftest import Service, free_port, wait_until
from tools.fake_ollama import ERR_RUNNER_STOPPED, FakeOllama

MODEL = "qwen2.5:0.5b"


def _one(svc: Service, **job: Any) -> dict[str, Any]:
    job_id = svc.submit(**job)
    return svc.wait_done([job_id])[job_id]


def _warm(make_service: Any, sim: Any, **config: Any) -> Service:
    """A service against ``sim`` that has completed one job: the model is loaded."""
    svc: Service = make_service(sim, **config)
    assert _one(svc, model=MODEL, prompt="warm")["status"] == "complete"
    return svc


# ---------------------------------------------------------------------- backend faults


def test_ollama_down_at_start_jobs_wait_then_complete(gpu_state: Path, make_service: Any) -> None:
    absent = FakeOllama(port=free_port(), time_scale=0.02, nvml_state=str(gpu_state))
    svc: Service = make_service(absent)
    job = svc.submit(model=MODEL, prompt="wait for Ollama")
    health = wait_until(
        lambda: (
            (h := requests.get(f"{svc.url}/api/health", timeout=5).json())["backend"]["up"] is False
            and h
        )
    )
    assert health["status"] == "degraded" and health["backend"]["error"]
    assert svc.job(job)["status"] == "pending"
    with absent.start():
        body = svc.wait_done([job])[job]
        assert body["status"] == "complete" and body["attempts"] == 1
        assert requests.get(f"{svc.url}/api/health", timeout=5).json()["backend"]["up"] is True


def test_ollama_going_away_mid_run_loses_nothing(sim: Any, make_service: Any) -> None:
    svc = _warm(make_service, sim)
    sim.refuse_connections(0.5)
    ids = [svc.submit(model=MODEL, prompt=f"during outage {i}") for i in range(5)]
    done = svc.wait_done(ids)
    assert [d["status"] for d in done.values()] == ["complete"] * 5
    # a refused connection never reached Ollama, so it used up no attempt
    assert [d["attempts"] for d in done.values()] == [1] * 5


@pytest.mark.parametrize(
    ("fault", "attempts"),
    [
        ({"status": 500, "error": "unexpected server error"}, 3),
        ({"status": 503}, 3),
        ({"status": 500, "error": ERR_RUNNER_STOPPED}, 3),
        ({"status": 500, "mode": "stream"}, 3),
        ({"mode": "close"}, 3),  # dropped after sending: it may have run, so it counts
    ],
    ids=["500", "503", "runner-crash", "stream-error", "connection-closed"],
)
def test_transient_fault_is_retried_and_the_job_completes(
    sim: Any, make_service: Any, fault: dict[str, Any], attempts: int
) -> None:
    svc = _warm(make_service, sim)
    sim.inject_fault(count=2, endpoint="/api/generate", **fault)
    body = _one(svc, model=MODEL, prompt="flaky")
    assert body["status"] == "complete" and body["result"]
    assert body["attempts"] == attempts


def test_silence_before_the_first_token_fails_at_once_naming_the_setting(
    sim: Any, make_service: Any
) -> None:
    """Nothing at all within REQUEST_TIMEOUT would recur identically: no blind retry."""
    svc = _warm(make_service, sim, REQUEST_TIMEOUT=0.5)
    sim.inject_fault(count=1, endpoint="/api/generate", mode="hang", seconds=2.0)
    body = _one(svc, model=MODEL, prompt="slow once")
    assert body["status"] == "failed" and body["attempts"] == 1
    assert body["error_code"] == "BACKEND_TIMEOUT"
    assert "REQUEST_TIMEOUT (0.5 s)" in body["error"]


def test_a_stall_in_the_middle_of_an_answer_is_retried(sim: Any, make_service: Any) -> None:
    svc = _warm(make_service, sim, REQUEST_TIMEOUT=0.5)
    sim.set_gate(True, after_tokens=3)  # tokens flow, then Ollama goes silent
    job = svc.submit(model=MODEL, prompt="stalls part way")
    wait_until(lambda: svc.job(job)["attempts"] >= 2)  # the first attempt timed out
    sim.set_gate(False)
    body = svc.wait_done([job])[job]
    assert body["status"] == "complete" and body["attempts"] >= 2
    assert body["result"]


def test_persistent_fault_fails_after_max_attempts_with_the_backend_message(
    sim: Any, make_service: Any
) -> None:
    svc = _warm(make_service, sim, MAX_ATTEMPTS=3)
    sim.inject_fault(count=10, endpoint="/api/generate", status=500, error="GGML_ASSERT boom")
    body = _one(svc, model=MODEL, prompt="doomed")
    assert body["status"] == "failed"
    assert body["attempts"] == 3
    assert body["error"] == "GGML_ASSERT boom" and body["error_code"] == "BACKEND_ERROR"
    stats = requests.get(f"{svc.url}/api/stats", timeout=5).json()
    assert stats["counters"]["retries"] == 2


def test_permanent_error_fails_at_once(sim: Any, make_service: Any) -> None:
    svc = _warm(make_service, sim)
    sim.inject_fault(count=1, endpoint="/api/generate", status=400, error="invalid option")
    body = _one(svc, model=MODEL, prompt="rejected")
    assert body["status"] == "failed" and body["attempts"] == 1
    assert body["error_code"] == "BACKEND_BAD_REQUEST" and body["error"] == "invalid option"


def test_failed_job_can_be_retried_by_request(sim: Any, make_service: Any) -> None:
    svc = _warm(make_service, sim, MAX_ATTEMPTS=1)
    sim.inject_fault(count=1, endpoint="/api/generate", status=500, error="transient")
    job = svc.submit(model=MODEL, prompt="dead letter")
    assert svc.wait_done([job])[job]["status"] == "failed"
    r = requests.post(f"{svc.url}/api/job/{job}/retry", timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "pending"
    body = svc.wait_done([job])[job]
    assert body["status"] == "complete" and body["error"] is None
    again = requests.post(f"{svc.url}/api/job/{job}/retry", timeout=5)
    assert again.status_code == 409 and again.json()["error"]["code"] == "CONFLICT"


def test_missing_model_is_pulled_when_auto_pull_is_on(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim, AUTO_PULL=True)
    body = _one(svc, model="qwen2.5:3b", prompt="pull me first")
    assert body["status"] == "complete"
    tags = requests.get(f"{sim.url}/api/tags", timeout=5).json()["models"]
    assert "qwen2.5:3b" in {m["name"] for m in tags}


def test_missing_model_fails_at_once_without_auto_pull(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    body = _one(svc, model="qwen2.5:3b", prompt="not here")
    assert body["status"] == "failed" and body["error_code"] == "MODEL_NOT_FOUND"
    assert "ollama pull qwen2.5:3b" in body["error"]


# ------------------------------------------------------------------------------ limits


def test_full_queue_answers_429_with_retry_after_and_stores_nothing(
    sim: Any, make_service: Any
) -> None:
    svc: Service = make_service(sim, QUEUE_MAX_SIZE=3, MAX_CONCURRENT_PER_MODEL=1)
    sim.set_gate(True)
    accepted = [svc.submit(model=MODEL, prompt=f"fill {i}") for i in range(3)]
    r = svc.session.post(f"{svc.url}/api/submit", json={"model": MODEL, "prompt": "over"})
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "QUEUE_FULL"
    jobs = requests.get(f"{svc.url}/api/jobs", timeout=5).json()["jobs"]
    assert sorted(j["job_id"] for j in jobs) == sorted(accepted)
    sim.set_gate(False)
    svc.wait_done(accepted)


def test_job_timeout_fails_unfinished_jobs_and_drops_late_results(
    sim: Any, make_service: Any
) -> None:
    svc: Service = make_service(sim, JOB_TIMEOUT=0.5, MAX_CONCURRENT_PER_MODEL=1)
    sim.set_gate(True)
    ids = [svc.submit(model=MODEL, prompt=f"too slow {i}") for i in range(2)]
    done = svc.wait_done(ids, timeout=10)
    assert {d["error_code"] for d in done.values()} == {"JOB_TIMEOUT"}
    assert {d["status"] for d in done.values()} == {"failed"}
    sim.set_gate(False)
    wait_until(lambda: svc.manager.jobs.in_flight() == 0)
    assert all(svc.job(i)["status"] == "failed" for i in ids)  # the late answer was dropped


def test_results_are_purged_after_result_ttl(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim, RESULT_TTL=0.3)
    job = svc.submit(model=MODEL, prompt="short-lived")
    svc.wait_done([job])
    wait_until(
        lambda: svc.session.get(f"{svc.url}/api/job/{job}", timeout=5).status_code == 404,
        timeout=10,
    )


def test_idempotency_key_returns_the_same_job(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    a = svc.submit(model=MODEL, prompt="once", idempotency_key="run-42/item-1")
    b = svc.submit(model=MODEL, prompt="once", idempotency_key="run-42/item-1")
    assert a == b
    svc.wait_done([a])
    assert len(requests.get(f"{svc.url}/api/jobs", timeout=5).json()["jobs"]) == 1


# ---------------------------------------------------------------------------- security


def test_api_key_guards_every_endpoint_but_health(sim: Any, make_service: Any) -> None:
    key = "s3cret-key-for-tests-0123"
    svc: Service = make_service(sim, API_KEY=key)
    job = {"model": MODEL, "prompt": "auth"}
    for headers in ({}, {"Authorization": "Bearer wrong-key-wrong-key"}, {"Authorization": key}):
        r = requests.post(f"{svc.url}/api/submit", json=job, headers=headers, timeout=5)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "UNAUTHORIZED"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(f"{svc.url}/api/stats", timeout=5).status_code == 401
    assert requests.get(f"{svc.url}/api/health", timeout=5).status_code == 200
    auth = {"Authorization": f"Bearer {key}"}
    r = requests.post(f"{svc.url}/api/submit", json=job, headers=auth, timeout=5)
    assert r.status_code == 200
    job_id = r.json()["job_id"]
    wait_until(
        lambda: (
            requests.get(f"{svc.url}/api/job/{job_id}", headers=auth, timeout=5).json()["status"]
            == "complete"
        )
    )


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mm.log"
    setup_logging(path)
    try:
        yield path
    finally:
        root = logging.getLogger("modelmanager")
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        root.propagate = True
        root.setLevel(logging.NOTSET)


def test_log_never_holds_prompts_and_user_text_cannot_forge_lines(
    sim: Any, make_service: Any, log_file: Path
) -> None:
    svc: Service = make_service(sim)
    secret = "TOP-SECRET-PROMPT-TEXT"
    body = _one(svc, model=MODEL, prompt=secret, system="also secret SYSTEM-TEXT")
    assert body["status"] == "complete"
    forged = "x\n[00:00:00.000] [API] forged line"
    r = svc.session.post(f"{svc.url}/api/submit", json={"model": forged, "prompt": "p"})
    assert r.status_code == 400
    text = log_file.read_text()
    assert secret not in text and "SYSTEM-TEXT" not in text
    assert "forged line" not in text or "\n[00:00:00.000]" not in text
    lines = text.splitlines()
    assert lines and all(line.startswith("[") and "] [" in line for line in lines)
    assert any(f"job {body['job_id']} complete" in line for line in lines)


def test_failed_unload_keeps_the_model_managed_and_is_retried_with_backoff(
    sim: Any, make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modelmanager.ENGINE")
    svc: Service = make_service(sim, MODEL_KEEP_ALIVE=0.2)
    sim.set_gate(True)
    job = svc.submit(model=MODEL, prompt="hold")
    wait_until(lambda: svc.job(job)["status"] == "running")
    # the job's own request waits at the gate (a job is "running" once claimed, maybe
    # before its request reached Ollama): the faults are for the unloads alone
    wait_until(lambda: sim.stats()["gated"] == 1)
    sim.inject_fault(count=2, endpoint="/api/generate", status=500, error="unload refused")
    sim.set_gate(False)
    svc.wait_done([job])
    wait_until(lambda: MODEL not in sim.loaded_models(), timeout=20)  # third try succeeds
    generate_calls = sim.stats()["requests_by_endpoint"]["/api/generate"]
    assert generate_calls <= 1 + 3 + 1  # the job, three unload tries (and a spare)
    wait_until(lambda: not svc.manager.scheduler.snapshot().runners)
    assert svc.manager.scheduler.snapshot().counters["unloads"] == 3
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m == f"unloaded {MODEL}" for m in messages) == 1  # only the real one
    assert sum("stays loaded" in m for m in messages) == 2
