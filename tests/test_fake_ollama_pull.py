"""The simulator's pulls and models directory: Ollama's pull stream, the pull gate, pulls
without byte counts, ``partial`` faults resumed by the next pull, and a models directory
laid out as Ollama's."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import requests

from modelmanager.simulator import CATALOG
from tests.conftest import wait_until

NEW = "qwen2.5:3b"  # in the registry only
SPEC = CATALOG[NEW]


def pull(sim: Any, model: str, **body: Any) -> list[dict[str, Any]]:
    r = requests.post(sim.url + "/api/pull", json={"model": model, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def tags(sim: Any) -> set[str]:
    return {m["name"] for m in requests.get(sim.url + "/api/tags", timeout=10).json()["models"]}


def test_a_pull_streams_as_ollama_does(make_sim: Any) -> None:
    sim = make_sim()
    lines = pull(sim, NEW)
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[-3:] == [
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    layers = [line for line in lines if "digest" in line]
    first = layers[0]
    digest = "sha256:" + SPEC.layer_digest("model")
    assert first == {"status": f"pulling {digest[7:19]}", "digest": digest, "total": first["total"]}
    done = [line.get("completed", 0) for line in layers if line["digest"] == digest]
    assert done == sorted(done) and done[-1] == first["total"]
    assert sum({line["digest"]: line["total"] for line in layers}.values()) == SPEC.disk_bytes
    assert NEW in tags(sim)
    # pulled again: each layer once, already complete
    again = [line for line in pull(sim, NEW) if "digest" in line]
    assert len(again) == len(SPEC.layers())
    assert all(line["completed"] == line["total"] for line in again)


def test_the_pull_gate_holds_pulls_until_it_opens(make_sim: Any) -> None:
    sim = make_sim()
    sim.set_pull(closed=True)
    result: list[list[dict[str, Any]]] = []
    thread = threading.Thread(target=lambda: result.append(pull(sim, NEW)))
    thread.start()
    wait_until(lambda: sim.pulls_held() == 1)
    assert NEW not in tags(sim) and sim.stats()["pull_gate_closed"]
    requests.post(sim.url + "/_sim/pull", json={"closed": False}, timeout=10).raise_for_status()
    thread.join(timeout=30)
    assert result[0][-1] == {"status": "success"} and NEW in tags(sim)


def test_pulls_without_byte_counts_send_status_lines_only(make_sim: Any) -> None:
    sim = make_sim()
    requests.post(sim.url + "/_sim/pull", json={"progress": False}, timeout=10).raise_for_status()
    lines = pull(sim, NEW)
    assert lines[-1] == {"status": "success"}
    assert all(set(line) == {"status"} for line in lines)


def test_a_partial_fault_keeps_half_a_layer_and_the_next_pull_resumes_it(
    make_sim: Any,
) -> None:
    sim = make_sim()
    sim.inject_fault(endpoint="/api/pull", mode="partial")
    probe = requests.post(sim.url + "/api/pull", json={}, timeout=10)  # takes no fault
    assert probe.status_code == 400 and probe.json() == {"error": "invalid model name"}
    broken = pull(sim, NEW)
    assert broken[-1] == {"error": "max retries exceeded: unexpected EOF"}
    assert NEW not in tags(sim)
    resumed = [line for line in pull(sim, NEW) if "digest" in line]
    assert resumed[0]["completed"] == resumed[0]["total"] // 2
    assert NEW in tags(sim)


def test_the_models_directory_follows_pulls_copies_and_deletes(
    make_sim: Any, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    sim = make_sim(models_dir=str(root))
    manifests = root / "manifests" / "registry.ollama.ai" / "library"
    blob = root / "blobs" / f"sha256-{SPEC.layer_digest('model')}"
    assert (manifests / "qwen2.5" / "0.5b").exists()  # the installed models, at start
    manifest = json.loads((manifests / "qwen2.5" / "0.5b").read_text())
    assert manifest["layers"][0]["size"] > 300_000_000
    sim.inject_fault(endpoint="/api/pull", mode="partial")
    pull(sim, NEW)
    partial = blob.with_name(blob.name + "-partial")
    assert partial.exists() and not blob.exists()
    pull(sim, NEW)
    assert not partial.exists() and blob.stat().st_size == dict(SPEC.layers())["model"]
    assert (manifests / "qwen2.5" / "3b").exists()
    copy = {"source": NEW, "destination": "mine:v1"}
    requests.post(sim.url + "/api/copy", json=copy, timeout=10).raise_for_status()
    assert (manifests / "mine" / "v1").exists()
    requests.delete(sim.url + "/api/delete", json={"model": NEW}, timeout=10).raise_for_status()
    assert not (manifests / "qwen2.5" / "3b").exists() and blob.exists()  # the copy uses it
    requests.delete(sim.url + "/api/delete", json={"model": "mine:v1"}, timeout=10)
    assert not blob.exists()
