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


# ------------------------------------------- 9. a node registered on this host: its GPUs

GPU_MB = 8192


def _three_gpu_host(make_sim: Any, make_service: Any, gpu_state: Any) -> tuple[Any, ...]:
    """Three fake-NVML GPUs on one host, one Ollama on each; a and b configured on GPUs 0
    and 1, c (on GPU 2) left to register."""
    a, b, c = (make_sim(vram_mb=GPU_MB, nvml_state=str(gpu_state), nvml_index=i) for i in range(3))
    settings = {"OLLAMA_BACKENDS": f"a={a.url},b={b.url}", "OLLAMA_BACKEND_GPUS": "a=0,b=1"}
    return make_service(a, **settings), settings, a, c


def _devices(svc: Service, name: str) -> list[str]:
    node = wait_until(lambda: (n := nodes(svc).get(name)) and n["devices"] and n, what=name)
    return [d["name"] for d in node["devices"]]


def _gpu_error(r: requests.Response) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    err = dict(r.json()["error"])
    field = err["details"]["field"]  # gpus, or gpus[0] for a bad item
    assert err["code"] == "INVALID_REQUEST" and field.split("[")[0] == "gpus", err
    return err


@pytest.mark.parametrize("gpus", [None, [2]])
def test_a_node_registered_on_this_host_gets_a_free_gpu_and_keeps_it_after_a_restart(
    make_sim: Any, make_service: Any, gpu_state: Any, gpus: list[int] | None
) -> None:
    svc, settings, a, c = _three_gpu_host(make_sim, make_service, gpu_state)
    body: dict[str, Any] = {"name": "c", "url": f"http://127.0.0.1:{c.port}"}
    if gpus is not None:
        body["gpus"] = gpus
    r = register(svc, **body)
    assert r.status_code == 201, r.text
    assert [d["name"] for d in r.json()["devices"]] == ["c:gpu2"], r.json()
    assert r.json()["vram"]["total_mb"] == GPU_MB
    assert _devices(svc, "a") == ["a:gpu0"] and _devices(svc, "b") == ["b:gpu1"]
    # the host's memory is counted once: three GPUs, not a and b's counted again under c
    wait_until(
        lambda: (
            requests.get(f"{svc.url}/api/stats", timeout=5).json()["resources"]["vram"]["total"]
            == 3 * GPU_MB * 1024 * 1024
        ),
        what="three GPUs' memory in /api/stats",
    )
    svc.stop()
    again = make_service(a, **settings)
    assert _devices(again, "c") == ["c:gpu2"]
    assert nodes(again)["c"]["registered"] is True


def test_gpus_of_another_node_or_that_nvml_lacks_are_refused_naming_the_field(
    make_sim: Any, make_service: Any, gpu_state: Any
) -> None:
    svc, _, _, c = _three_gpu_host(make_sim, make_service, gpu_state)
    err = _gpu_error(register(svc, name="c", url=c.url, gpus=[0]))
    assert "GPU 0" in err["message"] and "node a uses" in err["message"], err
    assert err["details"]["owner"] == "a" and err["details"]["gpus_free"] == [2]
    err = _gpu_error(register(svc, name="c", url=c.url, gpus=[2, 1]))
    assert "node b uses" in err["message"], err
    err = _gpu_error(register(svc, name="c", url=c.url, gpus=[7]))
    assert "GPU 7" in err["message"] and "3 GPU(s)" in err["message"], err
    for bad in ([], [-1], [2, 2], ["2"], 2):
        _gpu_error(register(svc, name="c", url=c.url, gpus=bad))
    # gpus are this host's: refused for a node elsewhere, and beside another memory source
    err = _gpu_error(register(svc, name="far", url="http://10.255.255.1:11434", gpus=[2]))
    assert "another host" in err["message"], err
    _gpu_error(register(svc, name="c", url=c.url, gpus=[2], vram_budget_mb=4096))
    assert set(nodes(svc)) == {"a", "b"}  # nothing was added
    assert register(svc, name="c", url=c.url, gpus=[2]).status_code == 201


def test_with_no_gpu_left_a_local_node_is_refused_naming_gpus_and_vram_budget_mb(
    make_sim: Any, make_service: Any, gpu_state: Any
) -> None:
    svc, _, _, c = _three_gpu_host(make_sim, make_service, gpu_state)
    assert register(svc, name="c", url=c.url).status_code == 201
    d = make_sim(vram_mb=4096)  # a fourth Ollama on this host, no GPU of its own
    err = _gpu_error(register(svc, name="d", url=d.url))
    assert "no GPU of this host is left" in err["message"], err
    assert "gpus" in err["message"] and "vram_budget_mb" in err["message"], err
    assert "d" not in nodes(svc)
    r = register(svc, name="d", url=d.url, vram_budget_mb=4096)
    assert r.status_code == 201 and r.json()["memory_source"] == "budget", r.text


def test_a_stored_node_whose_gpu_the_settings_now_give_away_is_left_out(
    make_sim: Any, make_service: Any, gpu_state: Any
) -> None:
    svc, settings, a, c = _three_gpu_host(make_sim, make_service, gpu_state)
    assert register(svc, name="c", url=c.url).status_code == 201
    svc.stop()
    again = make_service(a, **{**settings, "OLLAMA_BACKEND_GPUS": "a=0,b=1+2"})
    assert set(nodes(again)) == {"a", "b"}
    assert _devices(again, "b") == ["b:gpu1", "b:gpu2"]
