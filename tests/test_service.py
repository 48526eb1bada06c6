"""The service end to end: real HTTP on 127.0.0.1, the Ollama simulator as the backend,
NVML read through the fake library. One test per behaviour the service promises."""

from __future__ import annotations

import time
from typing import Any

import requests

from tests.conftest import Service, wait_until

TEXT = "qwen2.5:0.5b"
OTHER = "llama3.2:1b"


def sim_stats(sim: Any) -> dict[str, Any]:
    return dict(requests.get(f"{sim.url}/_sim/stats", timeout=5).json())


def sim_loaded(sim: Any) -> set[str]:
    body = requests.get(f"{sim.url}/api/ps", timeout=5).json()
    return {m["name"] for m in body["models"]}


# ----------------------------------------------------------------------------- basics


def test_service_runs_generate_chat_and_embed_jobs(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    ids = [
        svc.submit(model=TEXT, prompt="Say hello", metadata={"run": 7, "tags": ["a"]}),
        svc.submit(model=TEXT, messages=[{"role": "user", "content": "Hi"}]),
        svc.submit(model="nomic-embed-text", input=["one", "two"]),
    ]
    done = svc.wait_done(ids)
    gen, chat, emb = (done[i] for i in ids)
    assert [gen["status"], chat["status"], emb["status"]] == ["complete"] * 3
    assert gen["kind"] == "generate" and isinstance(gen["result"], str) and gen["result"]
    assert gen["metadata"] == {"run": 7, "tags": ["a"]}
    assert gen["model"] == "qwen2.5:0.5b" and gen["attempts"] == 1
    assert gen["eval_count"] > 0 and gen["total_duration"] > 0
    assert gen["submitted_at"] <= gen["started_at"] <= gen["completed_at"]
    assert chat["kind"] == "chat" and chat["result"]
    assert emb["kind"] == "embed" and len(emb["result"]) == 2
    assert abs(sum(x * x for x in emb["result"][0]) - 1.0) < 1e-6
    # same prompt, same answer: results are the simulator's, carried unchanged
    again = svc.wait_done([svc.submit(model=TEXT, prompt="Say hello")])
    assert next(iter(again.values()))["result"] == gen["result"]


def test_service_lists_cancels_and_reports(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    sim.set_gate(True)
    first = svc.submit(model=TEXT, prompt="held")
    wait_until(lambda: svc.job(first)["status"] == "running")
    r = requests.post(f"{svc.url}/api/job/{first}/cancel", timeout=5)
    assert r.status_code == 200 and r.json()["was"] == "running"
    sim.set_gate(False)
    assert svc.job(first)["status"] == "cancelled"
    listed = requests.get(f"{svc.url}/api/jobs", params={"status": "cancelled"}, timeout=5).json()
    assert [j["job_id"] for j in listed["jobs"]] == [first]
    stats = requests.get(f"{svc.url}/api/stats", timeout=5).json()
    assert stats["running"] is True
    assert stats["queue"]["by_status"]["cancelled"] == 1
    assert stats["resources"]["vram"]["total"] == 24576 * 1024 * 1024
    assert stats["resources"]["gpus"][0]["name"]
    health = requests.get(f"{svc.url}/api/health", timeout=5).json()
    assert health["backend"]["up"] is True and health["vram_source"] == "nvml"


# ----------------------------------------------------------------------- 1. priority


def test_priority_high_before_normal_before_low_fifo_within(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim, MAX_CONCURRENT_PER_MODEL=1)
    sim.set_gate(True)
    blocker = svc.submit(model=TEXT, prompt="blocker")
    wait_until(lambda: svc.job(blocker)["status"] == "running")
    order = ["low", "normal", "high", "low", "high", "normal"]
    ids = [svc.submit(model=TEXT, prompt=f"job {i}", priority=p) for i, p in enumerate(order)]
    sim.set_gate(False)
    done = svc.wait_done(ids)
    started = sorted(ids, key=lambda i: done[i]["started_at"])
    assert started == [ids[2], ids[4], ids[1], ids[5], ids[0], ids[3]]


def test_aging_lets_a_waiting_low_job_overtake_later_high_jobs(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim, MAX_CONCURRENT_PER_MODEL=1, AGING_SECONDS=0.25)
    sim.set_gate(True)
    blocker = svc.submit(model=TEXT, prompt="blocker")
    wait_until(lambda: svc.job(blocker)["status"] == "running")
    low = svc.submit(model=TEXT, prompt="patient", priority="low")
    submitted = time.time()
    wait_until(lambda: time.time() - submitted > 0.6)  # low has aged two levels
    highs = [svc.submit(model=TEXT, prompt=f"urgent {i}", priority="high") for i in range(3)]
    sim.set_gate(False)
    done = svc.wait_done([low, *highs])
    assert done[low]["started_at"] < min(done[h]["started_at"] for h in highs)


def test_high_priority_job_for_another_model_does_not_wait_for_a_low_backlog(
    gpu_state: Any, make_sim: Any, make_service: Any
) -> None:
    # Ollama holds one model at a time; TEXT has a long backlog of low-priority jobs
    # (about 6 s). A high-priority job for OTHER must not wait for that backlog: TEXT
    # finishes the jobs Ollama already has, makes way, and comes back after.
    sim = make_sim(vram_mb=24576, nvml_state=str(gpu_state), max_loaded_models=1)
    svc: Service = make_service(sim, OLLAMA_MAX_LOADED_MODELS=1)
    long = {"priority": "low", "options": {"num_predict": 10000}}  # about 0.6 s each
    svc.wait_done([svc.submit(model=TEXT, prompt="learn the job time", **long)])
    sim.set_gate(True)
    lows = [svc.submit(model=TEXT, prompt=f"backlog {i}", **long) for i in range(10)]
    wait_until(lambda: svc.job(lows[0])["status"] == "running")
    high = svc.submit(model=OTHER, prompt="urgent", priority="high")
    sim.set_gate(False)
    done = svc.wait_done([*lows, high], timeout=60)
    assert all(d["status"] == "complete" for d in done.values())
    before_high = [i for i in lows if done[i]["started_at"] < done[high]["started_at"]]
    # only the job Ollama was running and the one waiting in its runner (DISPATCH_AHEAD)
    assert before_high == lows[: len(before_high)] and len(before_high) <= 2


def test_a_short_low_backlog_rides_along_before_a_high_job_for_another_model(
    gpu_state: Any, make_sim: Any, make_service: Any
) -> None:
    """Evicting a model to save a high-priority job a few milliseconds would cost the
    backlog a reload: the short backlog finishes first, and the model loads once."""
    sim = make_sim(vram_mb=24576, nvml_state=str(gpu_state), max_loaded_models=1)
    svc: Service = make_service(sim, OLLAMA_MAX_LOADED_MODELS=1)
    warm = svc.submit(model=TEXT, prompt="learn the job time", priority="low")
    svc.wait_done([warm])
    sim.set_gate(True)
    lows = [svc.submit(model=TEXT, prompt=f"short {i}", priority="low") for i in range(4)]
    wait_until(lambda: svc.job(lows[0])["status"] == "running")
    high = svc.submit(model=OTHER, prompt="urgent", priority="high")
    sim.set_gate(False)
    done = svc.wait_done([*lows, high])
    assert all(done[i]["started_at"] < done[high]["started_at"] for i in lows)
    assert [e["model"] for e in sim.stats()["load_events"]].count(TEXT) == 1


# ----------------------------------------------------------------------- 2. grouping


BURST_MODELS = ["qwen2.5:0.5b", "llama3.2:1b", "tinyllama:1.1b", "smollm:1.7b", "gemma:2b"]


def _burst(n_per_model: int) -> list[dict[str, Any]]:
    jobs = []
    for i in range(n_per_model):
        for model in BURST_MODELS:
            jobs.append({"model": model, "prompt": f"burst {i} {model}"})
    return jobs


def test_grouping_loads_each_model_about_once_where_ollama_alone_thrashes(
    gpu_state: Any, make_service: Any
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tools.fake_ollama import FakeOllama

    # 30 jobs round-robin over 5 models; about 2 fit at once in 4.5 GiB less the default
    # 1 GiB safety margin (which absorbs the catalog's first estimates being low)
    jobs = _burst(6)
    with FakeOllama(vram_mb=4608, time_scale=0.02) as direct:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(
                pool.map(
                    lambda j: (
                        requests.post(
                            f"{direct.url}/api/generate", json={**j, "stream": False}, timeout=60
                        ).status_code
                    ),
                    jobs,
                )
            )
        direct_loads = sim_stats(direct)["loads"]
    assert statuses.count(200) == len(jobs)

    with FakeOllama(vram_mb=4608, time_scale=0.02, nvml_state=str(gpu_state)) as managed:
        svc: Service = make_service(managed)
        # one request, so the burst is whole before the first job ends (at this time
        # scale a job takes milliseconds, less than one submit after another)
        r = svc.session.post(f"{svc.url}/api/submit_batch", json={"jobs": jobs}, timeout=10)
        ids = r.json()["job_ids"]
        done = svc.wait_done(ids, timeout=60)
        managed_loads = sim_stats(managed)["loads"]
        svc.stop()
    assert all(d["status"] == "complete" for d in done.values())
    assert managed_loads <= len(BURST_MODELS) + 1
    assert direct_loads >= 2 * managed_loads


# --------------------------------------------------------------------------- 3. VRAM


def test_memory_held_by_another_program_is_respected(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    sim.set_other_program_mb(24576 - 1200)  # leaves less than model + safety margin
    total = 24576 * 1024 * 1024

    def seen() -> bool:  # the manager has read NVML since the other program took memory
        vram = requests.get(f"{svc.url}/api/stats", timeout=5).json()["resources"]["vram"]
        return bool(vram["free"]) and vram["free"] < total // 10

    wait_until(seen, timeout=10)
    job = svc.submit(model=OTHER, prompt="wait for memory")
    wait_until(
        lambda: not svc.manager.scheduler.snapshot().runners and svc.job(job)["status"] == "pending"
    )
    assert svc.job(job)["status"] == "pending"
    assert sim_stats(sim)["loads"] == 0
    sim.set_other_program_mb(0)
    done = svc.wait_done([job])
    assert done[job]["status"] == "complete"
    assert sim_stats(sim)["ooms"] == 0


def test_model_bigger_than_the_gpu_runs_partly_on_the_cpu_as_with_ollama(
    sim: Any, make_service: Any
) -> None:
    """Nothing measured says it cannot load, so it is tried alone: Ollama (the
    simulator) puts what does not fit on the CPU, and the job completes."""
    svc: Service = make_service(sim)
    job = svc.wait_done([svc.submit(model="llama3.1:70b", prompt="big")], timeout=30)
    assert job[next(iter(job))]["status"] == "complete"
    [entry] = requests.get(f"{sim.url}/api/ps", timeout=5).json()["models"]
    assert 0 < entry["size_vram"] < entry["size"]  # split between GPU and CPU
    assert sim_stats(sim)["ooms"] == 0


def test_idle_model_is_unloaded_after_keep_alive(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim, MODEL_KEEP_ALIVE=0.3)
    svc.wait_done([svc.submit(model=TEXT, prompt="then idle")])
    wait_until(lambda: TEXT not in sim_loaded(sim), timeout=10)
    assert sim_stats(sim)["unloads"] >= 1


def test_not_installed_model_fails_at_once(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    job = svc.submit(model="no-such-model:1b", prompt="x")
    body = svc.wait_done([job], timeout=10)[job]
    assert body["status"] == "failed" and body["error_code"] == "MODEL_NOT_FOUND"
    assert "no-such-model:1b" in body["error"]


# ------------------------------------------------------------------ 4. learned sizes


def test_learned_size_and_load_time_survive_a_restart(
    sim: Any, make_service: Any, tmp_path: Any
) -> None:
    svc: Service = make_service(sim)
    svc.wait_done([svc.submit(model=OTHER, prompt="learn me")])
    ps = {m["name"]: m for m in requests.get(f"{sim.url}/api/ps", timeout=5).json()["models"]}
    models = {
        m["name"]: m for m in requests.get(f"{svc.url}/api/models", timeout=5).json()["models"]
    }
    learned = models[OTHER]
    assert learned["learned_ps_vram_bytes"] == ps[OTHER]["size_vram"]
    assert learned["learned_vram_bytes"] >= ps[OTHER]["size_vram"]  # NVML adds the context
    assert learned["learned_load_seconds"] > 0 and learned["estimate_source"] == "learned"
    svc.stop()
    again: Service = make_service(sim)
    models = {
        m["name"]: m for m in requests.get(f"{again.url}/api/models", timeout=5).json()["models"]
    }
    assert models[OTHER]["learned_vram_bytes"] == learned["learned_vram_bytes"]
    assert models[OTHER]["estimated_vram_bytes"] == learned["learned_vram_bytes"]


def test_out_of_memory_raises_the_estimate_and_the_job_still_completes(
    sim: Any, make_service: Any
) -> None:
    svc: Service = make_service(sim)
    before = svc.manager.registry.estimate(OTHER)
    sim.inject_fault(
        count=1,
        status=500,
        error="llama runner process has terminated: CUDA error: out of memory",
        endpoint="/api/generate",
    )
    job = svc.submit(model=OTHER, prompt="oom once")
    body = svc.wait_done([job])[job]
    assert body["status"] == "complete"
    stats = requests.get(f"{svc.url}/api/stats", timeout=5).json()
    assert stats["counters"]["ooms"] == 1
    info = {m["name"]: m for m in requests.get(f"{svc.url}/api/models", timeout=5).json()["models"]}
    assert info[OTHER]["learned_vram_bytes"] is not None
    assert before is not None


# -------------------------------------------------------------------- 5. concurrency


def test_several_jobs_per_model_and_several_models_at_once(sim: Any, make_service: Any) -> None:
    # Ollama runs 4 at once per model here, so MAX_CONCURRENT_PER_MODEL is the cap
    svc: Service = make_service(sim, MAX_CONCURRENT_PER_MODEL=3, OLLAMA_NUM_PARALLEL=4)
    sim.set_gate(True)
    ids = [svc.submit(model=m, prompt=f"c{i}") for i in range(4) for m in (TEXT, OTHER)]

    def running() -> dict[str, int]:
        counts: dict[str, int] = {}
        for i in ids:
            body = svc.job(i)
            if body["status"] == "running":
                counts[body["model"]] = counts.get(body["model"], 0) + 1
        return counts

    counts = wait_until(lambda: (c := running()) and c.get(TEXT) == 3 and c.get(OTHER) == 3 and c)
    assert counts == {TEXT: 3, OTHER: 3}  # capped at MAX_CONCURRENT_PER_MODEL, two models
    sim.set_gate(False)
    assert all(d["status"] == "complete" for d in svc.wait_done(ids).values())


# ------------------------------------------------------------------------ 6. latency


def test_submit_wakes_the_loop_instead_of_waiting_for_the_tick(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim, SCHEDULER_LOOP_INTERVAL=30.0)
    first = svc.submit(model=TEXT, prompt="warm up")
    svc.wait_done([first], timeout=10)  # woken by the submit and the load's end
    job = svc.submit(model=TEXT, prompt="warm now")
    assert svc.wait_done([job], timeout=5)[job]["status"] == "complete"


def test_idle_service_costs_next_to_nothing(sim: Any, make_service: Any) -> None:
    """About 100 idle passes in a second: no request per pass, only the periodic read
    that keeps /api/health current."""
    make_service(sim, SCHEDULER_LOOP_INTERVAL=0.01)
    t0 = time.monotonic()
    wait_until(lambda: time.monotonic() - t0 > 1.0)
    requests_sent = sum(sim_stats(sim)["requests_by_endpoint"].values())
    assert requests_sent <= 2  # the first read, and at most one refresh


# --------------------------------------------------------------------- 7. durability


def test_restart_reruns_unfinished_jobs_and_keeps_finished_results(
    sim: Any, make_service: Any
) -> None:
    svc: Service = make_service(sim, MAX_CONCURRENT_PER_MODEL=2, OLLAMA_NUM_PARALLEL=2)
    finished = svc.submit(model=TEXT, prompt="finished before restart")
    result = svc.wait_done([finished])[finished]["result"]
    sim.set_gate(True)
    unfinished = [svc.submit(model=TEXT, prompt=f"cut off {i}") for i in range(4)]
    wait_until(lambda: sum(svc.job(i)["status"] == "running" for i in unfinished) == 2)
    svc.manager.scheduler.stop()  # the "crash": nothing more is started,
    svc.manager.jobs.close(timeout=0)  # and running jobs stay running in the store
    svc.stop()
    sim.set_gate(False)
    again: Service = make_service(sim)
    done = again.wait_done([finished, *unfinished])
    assert done[finished]["result"] == result
    assert all(done[i]["status"] == "complete" for i in unfinished)
    assert sorted(done[i]["attempts"] for i in unfinished) == [1, 1, 2, 2]


# --------------------------------------------------------------------------- 8. NVML


def test_without_nvml_the_budget_minus_ollama_ps_is_used(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim, nvml=False, VRAM_BUDGET_MB=8192)
    svc.wait_done([svc.submit(model=OTHER, prompt="budget")])
    vram = requests.get(f"{svc.url}/api/stats", timeout=5).json()["resources"]
    ps_used = sum(
        m["size_vram"] for m in requests.get(f"{sim.url}/api/ps", timeout=5).json()["models"]
    )
    assert vram["source"] == "budget"
    assert vram["vram"]["total"] == 8192 * 1024 * 1024
    assert vram["vram"]["used"] == ps_used


# ---------------------------------------------------------------------- 9. residency


def test_models_loaded_or_dropped_behind_our_back_are_noticed(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    requests.post(f"{sim.url}/api/generate", json={"model": OTHER, "stream": False}, timeout=10)

    def state(name: str) -> str:
        models = requests.get(f"{svc.url}/api/models", timeout=5).json()["models"]
        return next(m["state"] for m in models if m["name"] == name)

    svc.submit(model=TEXT, prompt="tick the loop")  # something to do makes it look
    wait_until(lambda: state(OTHER) == "ready")
    requests.post(
        f"{sim.url}/api/generate",
        json={"model": OTHER, "keep_alive": 0, "stream": False},
        timeout=10,
    )
    svc.submit(model=TEXT, prompt="look again")
    wait_until(lambda: state(OTHER) == "unloaded")
