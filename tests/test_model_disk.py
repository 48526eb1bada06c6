"""Models on the nodes' disks over real HTTP: status, download, delete, list and space.

The service runs against the Ollama simulator, which keeps a real models directory
(manifests and sparse blobs) and can hold pulls at a gate, drop byte counts, or break a
pull half way (``partial`` faults); the store is a real SQLite file. Every answer is
checked as a user would read it, against what the simulator's own ``/api/tags`` and
models directory say.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Service, wait_until

INSTALLED = "qwen2.5:0.5b"
REGISTRY = ["qwen2.5:3b", "gemma2:2b"]  # only in the simulator's registry: pull them
GB = 1_000_000_000


def post(svc: Service, path: str, body: Any) -> requests.Response:
    return svc.session.post(svc.url + path, json=body, timeout=10)


def delete(svc: Service, body: Any) -> requests.Response:
    return svc.session.delete(svc.url + "/api/v1/models", json=body, timeout=10)


def status(svc: Service, model: str, **kw: Any) -> dict[str, Any]:
    r = post(svc, "/api/v1/models/status", {"model": model, **kw})
    assert r.status_code == 200, r.text
    return dict(r.json())


def download(svc: Service, model: str, **kw: Any) -> requests.Response:
    return post(svc, "/api/v1/models/download", {"model": model, **kw})


def listing(svc: Service, **params: str) -> dict[str, Any]:
    r = svc.session.get(svc.url + "/api/v1/models/list", params=params, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def tags(sim: Any) -> dict[str, dict[str, Any]]:
    models = requests.get(sim.url + "/api/tags", timeout=10).json()["models"]
    return {m["name"]: m for m in models}


def pulls_of(sim: Any, model: str) -> int:
    """Pull requests for ``model`` the simulator received (probes name no model)."""
    log = sim.stats()["request_log"]
    return sum(1 for e in log if e["endpoint"] == "/api/pull" and e.get("model") == model)


def error(r: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"] and body["error"]["code"] == code, body
    return dict(body["error"])


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "ollama-models"


@pytest.fixture
def disk_sim(make_sim: Any, models_dir: Path) -> Any:
    return make_sim(vram_mb=24576, models_dir=str(models_dir))


@pytest.fixture
def svc(disk_sim: Any, make_service: Any, models_dir: Path) -> Service:
    return make_service(  # type: ignore[no-any-return]
        disk_sim, nvml=False, VRAM_BUDGET_MB=24576, OLLAMA_MODELS_DIR=str(models_dir)
    )


# ------------------------------------------------------------------------------ status


def test_status_says_downloaded_with_the_digest_and_size_ollama_lists(
    svc: Service, disk_sim: Any
) -> None:
    listed = tags(disk_sim)[INSTALLED]
    for spelling in (INSTALLED, "Qwen2.5:0.5B", "library/qwen2.5:0.5b"):
        answer = status(svc, spelling)
        assert answer == {
            "model": spelling,
            "node": "local",
            "status": "DOWNLOADED",
            "digest": listed["digest"],
            "size_bytes": listed["size"],
        }
    assert status(svc, "qwen2.5:3b") == {
        "model": "qwen2.5:3b",
        "node": "local",
        "status": "NOT_FOUND",
    }
    assert status(svc, "qwen2.5")["status"] == "NOT_FOUND"  # no tag: latest, which it lacks


def test_a_download_runs_with_progress_then_the_model_is_downloaded(
    svc: Service, disk_sim: Any
) -> None:
    disk_sim.set_pull(closed=True)
    r = download(svc, "qwen2.5:3b")
    assert r.status_code == 202, r.text
    started = r.json()
    assert started["status"] == "DOWNLOADING" and started["node"] == "local"
    assert started["model"] == "qwen2.5:3b" and started["task_id"]
    wait_until(lambda: disk_sim.pulls_held() == 1, what="the pull is held at the gate")
    now = status(svc, "qwen2.5:3b")
    assert now["status"] == "DOWNLOADING" and now["task_id"] == started["task_id"]
    progress = now["progress"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", progress["start_time"])
    assert progress["elapsed_seconds"] >= 0
    # Ollama announced the weights layer: its size, none of it yet
    assert progress["total_bytes"] > 1_900_000_000 and progress["completed_bytes"] == 0
    assert "qwen2.5:3b" not in tags(disk_sim)
    disk_sim.set_pull(closed=False)
    done = wait_until(lambda: (s := status(svc, "qwen2.5:3b"))["status"] == "DOWNLOADED" and s)
    assert done["digest"] == tags(disk_sim)["qwen2.5:3b"]["digest"]
    assert "progress" not in done


# ------------------------------------------------------------------- 409, 429, per node


def test_a_fourth_download_on_a_node_is_429_and_the_same_model_twice_409(
    svc: Service, disk_sim: Any
) -> None:
    for name in ("tinyllama:1.1b", "smollm:1.7b"):  # room in the registry for four pulls
        assert delete(svc, {"model": name}).status_code == 200
    disk_sim.set_pull(closed=True)
    first = [download(svc, m) for m in ("qwen2.5:3b", "gemma2:2b", "tinyllama:1.1b")]
    assert [r.status_code for r in first] == [202, 202, 202]
    refused = download(svc, "smollm:1.7b")
    err = error(refused, 429, "QUEUE_FULL")
    assert refused.headers["Retry-After"].isdigit() and int(refused.headers["Retry-After"]) >= 1
    assert "MAX_DOWNLOADS" in err["message"] and err["details"]["max"] == 3
    again = download(svc, "gemma2:2b")  # already downloading wins over the limit
    err = error(again, 409, "CONFLICT")
    assert err["details"]["task_id"] == first[1].json()["task_id"]
    assert status(svc, "smollm:1.7b")["status"] == "NOT_FOUND"  # the refused one never began
    disk_sim.set_pull(closed=False)
    for name in ("qwen2.5:3b", "gemma2:2b", "tinyllama:1.1b"):
        wait_until(lambda n=name: status(svc, n)["status"] == "DOWNLOADED")  # type: ignore[misc]
    assert download(svc, "smollm:1.7b").status_code == 202  # room again
    wait_until(lambda: status(svc, "smollm:1.7b")["status"] == "DOWNLOADED")


def test_the_download_limit_is_per_node_and_node_is_needed_with_several(
    make_sim: Any, make_service: Any
) -> None:
    a, b = make_sim(), make_sim()
    svc = make_service(
        a,
        nvml=False,
        VRAM_BUDGET_MB=24576,
        MAX_DOWNLOADS=1,
        OLLAMA_BACKENDS=f"a={a.url},b={b.url}",
    )
    a.set_pull(closed=True)
    b.set_pull(closed=True)
    err = error(download(svc, "qwen2.5:3b"), 400, "INVALID_REQUEST")
    assert err["details"]["field"] == "node" and "a, b" in err["message"]
    error(post(svc, "/api/v1/models/status", {"model": INSTALLED}), 400, "INVALID_REQUEST")
    assert download(svc, "qwen2.5:3b", node="a").status_code == 202
    error(download(svc, "gemma2:2b", node="a"), 429, "QUEUE_FULL")
    assert download(svc, "gemma2:2b", node="b").status_code == 202  # b has its own slot
    assert status(svc, "qwen2.5:3b", node="b")["status"] == "NOT_FOUND"
    assert status(svc, "gemma2:2b", node="b")["status"] == "DOWNLOADING"
    # the list covers both nodes unless one is named
    entries = {(m["node"], m["model"], m["status"]) for m in listing(svc)["models"]}
    assert ("a", "qwen2.5:3b", "DOWNLOADING") in entries
    assert ("b", "gemma2:2b", "DOWNLOADING") in entries
    assert {m["node"] for m in listing(svc, node="b")["models"]} == {"b"}
    a.set_pull(closed=False)
    b.set_pull(closed=False)
    wait_until(lambda: status(svc, "qwen2.5:3b", node="a")["status"] == "DOWNLOADED")


# ------------------------------------------------------------- retries, PARTIAL, resume


def test_a_pull_that_keeps_failing_ends_partial_with_the_nodes_message(
    svc: Service, disk_sim: Any, models_dir: Path
) -> None:
    disk_sim.inject_fault(count=3, endpoint="/api/pull", mode="partial")  # MAX_ATTEMPTS is 3
    task = download(svc, "qwen2.5:3b").json()["task_id"]
    ended = wait_until(lambda: (s := status(svc, "qwen2.5:3b"))["status"] != "DOWNLOADING" and s)
    assert ended == {
        "model": "qwen2.5:3b",
        "node": "local",
        "status": "PARTIAL",
        "task_id": task,
        "error": "max retries exceeded: unexpected EOF",
    }
    assert pulls_of(disk_sim, "qwen2.5:3b") == 3  # tried three times
    # Ollama keeps what it downloaded; the list shows the stopped download
    assert any(p.name.endswith("-partial") for p in (models_dir / "blobs").iterdir())
    [entry] = [m for m in listing(svc)["models"] if m["model"] == "qwen2.5:3b"]
    assert entry["status"] == "PARTIAL" and entry["error"].startswith("max retries exceeded")
    assert entry["size_bytes"] is None and entry["digest"] is None
    # downloading again resumes it
    assert download(svc, "qwen2.5:3b").status_code == 202
    wait_until(lambda: status(svc, "qwen2.5:3b")["status"] == "DOWNLOADED")
    assert not any(p.name.endswith("-partial") for p in (models_dir / "blobs").iterdir())


def test_a_pull_that_fails_then_succeeds_is_retried_and_ends_downloaded(
    svc: Service, disk_sim: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="modelmanager.DISK")
    disk_sim.inject_fault(count=2, endpoint="/api/pull", mode="partial")
    download(svc, "gemma2:2b")
    wait_until(lambda: status(svc, "gemma2:2b")["status"] == "DOWNLOADED")
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 2 and "(attempt 1/3)" in retries[0] and "(attempt 2/3)" in retries[1]


def test_a_model_the_registry_lacks_ends_not_found_with_ollamas_message(svc: Service) -> None:
    assert download(svc, "no-such-model:7b").status_code == 202
    ended = wait_until(
        lambda: (s := status(svc, "no-such-model:7b"))["status"] != "DOWNLOADING" and s
    )
    assert ended["status"] == "NOT_FOUND"
    assert ended["error"] == "pull model manifest: file does not exist"


def test_a_download_under_way_at_a_restart_resumes_after_it(
    disk_sim: Any, make_service: Any, models_dir: Path
) -> None:
    settings = {"nvml": False, "VRAM_BUDGET_MB": 24576, "OLLAMA_MODELS_DIR": str(models_dir)}
    first = make_service(disk_sim, **settings)
    disk_sim.set_pull(closed=True)
    download(first, "qwen2.5:3b")
    wait_until(lambda: disk_sim.pulls_held() == 1)
    first.stop()  # the pull is aborted; its record stays "downloading"
    wait_until(lambda: disk_sim.pulls_held() == 0)
    disk_sim.set_pull(closed=False)
    second = make_service(disk_sim, **settings)
    wait_until(lambda: status(second, "qwen2.5:3b")["status"] == "DOWNLOADED")
    assert pulls_of(disk_sim, "qwen2.5:3b") == 2


# ------------------------------------------------------------------------------ delete


def test_delete_cancels_a_download_under_way(svc: Service, disk_sim: Any) -> None:
    disk_sim.set_pull(closed=True)
    task = download(svc, "qwen2.5:3b").json()["task_id"]
    wait_until(lambda: disk_sim.pulls_held() == 1)
    r = delete(svc, {"model": "qwen2.5:3b"})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "model": "qwen2.5:3b",
        "node": "local",
        "status": "cancelled",
        "task_id": task,
    }
    assert status(svc, "qwen2.5:3b")["status"] == "NOT_FOUND"
    # Ollama saw the pull's client go: it stops pulling
    wait_until(lambda: disk_sim.pulls_held() == 0 and disk_sim.stats()["cancelled"] >= 1)
    disk_sim.set_pull(closed=False)
    assert "qwen2.5:3b" not in tags(disk_sim)
    assert download(svc, "qwen2.5:3b").status_code == 202  # it may start again


def test_delete_removes_the_model_from_the_node(
    svc: Service, disk_sim: Any, models_dir: Path
) -> None:
    manifest = models_dir / "manifests/registry.ollama.ai/library/tinyllama/1.1b"
    assert manifest.exists()
    r = delete(svc, {"model": "tinyllama:1.1b"})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "model": "tinyllama:1.1b",
        "node": "local",
        "status": "deleted",
        "deleted": ["tinyllama:1.1b"],
    }
    assert "tinyllama:1.1b" not in tags(disk_sim) and not manifest.exists()
    assert status(svc, "tinyllama:1.1b")["status"] == "NOT_FOUND"
    error(delete(svc, {"model": "tinyllama:1.1b"}), 404, "NOT_FOUND")


def test_delete_every_tag_or_only_the_tags_of_one_digest(svc: Service, disk_sim: Any) -> None:
    qwen = {name: m for name, m in tags(disk_sim).items() if name.startswith("qwen2.5:")}
    assert {"qwen2.5:0.5b", "qwen2.5:1.5b", "qwen2.5:7b"} <= set(qwen)
    # a copy shares its source's digest (and is another model: not a qwen2.5 tag)
    copy = {"source": "qwen2.5:1.5b", "destination": "mine:v1"}
    requests.post(disk_sim.url + "/api/copy", json=copy, timeout=10).raise_for_status()
    digest = qwen["qwen2.5:1.5b"]["digest"]
    error(delete(svc, {"model": "qwen2.5", "digest": "0123456789ab"}), 404, "NOT_FOUND")
    r = delete(svc, {"model": "qwen2.5", "digest": "sha256:" + digest[:12]})
    assert r.json()["deleted"] == ["qwen2.5:1.5b"]
    assert "mine:v1" in tags(disk_sim)
    error(delete(svc, {"model": "qwen2.5:0.5b", "digest": digest}), 404, "NOT_FOUND")
    r = delete(svc, {"model": "qwen2.5"})  # no tag: every tag of the model
    assert sorted(r.json()["deleted"]) == sorted(set(qwen) - {"qwen2.5:1.5b"})
    assert not [n for n in tags(disk_sim) if n.startswith("qwen2.5:")]
    assert "mine:v1" in tags(disk_sim)


def test_delete_is_refused_while_jobs_wait_or_run_unless_forced(
    svc: Service, disk_sim: Any
) -> None:
    disk_sim.set_gate(True)
    running = svc.submit(model=INSTALLED, prompt="hold")
    waiting = svc.submit(model=INSTALLED, prompt="behind it", priority="low")
    wait_until(lambda: svc.job(running)["status"] == "running")
    err = error(delete(svc, {"model": INSTALLED}), 409, "CONFLICT")
    assert err["details"]["jobs"] == 2 and "force" in err["message"]
    error(delete(svc, {"model": "qwen2.5"}), 409, "CONFLICT")  # every tag: it is one
    assert INSTALLED in tags(disk_sim)
    r = delete(svc, {"model": INSTALLED, "force": True})
    assert r.status_code == 200 and r.json()["status"] == "deleted", r.text
    assert INSTALLED not in tags(disk_sim)
    disk_sim.set_gate(False)
    assert svc.wait_done([running])[running]["status"] == "complete"  # the runner stays
    svc.wait_done([waiting])


def test_cancelling_a_download_jobs_wait_for_is_refused_unless_forced(
    svc: Service, disk_sim: Any
) -> None:
    disk_sim.set_pull(closed=True)
    download(svc, "qwen2.5:3b")
    job = svc.submit(model="qwen2.5:3b", prompt="after the download")
    error(delete(svc, {"model": "qwen2.5:3b"}), 409, "CONFLICT")
    assert delete(svc, {"model": "qwen2.5:3b", "force": True}).json()["status"] == "cancelled"
    failed = svc.wait_done([job])[job]
    assert failed["status"] == "failed" and failed["error_code"] == "MODEL_NOT_FOUND"


# ------------------------------------------------------------------- jobs and downloads


def test_jobs_for_a_model_that_is_downloading_wait_for_it(svc: Service, disk_sim: Any) -> None:
    disk_sim.set_pull(closed=True)
    download(svc, "qwen2.5:3b")
    jobs = [svc.submit(model="qwen2.5:3b", prompt=f"job {i}") for i in range(2)]
    wait_until(
        lambda: "qwen2.5:3b" in svc.session.get(f"{svc.url}/api/stats").json()["waiting_for"]
    )
    waits = svc.session.get(f"{svc.url}/api/stats").json()["waiting_for"]
    assert waits["qwen2.5:3b"] == "pulling"
    assert {svc.job(j)["status"] for j in jobs} == {"pending"}
    disk_sim.set_pull(closed=False)
    done = svc.wait_done(jobs)
    assert {d["status"] for d in done.values()} == {"complete"}


def test_jobs_waiting_for_a_download_that_ends_partial_fail_with_its_message(
    svc: Service, disk_sim: Any
) -> None:
    disk_sim.inject_fault(count=3, endpoint="/api/pull", mode="partial")
    disk_sim.set_pull(closed=True)
    download(svc, "qwen2.5:3b")
    job = svc.submit(model="qwen2.5:3b", prompt="never")
    wait_until(lambda: disk_sim.pulls_held() == 1)
    disk_sim.set_pull(closed=False)
    failed = svc.wait_done([job])[job]
    assert failed["status"] == "failed"
    assert failed["error"] == (
        "model 'qwen2.5:3b' could not be pulled: max retries exceeded: unexpected EOF"
    )


def test_with_auto_pull_a_job_downloads_its_model_through_the_same_downloads(
    disk_sim: Any, make_service: Any
) -> None:
    svc = make_service(disk_sim, nvml=False, VRAM_BUDGET_MB=24576, AUTO_PULL=True)
    disk_sim.set_pull(closed=True)
    job = svc.submit(model="gemma2:2b", prompt="pull me")
    wait_until(lambda: status(svc, "gemma2:2b")["status"] == "DOWNLOADING")
    error(download(svc, "gemma2:2b"), 409, "CONFLICT")
    disk_sim.set_pull(closed=False)
    assert svc.wait_done([job])[job]["status"] == "complete"


# ------------------------------------------------------------------------- list, space


def test_list_shows_every_model_ollama_lists_and_the_downloads(svc: Service, disk_sim: Any) -> None:
    disk_sim.set_pull(closed=True)
    download(svc, "gemma2:2b")
    answer = listing(svc)
    assert set(answer) == {"models"}
    downloaded = {m["model"]: m for m in answer["models"] if m["status"] == "DOWNLOADED"}
    assert {name: (m["size"], m["digest"]) for name, m in tags(disk_sim).items()} == {
        name: (m["size_bytes"], m["digest"]) for name, m in downloaded.items()
    }
    [pulling] = [m for m in answer["models"] if m["status"] == "DOWNLOADING"]
    assert pulling["model"] == "gemma2:2b" and pulling["node"] == "local"
    assert pulling["size_bytes"] is None and "progress" in pulling


def test_space_reads_the_models_directory_of_a_node_on_this_host(
    svc: Service, models_dir: Path
) -> None:
    def on_disk() -> int:
        return sum(p.stat().st_size for p in models_dir.rglob("*") if p.is_file())

    r = svc.session.get(svc.url + "/api/v1/models/space", timeout=10)
    assert r.status_code == 200
    [node] = r.json()["nodes"]
    assert node["node"] == "local" and node["cache_path"] == str(models_dir)
    assert node["cache_size_gb"] == round(on_disk() / GB, 3)
    free = shutil.disk_usage(models_dir).free / GB
    assert abs(node["available_gb"] - free) < 1.0  # other programs write meanwhile
    assert "note" not in node
    before = node["cache_size_gb"]
    download(svc, "qwen2.5:3b")
    wait_until(lambda: status(svc, "qwen2.5:3b")["status"] == "DOWNLOADED")
    after = svc.session.get(svc.url + "/api/v1/models/space").json()["nodes"][0]
    assert round(after["cache_size_gb"] - before, 2) == round(1_929_912_432 / GB, 2)


def test_space_of_a_node_whose_directory_cannot_be_read_says_why(
    disk_sim: Any, make_service: Any, tmp_path: Path
) -> None:
    svc = make_service(disk_sim, nvml=False, OLLAMA_MODELS_DIR=str(tmp_path / "nowhere"))
    [node] = svc.session.get(svc.url + "/api/v1/models/space").json()["nodes"]
    assert node["available_gb"] is None and node["cache_path"] is None
    listed = sum(m["size"] for m in tags(disk_sim).values())
    assert node["cache_size_gb"] == round(listed / GB, 3)
    assert "OLLAMA_MODELS_DIR" in node["note"] and "/api/tags" in node["note"]


def _own_address() -> str | None:
    """An address of this host that is not loopback (what a remote node looks like)."""
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: it picks the route's address
            address = str(s.getsockname()[0])
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_space_of_a_node_on_another_host_says_so(make_sim: Any, make_service: Any) -> None:
    address = _own_address()
    if address is None:
        pytest.skip("this host has no address but loopback")
    sim = make_sim(host="0.0.0.0")
    svc = make_service(
        sim, nvml=False, VRAM_BUDGET_MB=8192, OLLAMA_BACKENDS=f"box2=http://{address}:{sim.port}"
    )
    [node] = svc.session.get(svc.url + "/api/v1/models/space").json()["nodes"]
    assert node["node"] == "box2" and node["available_gb"] is None and node["cache_path"] is None
    assert "another host" in node["note"]
    assert node["cache_size_gb"] == round(sum(m["size"] for m in tags(sim).values()) / GB, 3)


# ----------------------------------------------------------------------- bad requests

STATUS, DOWNLOAD = "/api/v1/models/status", "/api/v1/models/download"


@pytest.mark.parametrize("path", [STATUS, DOWNLOAD, "delete"])
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "model"),
        ({"model": ""}, "model"),
        ({"model": 7}, "model"),
        ({"model": None}, "model"),
        ({"model": "bad name!"}, "model"),
        ({"model": "-a:1"}, "model"),
        ({"model": "x" * 200}, "model"),
        ({"model": INSTALLED, "node": "Bad Node"}, "node"),
        ({"model": INSTALLED, "node": 1}, "node"),
        ({"model": INSTALLED, "extra": 1}, "extra"),
        ([INSTALLED], None),
    ],
)
def test_bad_bodies_are_400_naming_the_field(
    svc: Service, path: str, body: Any, field: str | None
) -> None:
    r = delete(svc, body) if path == "delete" else post(svc, path, body)
    err = error(r, 400, "INVALID_REQUEST")
    assert err["details"].get("field") == field


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"digest": "xyz"}, "digest"),
        ({"digest": "12345"}, "digest"),  # too short to name one
        ({"digest": "A8B0C5157701"}, "digest"),  # Ollama writes digests in lower case
        ({"digest": 12345678901234}, "digest"),
        ({"force": "yes"}, "force"),
        ({"force": 1}, "force"),
    ],
)
def test_bad_delete_fields_are_400_naming_them(
    svc: Service, extra: dict[str, Any], field: str
) -> None:
    err = error(delete(svc, {"model": INSTALLED, **extra}), 400, "INVALID_REQUEST")
    assert err["details"]["field"] == field


@pytest.mark.parametrize("path", ["/api/v1/models/list", "/api/v1/models/space"])
@pytest.mark.parametrize(
    ("query", "status_code", "field"),
    [
        ("node=Bad!", 400, "node"),
        ("node=local&node=local", 400, "node"),
        ("limit=3", 400, "limit"),
        ("node=elsewhere", 404, None),
    ],
)
def test_bad_queries_are_refused(
    svc: Service, path: str, query: str, status_code: int, field: str | None
) -> None:
    r = svc.session.get(f"{svc.url}{path}?{query}", timeout=10)
    err = error(r, status_code, "INVALID_REQUEST" if status_code == 400 else "NOT_FOUND")
    assert err["details"].get("field") == field


@pytest.mark.parametrize("path", [STATUS, DOWNLOAD, "delete"])
def test_an_unknown_node_is_404_naming_the_nodes(svc: Service, path: str) -> None:
    body = {"model": INSTALLED, "node": "gpu9"}
    r = delete(svc, body) if path == "delete" else post(svc, path, body)
    err = error(r, 404, "NOT_FOUND")
    assert "gpu9" in err["message"] and "local" in err["message"]


def test_a_node_that_cannot_be_reached_is_503_with_retry_after(
    make_service: Any, make_sim: Any
) -> None:
    sim = make_sim()
    svc = make_service(sim, nvml=False, VRAM_BUDGET_MB=8192)
    sim.stop()
    r = post(svc, STATUS, {"model": INSTALLED})
    err = error(r, 503, "BACKEND_UNAVAILABLE")
    assert r.headers["Retry-After"].isdigit() and "local" in err["message"]
    listed = listing(svc)  # the list answers, naming the node it could not read
    assert listed["models"] == [] and listed["unreachable"][0]["node"] == "local"
