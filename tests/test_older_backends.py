"""Older Ollama servers: endpoints turned off in the simulator (``/_sim/disable``, which
answers Go's plain-text 404 as an Ollama without the route does). The service degrades
and says so once per node: "Skipping <feature> for node X as endpoints are not
available"."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
import requests

from tests.conftest import Service, wait_until

EMBEDDER = "nomic-embed-text:latest"


def skips(caplog: pytest.LogCaptureFixture, feature: str) -> list[str]:
    wanted = f"Skipping {feature} for node local as endpoints are not available"
    return [r.getMessage() for r in caplog.records if wanted in r.getMessage()]


def test_without_api_embed_embeddings_come_from_the_legacy_endpoint_normalised(
    sim: Any, make_sim: Any, make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modelmanager")
    sim.disable_endpoint("/api/embed")
    svc: Service = make_service(sim)
    texts = ["a first sentence", "and a second one"]
    jobs = [
        svc.submit(model=EMBEDDER, input=texts),
        svc.submit(model=EMBEDDER, input=texts[0], dimensions=8),
    ]
    done = svc.wait_done(jobs)
    assert {d["status"] for d in done.values()} == {"complete"}, done
    vectors, short = done[jobs[0]]["result"], done[jobs[1]]["result"]
    # what a newer Ollama's /api/embed answers for the same input
    modern = make_sim()
    expected = requests.post(
        modern.url + "/api/embed", json={"model": EMBEDDER, "input": texts}, timeout=30
    ).json()["embeddings"]
    assert len(vectors) == 2
    for got, want in zip(vectors, expected, strict=True):
        assert len(got) == len(want)
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-6
    assert len(short) == 1 and len(short[0]) == 8
    assert math.isclose(math.fsum(x * x for x in short[0]), 1.0, rel_tol=1e-9)
    by_endpoint = sim.stats()["requests_by_endpoint"]
    assert by_endpoint["/api/embeddings"] >= 3  # the load, then one request per input
    assert len(skips(caplog, "/api/embed")) == 1


def test_without_api_ps_the_budget_and_the_managers_own_record_plan_the_memory(
    sim: Any, make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Two models that do not fit in the budget together (about 1.2 and 1.6 GiB in
    2.2 GiB): with no /api/ps to subtract, the manager counts what it loaded itself, so
    it evicts one before loading the other."""
    caplog.set_level(logging.INFO, logger="modelmanager")
    sim.disable_endpoint("/api/ps")
    svc: Service = make_service(sim, nvml=False, VRAM_BUDGET_MB=2500, VRAM_SAFETY_MARGIN_MB=256)
    first = svc.submit(model="smollm:1.7b", prompt="one")
    svc.wait_done([first])
    second = svc.submit(model="llama3.2:1b", prompt="two")
    assert svc.wait_done([second])[second]["status"] == "complete"
    # smollm was unloaded to make room (Ollama lets it go a moment after it answers)
    wait_until(lambda: sim.loaded_models() == ["llama3.2:1b"])
    stats = svc.session.get(svc.url + "/api/stats", timeout=10).json()
    assert stats["counters"]["evictions"] == 1 and stats["resources"]["backend_up"]
    health = svc.session.get(svc.url + "/api/health", timeout=10).json()
    assert health["status"] == "ok"
    assert len(skips(caplog, "/api/ps")) == 1
    assert sim.stats()["requests_by_status"].get("404", 0) >= 1


def test_without_pull_progress_the_status_has_no_byte_counts(
    sim: Any, make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modelmanager")
    sim.set_pull(closed=True, progress=False)
    svc: Service = make_service(sim)
    for model in ("qwen2.5:3b", "gemma2:2b"):
        r = svc.session.post(svc.url + "/api/v1/models/download", json={"model": model})
        assert r.status_code == 202
        wait_until(lambda: sim.pulls_held() == 1)
        now = svc.session.post(svc.url + "/api/v1/models/status", json={"model": model}).json()
        assert now["status"] == "DOWNLOADING"
        progress = now["progress"]
        assert progress["completed_bytes"] is None and progress["total_bytes"] is None
        assert progress["elapsed_seconds"] >= 0 and progress["start_time"].endswith("Z")
        sim.set_pull(closed=False)

        def downloaded(m: str = model) -> bool:
            body = {"model": m}
            answer = svc.session.post(svc.url + "/api/v1/models/status", json=body).json()
            return bool(answer["status"] == "DOWNLOADED")

        wait_until(downloaded)
        sim.set_pull(closed=True)
    assert len(skips(caplog, "download progress")) == 1


@pytest.mark.parametrize(
    ("endpoint", "method", "path", "body", "feature"),
    [
        (
            "/api/pull",
            "POST",
            "/api/v1/models/download",
            {"model": "qwen2.5:3b"},
            "model downloads",
        ),
        ("/api/delete", "DELETE", "/api/v1/models", {"model": "qwen2.5:0.5b"}, "model deletion"),
    ],
)
def test_a_node_without_the_endpoint_is_501_not_implemented(
    sim: Any,
    make_service: Any,
    caplog: pytest.LogCaptureFixture,
    endpoint: str,
    method: str,
    path: str,
    body: dict[str, Any],
    feature: str,
) -> None:
    caplog.set_level(logging.INFO, logger="modelmanager")
    sim.disable_endpoint(endpoint)
    svc: Service = make_service(sim)
    for _ in range(2):
        r = svc.session.request(method, svc.url + path, json=body, timeout=10)
        assert r.status_code == 501, r.text
        err = r.json()["error"]
        assert err["code"] == "NOT_IMPLEMENTED" and err["details"]["endpoint"] == endpoint
        assert "older version" in err["message"]
    assert len(skips(caplog, f"{feature} ({endpoint})")) == 1
    assert "qwen2.5:0.5b" in {
        m["name"] for m in requests.get(sim.url + "/api/tags", timeout=10).json()["models"]
    }
