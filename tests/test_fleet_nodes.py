"""Nodes in a fleet as a new user meets them, over real HTTP against simulators: a node
registered at run time takes work at once, one Ollama is one node, a Model Manager is no
node, downloads on one node hold back no job another node can run, health names each
node, a removed node's downloads stop, and errors read as short sentences.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from modelmanager.names import model_key
from tests.conftest import Service, wait_until

SMALL = "smollm:360m"
URLLIB3_WORDS = ("Max retries", "NewConnectionError", "HTTPConnectionPool", "Pool(", "object at")


def nodes(svc: Service) -> dict[str, dict[str, Any]]:
    listed = requests.get(f"{svc.url}/api/v1/nodes", timeout=5).json()["nodes"]
    return {n["name"]: n for n in listed}


def register(svc: Service, timeout: float = 30, **body: Any) -> requests.Response:
    return requests.post(f"{svc.url}/api/v1/nodes", json=body, timeout=timeout)


def disk_status(svc: Service, model: str, node: str) -> dict[str, Any]:
    r = requests.post(
        f"{svc.url}/api/v1/models/status", json={"model": model, "node": node}, timeout=10
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def plain(text: str) -> bool:
    """No urllib3 internals in an error text."""
    return not any(word in text for word in URLLIB3_WORDS)


# ------------------------------------------------------- 1. a registered node takes work


@pytest.mark.parametrize("memory", ["vram_budget_mb", "nvml"])
def test_a_node_registered_at_run_time_runs_what_the_full_configured_node_cannot(
    make_sim: Any, make_service: Any, gpu_state: Any, memory: str
) -> None:
    """The configured node knows every model already (a job ran there), then its GPU
    fills up: a job must run on the node registered since, without a restart."""
    a = make_sim(vram_mb=8192, nvml_state=str(gpu_state), nvml_index=0)
    b = make_sim(vram_mb=8192, nvml_state=str(gpu_state), nvml_index=1)
    svc = make_service(a, OLLAMA_BACKENDS=f"n0={a.url}", OLLAMA_BACKEND_GPUS="n0=0")
    first = svc.wait_done([svc.submit(model=SMALL, prompt="warm", keep_alive=0)])
    assert next(iter(first.values()))["node"] == "n0"
    a.set_other_program_mb(8150)  # another program takes n0's GPU
    wait_until(lambda: nodes(svc)["n0"]["devices"][0]["free_mb"] < 100, what="n0 full")
    body: dict[str, Any] = {"name": "late", "url": b.url}
    if memory == "vram_budget_mb":
        body["vram_budget_mb"] = 8192
    r = register(svc, **body)
    assert r.status_code == 201, r.text
    added = r.json()
    # its Ollama answered before the 201: it is described as ready, with its memory
    assert added["healthy"] is True and added["state"] == "ready", added
    assert added["vram"] is not None and added["vram"]["free_mb"] > 4000
    done = svc.wait_done([svc.submit(model=SMALL, prompt="now")], timeout=10)
    job = next(iter(done.values()))
    assert job["status"] == "complete" and job["node"] == "late", job


# --------------------------------------------------------------- 2. one Ollama, one node


@pytest.mark.parametrize(
    "spelling",
    [
        "http://127.0.0.1:{port}",
        "http://localhost:{port}/",
        "http://LocalHost:{port}",
        "http://[::1]:{port}",
    ],
)
def test_one_ollama_cannot_be_registered_twice_under_another_name(
    make_sim: Any, make_service: Any, spelling: str
) -> None:
    a, b = make_sim(vram_mb=4096), make_sim(vram_mb=4096)
    svc = make_service(a, nvml=False, VRAM_BUDGET_MB=4096, OLLAMA_BACKENDS=f"n0={a.url}")
    # the configured node's Ollama
    r = register(svc, name="twin", url=spelling.format(port=a.port), vram_budget_mb=4096)
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "CONFLICT" and err["details"]["node"] == "n0"
    assert "n0" in err["message"] and "same server" in err["message"]
    # a registered node's Ollama
    assert register(svc, name="box2", url=b.url, vram_budget_mb=4096).status_code == 201
    r = register(svc, name="box3", url=spelling.format(port=b.port), vram_budget_mb=4096)
    assert r.status_code == 409 and r.json()["error"]["details"]["node"] == "box2", r.text
    assert set(nodes(svc)) == {"n0", "box2"}


# ------------------------------------------------------------ 3. a Model Manager is no node


def test_registering_a_model_manager_as_a_node_is_refused(make_sim: Any, make_service: Any) -> None:
    a, b = make_sim(vram_mb=4096), make_sim(vram_mb=4096)
    svc = make_service(a, nvml=False, VRAM_BUDGET_MB=4096)
    other = make_service(b, nvml=False, VRAM_BUDGET_MB=4096, DATA_DIR=str(svc_dir(svc) + "2"))
    for name, url, which in (
        ("self", svc.url, "this Model Manager"),
        ("mm2", other.url, "a Model"),
    ):
        r = register(svc, name=name, url=url)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["details"]["field"] == "url" and which in err["message"]
        assert "not an Ollama server" in err["message"] and "11434" in err["message"]
    assert set(nodes(svc)) == {"local"}
    started = time.monotonic()
    assert requests.get(f"{svc.url}/api/health", timeout=5).status_code == 200
    assert requests.get(f"{svc.url}/api/tags", timeout=5).status_code == 200
    assert time.monotonic() - started < 2
    # every answer says who it comes from, errors too
    assert requests.get(f"{svc.url}/api/v1/nodes", timeout=5).headers["X-Model-Manager"]
    assert requests.get(f"{svc.url}/no/such", timeout=5).headers["X-Model-Manager"]


def svc_dir(svc: Service) -> str:
    return str(svc.manager.config.DATA_DIR)


# ------------------------------------- 5. a download elsewhere holds back no job here


def test_a_download_on_one_node_does_not_hold_jobs_another_node_can_run(
    make_sim: Any, make_service: Any
) -> None:
    a, b = make_sim(vram_mb=4096), make_sim(vram_mb=4096)
    model = "tinyllama:1.1b"
    assert requests.delete(f"{b.url}/api/delete", json={"model": model}, timeout=5).ok
    svc = make_service(
        a, nvml=False, VRAM_BUDGET_MB=4096, OLLAMA_BACKENDS=f"gpu0={a.url},gpu1={b.url}"
    )
    b.inject_fault(count=5, endpoint="/api/pull", mode="hang", seconds=30)
    r = requests.post(
        f"{svc.url}/api/v1/models/download", json={"model": model, "node": "gpu1"}, timeout=10
    )
    assert r.status_code == 202, r.text
    assert disk_status(svc, model, "gpu0")["status"] == "DOWNLOADED"
    assert disk_status(svc, model, "gpu1")["status"] == "DOWNLOADING"
    done = svc.wait_done([svc.submit(model=model, prompt=f"p{i}") for i in range(3)], timeout=10)
    assert {(d["status"], d["node"]) for d in done.values()} == {("complete", "gpu0")}


# ------------------------------------------------------------ 6. and 8. health per node


def test_health_reports_each_node_with_its_own_short_error(
    make_sim: Any, make_service: Any
) -> None:
    a, b = make_sim(vram_mb=4096), make_sim(vram_mb=4096)
    svc = make_service(
        a, nvml=False, VRAM_BUDGET_MB=4096, OLLAMA_BACKENDS=f"gpu0={a.url},gpu1={b.url}"
    )
    wait_until(lambda: requests.get(f"{svc.url}/api/health", timeout=5).json()["status"] == "ok")
    b.stop()
    health = wait_until(
        lambda: (
            (h := requests.get(f"{svc.url}/api/health", timeout=5).json())["status"] == "degraded"
            and h
        )
    )
    by_name = {n["name"]: n for n in health["nodes"]}
    assert by_name["gpu0"] == {"name": "gpu0", "url": a.url, "up": True, "error": None}
    down = by_name["gpu1"]
    assert down["url"] == b.url and down["up"] is False
    assert down["error"] == f"cannot reach Ollama at {b.url}: connection refused", down
    # the summary older clients read: the node that is down, not an unused default
    assert health["backend"] == {
        "url": b.url,
        "up": False,
        "error": f"node gpu1: cannot reach Ollama at {b.url}: connection refused",
    }
    assert "11434" not in str(health)


# ----------------------------------------------------- 7. removing a node stops downloads


def test_removing_a_node_cancels_its_downloads(make_sim: Any, make_service: Any) -> None:
    a, b = make_sim(vram_mb=4096), make_sim(vram_mb=4096)
    svc = make_service(a, nvml=False, VRAM_BUDGET_MB=4096)
    assert register(svc, name="late", url=b.url, vram_budget_mb=4096).status_code == 201
    b.set_pull(closed=True)
    r = requests.post(
        f"{svc.url}/api/v1/models/download",
        json={"model": "gemma2:2b", "node": "late"},
        timeout=10,
    )
    assert r.status_code == 202, r.text
    wait_until(lambda: b.pulls_held() == 1, what="the pull is held")
    assert requests.delete(f"{svc.url}/api/v1/nodes/late", timeout=5).status_code == 202
    downloads = svc.manager.downloads
    assert downloads.on("late") == [] and downloads.outcome("late", model_key("gemma2:2b")) is None
    wait_until(lambda: b.pulls_held() == 0, what="the pull's request was aborted")
    wait_until(lambda: "late" not in nodes(svc), what="the node is removed")
    b.set_pull(closed=False)
    assert "gemma2:2b" not in [
        m["name"] for m in requests.get(f"{b.url}/api/tags").json()["models"]
    ]


# ------------------------------------------------------------------ 8. short error texts


def test_a_download_to_a_node_that_does_not_answer_is_503_in_plain_words(
    make_sim: Any, make_service: Any
) -> None:
    a, b = make_sim(vram_mb=4096), make_sim(vram_mb=4096)
    svc = make_service(
        a, nvml=False, VRAM_BUDGET_MB=4096, OLLAMA_BACKENDS=f"gpu0={a.url},gpu1={b.url}"
    )
    b.stop()
    r = requests.post(
        f"{svc.url}/api/v1/models/download", json={"model": "gemma2:2b", "node": "gpu1"}, timeout=10
    )
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "BACKEND_UNAVAILABLE" and r.headers["Retry-After"].isdigit()
    assert (
        err["message"]
        == f"node gpu1's Ollama does not answer: cannot reach Ollama at {b.url}: connection refused"
    )


def test_a_download_cut_off_ends_partial_with_a_short_error(
    make_sim: Any, make_service: Any
) -> None:
    sim = make_sim(vram_mb=4096)
    svc = make_service(sim, nvml=False, VRAM_BUDGET_MB=4096)
    sim.set_pull(closed=True)
    r = requests.post(f"{svc.url}/api/v1/models/download", json={"model": "gemma2:2b"}, timeout=10)
    assert r.status_code == 202
    wait_until(lambda: sim.pulls_held() == 1, what="the pull is held")
    sim.stop()
    downloads = svc.manager.downloads  # the node's /api/tags is gone: read the record
    ended = wait_until(lambda: downloads.outcome("local", model_key("gemma2:2b")), what="it ended")
    assert ended.status == "PARTIAL" and ended.error is not None
    assert plain(ended.error) and ended.error.endswith(f"{sim.url}: connection refused"), ended


def test_a_pull_that_stalls_before_sending_anything_is_retried(
    make_sim: Any, make_service: Any
) -> None:
    sim = make_sim(vram_mb=4096)
    svc = make_service(sim, nvml=False, VRAM_BUDGET_MB=4096, REQUEST_TIMEOUT=0.5)
    sim.inject_fault(count=1, endpoint="/api/pull", mode="hang", seconds=3)
    r = requests.post(f"{svc.url}/api/v1/models/download", json={"model": "gemma2:2b"}, timeout=10)
    assert r.status_code == 202
    wait_until(lambda: disk_status(svc, "gemma2:2b", "local")["status"] == "DOWNLOADED")
