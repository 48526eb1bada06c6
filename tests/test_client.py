"""modelmanager.client against a real service over HTTP, and against an older Model
Manager (this repository at the release before the GPU, node and model-disk endpoints
and ``?wait``), run as a subprocess."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelmanager.client import (
    APINotImplemented,
    ClientError,
    DeleteResult,
    DownloadTask,
    ModelManagerClient,
    ModelStatus,
    Unreachable,
)
from tests.conftest import ROOT, Service, free_port, wait_until

MODEL = "qwen2.5:0.5b"
OLDER = "5b3fb0b"  # the release before /api/v1/gpu, /api/v1/nodes, /api/v1/models and ?wait


@pytest.fixture
def svc(sim: Any, make_service: Any) -> Service:
    return make_service(sim)  # type: ignore[no-any-return]


@pytest.fixture
def mm(svc: Service) -> Iterator[ModelManagerClient]:
    with ModelManagerClient(svc.url) as client:
        yield client


# --------------------------------------------------------------------------------- jobs


def test_submit_and_wait_for_results(mm: ModelManagerClient) -> None:
    job_id = mm.submit({"model": MODEL, "prompt": "Say hello.", "metadata": {"run": 1}})
    job = mm.wait(job_id, timeout=30)
    assert job.finished and job.status == "complete" and job.job_id == job_id
    assert isinstance(job.result, str) and job.result and job.metadata == {"run": 1}
    assert job.node == "local" and job.attempts == 1
    ids = mm.submit_batch(
        [{"model": MODEL, "prompt": "one"}, {"model": "nomic-embed-text", "input": "two"}]
    )
    done = [mm.wait(i, timeout=30) for i in ids]
    assert [d.status for d in done] == ["complete", "complete"]
    assert isinstance(done[1].result, list) and len(done[1].result) == 1
    assert mm.get(ids[0]).status == "complete"


def test_wait_returns_the_job_as_it_stands_at_the_timeout(mm: ModelManagerClient, sim: Any) -> None:
    sim.set_gate(True)
    job_id = mm.submit({"model": MODEL, "prompt": "held"})
    early = mm.wait(job_id, timeout=0.3)
    assert not early.finished and early.status in ("pending", "queued", "running")
    sim.set_gate(False)
    assert mm.wait(job_id, timeout=30).status == "complete"


def test_cancel_and_the_errors_of_the_job_api(mm: ModelManagerClient, sim: Any) -> None:
    sim.set_gate(True)
    job_id = mm.submit({"model": MODEL, "prompt": "to cancel"})
    wait_until(lambda: mm.get(job_id).status == "running")
    assert mm.cancel(job_id) == {"job_id": job_id, "status": "cancelled", "was": "running"}
    with pytest.raises(ClientError) as conflict:
        mm.cancel(job_id)
    assert conflict.value.status == 409 and conflict.value.code == "CONFLICT"
    assert conflict.value.details["status"] == "cancelled"
    with pytest.raises(ClientError) as missing:
        mm.get("no-such-job")
    assert missing.value.status == 404 and not isinstance(missing.value, APINotImplemented)
    with pytest.raises(ClientError) as bad:
        mm.submit({"model": "bad name!", "prompt": "x"})
    assert bad.value.status == 400 and bad.value.details["field"] == "model"
    sim.set_gate(False)


def test_stats_gpus_and_nodes(mm: ModelManagerClient) -> None:
    assert "queue" in mm.stats() and mm.health()["status"] in ("ok", "degraded")
    [gpu] = mm.gpu_devices()
    assert gpu.index == 0 and gpu.available and gpu.total_mb == 24576
    assert gpu.name == "NVIDIA GeForce RTX 4090"
    driver = mm.gpu_driver()
    assert driver.driver_version is None or isinstance(driver.driver_version, str)
    [node] = mm.nodes()
    assert node["name"] == "local" and node["url"].startswith("http://127.0.0.1:")


# ------------------------------------------------------------------------ models on disk


def test_models_on_disk(sim: Any, make_service: Any) -> None:
    svc = make_service(sim, MAX_DOWNLOADS=1)
    mm = ModelManagerClient(svc.url)
    here = mm.model_status(MODEL)
    assert isinstance(here, ModelStatus) and here.status == "DOWNLOADED" and here.digest
    assert mm.model_status("qwen2.5:3b").status == "NOT_FOUND"
    sim.set_pull(closed=True)
    task = mm.download_model("qwen2.5:3b")
    assert isinstance(task, DownloadTask) and task.status == "DOWNLOADING" and task.node == "local"
    wait_until(lambda: sim.pulls_held() == 1)
    pulling = mm.model_status("qwen2.5:3b")
    assert pulling.progress is not None and pulling.progress.total_bytes
    with pytest.raises(ClientError) as twice:
        mm.download_model("qwen2.5:3b")
    assert twice.value.status == 409 and twice.value.details["task_id"] == task.task_id
    with pytest.raises(ClientError) as busy:
        mm.download_model("gemma2:2b")
    assert busy.value.status == 429 and busy.value.retry_after is not None
    entries = {e.model: e for e in mm.list_models()}
    assert entries["qwen2.5:3b"].status == "DOWNLOADING" and entries[MODEL].size_bytes
    [space] = mm.disk_space()
    assert space.node == "local" and space.cache_size_gb and space.cache_size_gb > 0
    cancelled = mm.delete_model("qwen2.5:3b")
    assert cancelled == DeleteResult("qwen2.5:3b", "local", "cancelled", (), task.task_id)
    deleted = mm.delete_model("tinyllama:1.1b")
    assert deleted.status == "deleted" and deleted.deleted == ("tinyllama:1.1b",)
    with pytest.raises(ClientError) as gone:
        mm.delete_model("tinyllama:1.1b")
    assert gone.value.status == 404 and gone.value.code == "NOT_FOUND"
    sim.set_pull(closed=False)
    mm.close()


def test_a_node_without_the_endpoint_raises_api_not_implemented(
    sim: Any, make_service: Any
) -> None:
    sim.disable_endpoint("/api/pull")
    mm = ModelManagerClient(make_service(sim).url)
    with pytest.raises(APINotImplemented) as info:
        mm.download_model("qwen2.5:3b")
    assert info.value.status == 501 and info.value.code == "NOT_IMPLEMENTED"
    mm.close()


def test_an_api_key_is_sent_and_a_missing_one_is_a_401(sim: Any, make_service: Any) -> None:
    key = "k" * 16
    svc = make_service(sim, API_KEY=key)
    with pytest.raises(ClientError) as refused:
        ModelManagerClient(svc.url).stats()
    assert refused.value.status == 401 and refused.value.code == "UNAUTHORIZED"
    assert "queue" in ModelManagerClient(svc.url, api_key=key).stats()


def test_a_service_that_does_not_answer_raises_unreachable() -> None:
    mm = ModelManagerClient(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(Unreachable) as info:
        mm.stats()
    assert info.value.status is None and isinstance(info.value, ClientError)


# ------------------------------------------------------------- an older Model Manager


@pytest.fixture
def older(tmp_path: Path) -> Iterator[str]:
    """The service at commit OLDER, run with --simulate; its base URL."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", OLDER],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.skip(f"git cannot give commit {OLDER} here: {archive.stderr[:200]!r}")
    tree = tmp_path / "older"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MM_")}
    log = (tmp_path / "older.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "main.py",
            "--simulate",
            "--sim-time-scale",
            "0.05",
            "--http-port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
            "--log-file",
            "",
        ],
        cwd=tree,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        probe = ModelManagerClient(url, timeout=2)

        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "older.log").read_text()[-2000:]
            try:
                probe.health()
            except Unreachable:
                return False
            return True

        wait_until(up, timeout=60, interval=0.1, what="the older service answers")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_an_older_model_manager_raises_api_not_implemented_for_what_it_lacks(
    older: str,
) -> None:
    mm = ModelManagerClient(older)
    calls = {
        "gpu_devices": mm.gpu_devices,
        "gpu_driver": mm.gpu_driver,
        "nodes": mm.nodes,
        "model_status": lambda: mm.model_status(MODEL),
        "download_model": lambda: mm.download_model(MODEL),
        "delete_model": lambda: mm.delete_model(MODEL),
        "list_models": mm.list_models,
        "disk_space": mm.disk_space,
    }
    for name, call in calls.items():
        with pytest.raises(APINotImplemented) as info:
            call()
        assert info.value.status == 404, name
    # what it has works: jobs (waited for by polling, as it ignores ?wait) and stats
    job_id = mm.submit({"model": MODEL, "prompt": "hello, older service"})
    assert mm.wait(job_id, timeout=60).status == "complete"
    assert "queue" in mm.stats()
    mm.close()
