"""The warm pool over real HTTP against the simulator: PRELOAD_MODELS downloaded onto
every node at start and at each check, never failing because a node is down or older;
PINNED_MODELS kept loaded, and evicted only for higher-priority work."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import requests

from tests.conftest import Service, free_port, wait_until

DISK = "modelmanager.DISK"


def tags(sim: Any) -> set[str]:
    models = requests.get(sim.url + "/api/tags", timeout=10).json()["models"]
    return {m["name"] for m in models}


def pulls(sim: Any) -> list[str]:
    log = sim.stats()["request_log"]
    return [e["model"] for e in log if e["endpoint"] == "/api/pull" and e.get("model")]


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# --------------------------------------------------------------------- PRELOAD_MODELS


def test_preload_models_are_downloaded_at_start_and_present_ones_left_alone(
    sim: Any, make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=DISK)
    make_service(sim, PRELOAD_MODELS="qwen2.5:3b, gemma2:2b, qwen2.5:0.5b")
    wait_until(lambda: {"qwen2.5:3b", "gemma2:2b"} <= tags(sim), what="preloaded")
    assert sorted(pulls(sim)) == ["gemma2:2b", "qwen2.5:3b"]  # not the one it had
    assert messages(caplog, "Pre-downloading model qwen2.5:3b for node local")
    assert messages(caplog, "Pre-downloading model gemma2:2b for node local")
    assert not messages(caplog, "Pre-downloading model qwen2.5:0.5b")


def test_a_partial_preload_is_downloaded_again_at_the_next_check(
    sim: Any, make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=DISK)
    sim.inject_fault(count=3, endpoint="/api/pull", mode="partial")  # every try of the first
    make_service(sim, PRELOAD_MODELS="qwen2.5:3b", PRELOAD_INTERVAL=1.0)
    wait_until(lambda: "qwen2.5:3b" in tags(sim), what="downloaded at a later check")
    assert messages(caplog, "ended PARTIAL")
    assert messages(caplog, "Pre-downloading model qwen2.5:3b for node local (PARTIAL)")
    assert pulls(sim) == ["qwen2.5:3b"] * 4  # three failed tries, then the next check


def test_preloads_beyond_max_downloads_start_as_soon_as_a_download_ends(
    sim: Any, make_service: Any
) -> None:
    """With the default interval of 30 minutes, the refused ones must not wait for it."""
    sim.set_pull(closed=True)
    svc: Service = make_service(sim, MAX_DOWNLOADS=1, PRELOAD_MODELS="qwen2.5:3b,gemma2:2b")
    wait_until(lambda: sim.pulls_held() == 1)
    assert svc.manager.config.PRELOAD_INTERVAL == 1800.0
    sim.set_pull(closed=False)
    wait_until(lambda: {"qwen2.5:3b", "gemma2:2b"} <= tags(sim), what="both downloaded")


def test_the_warm_pool_never_fails_on_a_node_that_is_down_or_older(
    make_sim: Any, make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modelmanager")
    good, old = make_sim(), make_sim()
    old.disable_endpoint("/api/pull")
    down = f"http://127.0.0.1:{free_port()}"
    svc: Service = make_service(
        good,
        nvml=False,
        VRAM_BUDGET_MB=24576,
        OLLAMA_BACKENDS=f"good={good.url},old={old.url},down={down}",
        PRELOAD_MODELS="qwen2.5:3b",
        PRELOAD_INTERVAL=1.0,
    )
    wait_until(lambda: "qwen2.5:3b" in tags(good), what="the good node got it")
    wait_until(lambda: svc.manager.warm_pool.passes >= 3, what="three checks")
    skipped = messages(caplog, "Skipping model downloads (/api/pull) for node old")
    assert len(skipped) == 1 and "as endpoints are not available" in skipped[0]
    assert messages(caplog, "Failed to check model status on node down")
    assert "qwen2.5:3b" not in tags(old)
    job = svc.submit(model="qwen2.5:0.5b", prompt="still serving")
    assert svc.wait_done([job])[job]["status"] == "complete"


# ---------------------------------------------------------------------- PINNED_MODELS

PINNED = "llama3.2:1b"


def test_a_pinned_model_is_loaded_with_no_job_and_outlives_the_keep_alive(
    sim: Any, make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modelmanager.SCHEDULER")
    svc: Service = make_service(sim, PINNED_MODELS=PINNED, MODEL_KEEP_ALIVE=0.2)
    wait_until(lambda: PINNED in sim.loaded_models(), what="the pinned model is loaded")
    assert messages(caplog, f"loading pinned model {PINNED} (PINNED_MODELS) on node local")
    # another model comes and goes idle; the pinned one stays
    job = svc.submit(model="qwen2.5:0.5b", prompt="in passing")
    svc.wait_done([job])
    wait_until(lambda: "qwen2.5:0.5b" not in sim.loaded_models(), what="idle unload")
    assert PINNED in sim.loaded_models()
    pinned_job = svc.submit(model=PINNED, prompt="on the pinned model")
    assert svc.wait_done([pinned_job])[pinned_job]["status"] == "complete"
    assert sim.stats()["loads"] == 2  # its job ran on the pinned runner


def test_a_pinned_model_yields_only_to_high_priority_work_then_comes_back(
    make_sim: Any, make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """3.5 GiB: the pinned llama3.2:1b and gemma:2b do not fit together. Normal work for
    gemma waits; high-priority work evicts the pinned model, which returns once gemma
    has gone idle."""
    caplog.set_level(logging.INFO, logger="modelmanager.SCHEDULER")
    sim = make_sim(vram_mb=3584)
    svc: Service = make_service(
        sim,
        nvml=False,
        VRAM_BUDGET_MB=3584,
        VRAM_SAFETY_MARGIN_MB=256,
        PINNED_MODELS=PINNED,
        MODEL_KEEP_ALIVE=0.5,
        AGING_SECONDS=3600.0,
    )
    wait_until(lambda: sim.loaded_models() == [PINNED])
    normal = svc.submit(model="gemma:2b", prompt="normal", priority="normal")

    def waiting_for() -> dict[str, str]:
        return dict(svc.session.get(f"{svc.url}/api/stats").json()["waiting_for"])

    wait_until(lambda: "gemma:2b" in waiting_for(), what="gemma waits")
    assert svc.job(normal)["status"] == "pending" and sim.loaded_models() == [PINNED]
    high = svc.submit(model="gemma:2b", prompt="urgent", priority="high")
    done = svc.wait_done([high, normal])
    assert {d["status"] for d in done.values()} == {"complete"}
    evicted = messages(caplog, f"evicting pinned model {PINNED}")
    assert len(evicted) == 1 and "outranked by a higher-priority need of gemma:2b" in evicted[0]
    wait_until(lambda: sim.loaded_models() == [PINNED], what="the pinned model is back")
