"""Several Ollama servers: jobs spread over them, placement per backend, replicas, a
backend that goes away, nodes that join and leave, and where each one's memory figures
come from. Real HTTP against two or three simulators.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest
import requests

from modelmanager.errors import ConfigError
from modelmanager.nodes import configured_nodes, hardware_summary
from tests.conftest import Service, free_port, wait_until

SMALL = ["qwen2.5:0.5b", "smollm:360m", "tinyllama:1.1b", "llama3.2:1b"]


def _backends(*sims: Any) -> str:
    return ",".join(f"n{i}={sim.url}" for i, sim in enumerate(sims))


def _fleet(make_service: Any, *sims: Any, **overrides: Any) -> Service:
    """A service driving ``sims`` as n0, n1, ...; each plans with a 4 GiB budget."""
    settings: dict[str, Any] = {"VRAM_BUDGET_MB": 4096, "OLLAMA_BACKENDS": _backends(*sims)}
    settings.update(overrides)
    return make_service(sims[0], nvml=False, **settings)


def _loads(sim: Any) -> list[str]:
    return [e["model"] for e in sim.stats()["load_events"]]


# ---------------------------------------------------------------------------- spreading


@pytest.mark.parametrize("count", [2, 3])
def test_jobs_spread_over_backends_and_none_runs_out_of_memory(
    make_sim: Any, make_service: Any, count: int
) -> None:
    sims = [make_sim(vram_mb=4096) for _ in range(count)]
    svc = _fleet(make_service, *sims)
    models = [*SMALL, "gemma:2b", "qwen2.5:1.5b"]
    jobs = [{"model": m, "prompt": f"p{i}"} for i in range(6) for m in models]
    ids = requests.post(f"{svc.url}/api/submit_batch", json={"jobs": jobs}, timeout=10).json()
    done = svc.wait_done(ids["job_ids"], timeout=60)
    assert all(d["status"] == "complete" for d in done.values())
    assert {d["node"] for d in done.values()} == {f"n{i}" for i in range(count)}  # all worked
    for sim in sims:
        stats = sim.stats()
        assert stats["ooms"] == 0 and stats["crashes"] == 0
        assert stats["peak_vram_mb"] <= 4096
    # a model's jobs ran where it was loaded: each node's models are the ones it loaded
    for d in done.values():
        assert d["model"] in _loads(sims[int(d["node"][1:])])


def test_a_model_in_demand_gets_a_copy_on_a_second_backend(
    make_sim: Any, make_service: Any
) -> None:
    a, b = make_sim(vram_mb=4096), make_sim(vram_mb=4096)
    svc = _fleet(make_service, a, b)
    model = "qwen2.5:0.5b"
    svc.wait_done([svc.submit(model=model, prompt="learn its speed", options={"num_predict": 200})])
    long = {"options": {"num_predict": 2000}}  # about 0.1 s each at this time scale
    ids = [svc.submit(model=model, prompt=f"long {i}", **long) for i in range(60)]
    done = svc.wait_done(ids, timeout=60)
    assert all(d["status"] == "complete" for d in done.values())
    assert model in _loads(a) and model in _loads(b)
    assert {d["node"] for d in done.values()} == {"n0", "n1"}


def test_a_backend_that_goes_down_loses_no_job(make_sim: Any, make_service: Any) -> None:
    a, b = make_sim(vram_mb=4096), make_sim(vram_mb=4096)
    svc = _fleet(make_service, a, b)
    ids = [svc.submit(model=m, prompt=f"warm {m}") for m in SMALL[:2]]
    svc.wait_done(ids)
    a.set_gate(True)
    b.set_gate(True)
    ids = [svc.submit(model=m, prompt=f"held {i}") for i in range(4) for m in SMALL[:2]]
    wait_until(lambda: a.stats()["gated"] + b.stats()["gated"] >= 2, what="jobs held")
    victim, survivor = (a, b) if a.stats()["gated"] else (b, a)
    victim.stop()  # the backend dies with jobs in flight
    survivor.set_gate(False)
    done = svc.wait_done(ids, timeout=60)
    assert all(d["status"] == "complete" for d in done.values()), done
    gone = "n0" if victim is a else "n1"
    health = requests.get(f"{svc.url}/api/health", timeout=5).json()
    assert health["status"] == "degraded"
    assert {n["name"]: n["up"] for n in health["nodes"]}[gone] is False


# --------------------------------------------------------------- GPUs on this host (NVML)


def _per_gpu_peak_ok(sim: Any) -> None:
    stats = sim.stats()
    assert stats["ooms"] == 0 and stats["crashes"] == 0, stats
    for gpu in stats["gpus"]:
        assert gpu["peak_mb"] <= gpu["total_mb"], gpu


def test_one_ollama_with_two_gpus_is_planned_per_gpu(
    make_sim: Any, make_service: Any, gpu_state: Any
) -> None:
    """One Ollama over two 5 GiB GPUs (NVML shows both): models that fit one GPU are
    placed on one, an 8B model is spread over both, and no GPU runs out of memory."""
    sim = make_sim(vram_mb=[5120, 5120], nvml_state=str(gpu_state))
    svc = make_service(sim)
    jobs = [{"model": m, "prompt": f"p{i}"} for i in range(3) for m in [*SMALL, "phi3:mini"]]
    jobs += [{"model": "llama3.1:8b", "prompt": "big"}, {"model": "phi3:mini", "prompt": "x"}]
    ids = requests.post(f"{svc.url}/api/submit_batch", json={"jobs": jobs}, timeout=10).json()
    done = svc.wait_done(ids["job_ids"], timeout=90)
    assert all(d["status"] == "complete" for d in done.values()), done
    assert {d["node"] for d in done.values()} == {"local"}
    _per_gpu_peak_ok(sim)
    gpus = requests.get(f"{svc.url}/api/stats", timeout=5).json()["resources"]["gpus"]
    assert [g["device"] for g in gpus] == ["local:gpu0", "local:gpu1"]
    node = requests.get(f"{svc.url}/api/v1/nodes", timeout=5).json()["nodes"][0]
    assert [d["name"] for d in node["devices"]] == ["local:gpu0", "local:gpu1"]
    assert node["hardware"] == [{"type": "NVIDIA GeForce RTX 4090 | 5GB", "count": 2}]
    big = [e for e in sim.stats()["load_events"] if e["model"] == "llama3.1:8b"]
    assert big and all(len(e["gpus"]) == 2 for e in big)  # spread, as Ollama does
    small = [e["gpus"] for e in sim.stats()["load_events"] if e["model"] in SMALL]
    assert small and all(len(g) == 1 for g in small)  # each fits on one GPU: not spread


@pytest.mark.parametrize("pinned", ["in order", "OLLAMA_BACKEND_GPUS"])
def test_one_ollama_per_gpu_each_planned_with_its_own_gpu(
    make_sim: Any, make_service: Any, gpu_state: Any, pinned: str
) -> None:
    """Two Ollamas on this host, each pinned to one GPU (CUDA_VISIBLE_DEVICES), one NVML
    for both. Another program fills most of one GPU: that backend gets only what fits."""
    if pinned == "in order":
        a = make_sim(vram_mb=4096, nvml_state=str(gpu_state), nvml_index=0)
        b = make_sim(vram_mb=4096, nvml_state=str(gpu_state), nvml_index=1)
        extra: dict[str, Any] = {}
    else:  # listed against NVML's order: only the setting can tell
        a = make_sim(vram_mb=4096, nvml_state=str(gpu_state), nvml_index=1)
        b = make_sim(vram_mb=4096, nvml_state=str(gpu_state), nvml_index=0)
        extra = {"OLLAMA_BACKEND_GPUS": "n0=1,n1=0"}
    a.set_other_program_mb(2600)  # n0's GPU: about 0.5 GiB left after the margin
    svc = make_service(a, OLLAMA_BACKENDS=_backends(a, b), **extra)
    wait_until(
        lambda: all(
            n["memory_source"] == "nvml"
            for n in requests.get(f"{svc.url}/api/v1/nodes", timeout=5).json()["nodes"]
        ),
        what="both nodes read through NVML",
    )
    nodes = requests.get(f"{svc.url}/api/v1/nodes", timeout=5).json()["nodes"]
    free = {n["name"]: n["devices"][0]["free_mb"] for n in nodes}
    assert free["n0"] < 1600 < free["n1"]  # each node sees its own GPU
    jobs = [{"model": m, "prompt": f"p{i}"} for i in range(3) for m in [*SMALL, "gemma:2b"]]
    ids = requests.post(f"{svc.url}/api/submit_batch", json={"jobs": jobs}, timeout=10).json()
    done = svc.wait_done(ids["job_ids"], timeout=90)
    assert all(d["status"] == "complete" for d in done.values()), done
    for sim in (a, b):
        _per_gpu_peak_ok(sim)
    assert "gemma:2b" not in _loads(a)  # 2.1 GiB never fits beside the other program
    assert "gemma:2b" in _loads(b)


# ------------------------------------------------------------------ nodes join and leave


def test_registering_a_node_at_run_time_puts_it_to_work_and_unregistering_drains_it(
    make_sim: Any, make_service: Any
) -> None:
    # No job ran before the registration, so the first jobs found their models' status
    # unknown and had every node's list read, box2's included; and n0 had room. The case
    # where the models are known and n0 is full is
    # test_fleet_nodes.test_a_node_registered_at_run_time_runs_what_the_full_configured_node_cannot
    a, b = make_sim(vram_mb=4096), make_sim(vram_mb=4096)
    svc = _fleet(make_service, a)
    body = {"name": "box2", "url": b.url, "vram_budget_mb": 4096}
    r = requests.post(f"{svc.url}/api/v1/nodes", json=body, timeout=30)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "box2"
    nodes = wait_until(
        lambda: (
            (n := requests.get(f"{svc.url}/api/v1/nodes", timeout=5).json()["nodes"])
            and any(x["name"] == "box2" and x["healthy"] for x in n)
            and n
        )
    )
    assert {n["name"] for n in nodes} == {"n0", "box2"}
    box2 = next(n for n in nodes if n["name"] == "box2")
    assert box2["memory_source"] == "budget" and box2["registered"] is True
    again = requests.post(f"{svc.url}/api/v1/nodes", json=body, timeout=30)
    assert again.status_code == 409 and again.json()["error"]["code"] == "CONFLICT"
    jobs = [{"model": m, "prompt": f"p{i}"} for i in range(4) for m in SMALL]
    ids = requests.post(f"{svc.url}/api/submit_batch", json={"jobs": jobs}, timeout=10).json()
    done = svc.wait_done(ids["job_ids"], timeout=60)
    assert "box2" in {d["node"] for d in done.values()}
    r = requests.delete(f"{svc.url}/api/v1/nodes/box2", timeout=5)
    assert r.status_code == 202 and r.json()["status"] == "draining"
    wait_until(
        lambda: (
            [n["name"] for n in requests.get(f"{svc.url}/api/v1/nodes", timeout=5).json()["nodes"]]
            == ["n0"]
        ),
        timeout=30,
        what="box2 drained and removed",
    )
    assert b.loaded_models() == []  # its models were given back
    later = svc.wait_done([svc.submit(model=SMALL[0], prompt="after")])
    assert next(iter(later.values()))["node"] == "n0"


def test_a_registration_survives_a_restart(make_sim: Any, make_service: Any, tmp_path: Any) -> None:
    a, b = make_sim(vram_mb=4096), make_sim(vram_mb=4096)
    svc = _fleet(make_service, a)
    body = {"name": "box2", "url": b.url, "vram_budget_mb": 2048}
    assert requests.post(f"{svc.url}/api/v1/nodes", json=body, timeout=30).status_code == 201
    svc.stop()
    again = _fleet(make_service, a)
    names = {
        n["name"] for n in requests.get(f"{again.url}/api/v1/nodes", timeout=5).json()["nodes"]
    }
    assert names == {"n0", "box2"}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"name": "Bad Name", "url": "http://127.0.0.1:1"}, 400, "name"),
        ({"name": "ok", "url": "ftp://host"}, 400, "url"),
        ({"name": "ok", "url": "http://127.0.0.1:1", "vram_budget_mb": -1}, 400, "vram_budget_mb"),
        ({"name": "ok", "url": "http://127.0.0.1:1", "colour": "red"}, 400, "colour"),
    ],
)
def test_bad_registrations_are_refused_naming_the_field(
    sim: Any, make_service: Any, body: dict[str, Any], status: int, field: str
) -> None:
    svc = make_service(sim)
    r = requests.post(f"{svc.url}/api/v1/nodes", json=body, timeout=10)
    assert r.status_code == status
    assert r.json()["error"]["details"]["field"] == field


def test_a_node_that_never_answers_is_refused_after_its_startup_timeout(
    sim: Any, make_service: Any
) -> None:
    svc = make_service(sim)
    # a budget: the only GPU of this host is local's, so without one it has no memory
    body = {
        "name": "ghost",
        "url": f"http://127.0.0.1:{free_port()}",
        "startup_timeout_s": 1,
        "vram_budget_mb": 4096,
    }
    r = requests.post(f"{svc.url}/api/v1/nodes", json=body, timeout=30)
    assert r.status_code == 504
    err = r.json()["error"]
    assert err["code"] == "NODE_UNHEALTHY" and err["details"]["node"] == "ghost"
    names = [n["name"] for n in requests.get(f"{svc.url}/api/v1/nodes", timeout=5).json()["nodes"]]
    assert names == ["local"]


def test_removing_unknown_or_configured_nodes_is_refused(sim: Any, make_service: Any) -> None:
    svc = make_service(sim)
    assert requests.delete(f"{svc.url}/api/v1/nodes/nobody", timeout=5).status_code == 404
    r = requests.delete(f"{svc.url}/api/v1/nodes/local", timeout=5)
    assert r.status_code == 409 and "OLLAMA_BACKENDS" in r.json()["error"]["message"]


# ------------------------------------------------------------------------- memory sources


def test_gpu_endpoints_report_this_hosts_gpus(sim: Any, make_service: Any) -> None:
    svc = make_service(sim)
    devices = requests.get(f"{svc.url}/api/v1/gpu/devices", timeout=5).json()["devices"]
    assert len(devices) == 1
    gpu = devices[0]
    assert gpu["total_mb"] == 24576 and gpu["available"] is True and gpu["error"] is None
    assert gpu["used_mb"] + gpu["free_mb"] == gpu["total_mb"]
    driver = requests.get(f"{svc.url}/api/v1/gpu/driver", timeout=5).json()
    assert set(driver) == {"driver_version", "cuda_driver_version", "nvml_version"}
    nodes = requests.get(f"{svc.url}/api/v1/nodes", timeout=5).json()["nodes"]
    assert nodes[0]["devices"][0]["name"] == "local:gpu0"
    assert nodes[0]["hardware"] == [{"type": f"{gpu['name']} | 24GB", "count": 1}]


def test_without_nvml_the_gpu_endpoints_answer_empty(sim: Any, make_service: Any) -> None:
    svc = make_service(sim, nvml=False, VRAM_BUDGET_MB=8192)
    assert requests.get(f"{svc.url}/api/v1/gpu/devices", timeout=5).json() == {"devices": []}


def test_a_node_elsewhere_takes_its_memory_from_the_model_manager_there(
    make_sim: Any, make_service: Any, gpu_state: Any, tmp_path: Any
) -> None:
    """box2's GPUs are reported by a Model Manager on its host (here: a second service
    reading the fake NVML); the scheduling manager plans with them."""
    a = make_sim(vram_mb=4096)
    reporter = make_service(
        make_sim(vram_mb=24576, nvml_state=str(gpu_state)), DATA_DIR=str(tmp_path / "reporter")
    )
    b = make_sim(vram_mb=4096)
    svc = _fleet(make_service, a, DATA_DIR=str(tmp_path / "main"))
    body = {"name": "box2", "url": b.url, "gpu_url": reporter.url}
    assert requests.post(f"{svc.url}/api/v1/nodes", json=body, timeout=30).status_code == 201
    box2 = wait_until(
        lambda: next(
            (
                n
                for n in requests.get(f"{svc.url}/api/v1/nodes", timeout=5).json()["nodes"]
                if n["name"] == "box2" and n["memory_source"]
            ),
            None,
        )
    )
    assert box2["memory_source"] == "gpu_endpoint"
    assert box2["devices"][0]["name"] == "box2:gpu0" and box2["devices"][0]["total_mb"] == 24576


def test_without_a_gpu_endpoint_there_the_node_is_planned_with_the_budget(
    make_sim: Any, make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="modelmanager.MONITOR")
    a, b = make_sim(vram_mb=4096), make_sim(vram_mb=4096)
    svc = _fleet(make_service, a)
    nothing = f"http://127.0.0.1:{free_port()}"
    body = {"name": "box2", "url": b.url, "gpu_url": nothing}
    assert requests.post(f"{svc.url}/api/v1/nodes", json=body, timeout=30).status_code == 201
    ids = [svc.submit(model=m, prompt="x") for m in SMALL]
    assert all(d["status"] == "complete" for d in svc.wait_done(ids, timeout=60).values())
    lines = [r.getMessage() for r in caplog.records]
    skipped = [m for m in lines if "Skipping GPU monitoring for node box2" in m]
    assert len(skipped) == 1, lines  # logged once
    box2 = next(
        n
        for n in requests.get(f"{svc.url}/api/v1/nodes", timeout=5).json()["nodes"]
        if n["name"] == "box2"
    )
    assert box2["memory_source"] == "budget"


# ------------------------------------------------------------------------------ settings


def test_configured_nodes_parse_names_urls_and_gpus() -> None:
    nodes = configured_nodes(
        "gpu0=http://127.0.0.1:11434, gpu1=http://127.0.0.1:11435,box2=http://10.0.0.7:11434",
        "http://localhost:11434",
        "gpu0=0,gpu1=1",
        "",
        2,
    )
    assert [(n.name, n.gpus, n.gpu_url) for n in nodes] == [
        ("gpu0", (0,), None),
        ("gpu1", (1,), None),
        ("box2", None, "http://10.0.0.7:5001"),
    ]
    default = configured_nodes("", "http://localhost:11434", "", "", 1)
    assert [(n.name, n.url) for n in default] == [("local", "http://localhost:11434")]
    # two servers here and two GPUs: one each, in order
    auto = configured_nodes("a=http://127.0.0.1:1,b=http://127.0.0.1:2", "", "", "", 2)
    assert [n.gpus for n in auto] == [(0,), (1,)]
    # different ports, or http and https, are different servers; without NVML any index
    # is taken as given
    apart = "a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=https://127.0.0.1:1"
    assert len(configured_nodes(apart, "", "a=0,b=1,c=9", "", None)) == 3


def test_a_stored_registration_of_a_configured_ollama_is_left_out(
    make_sim: Any, make_service: Any
) -> None:
    """Registrations stored before duplicates were refused: the configured node wins."""
    a = make_sim(vram_mb=4096)
    svc = _fleet(make_service, a)
    store = svc.manager.store
    store.save_node(
        "twin", f"http://localhost:{a.port}", gpu_url=None, vram_budget_mb=64, gpus=None, now=0.0
    )
    svc.stop()
    again = _fleet(make_service, a)
    names = [
        n["name"] for n in requests.get(f"{again.url}/api/v1/nodes", timeout=5).json()["nodes"]
    ]
    assert names == ["n0"]


@pytest.mark.parametrize(
    ("backends", "gpus", "message"),
    [
        ("Bad=http://x:1", "", "a-z 0-9"),
        ("a=http://x:1,a=http://y:1", "", "twice"),
        ("a=ftp://x", "", r"http\(s\)"),
        ("a=http://127.0.0.1:1", "b=0", "no backend"),
        ("a=http://127.0.0.1:1,b=http://127.0.0.1:2", "a=0,b=0", "two backends"),
        (
            "a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3",
            "",
            "OLLAMA_BACKEND_GPUS",
        ),
        ("a", "", "name=value"),
        # one Ollama under two names, however its URL is spelt
        ("a=http://127.0.0.1:18210,b=http://localhost:18210/", "", "two names"),
        ("a=http://box:80,b=http://BOX.", "", "two names"),
        ("a=https://box,b=https://box:443/", "", "two names"),
        # a GPU NVML does not show (2 here)
        ("a=http://127.0.0.1:1,b=http://127.0.0.1:2", "a=0,b=7", "GPU 7, but NVML shows 2"),
        ("a=http://127.0.0.1:1", "a=0+2", "GPU 2"),
    ],
)
def test_bad_backend_settings_stop_startup_with_a_sentence(
    backends: str, gpus: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        configured_nodes(backends, "http://localhost:11434", gpus, "", 2)


def test_hardware_summary_counts_identical_gpus_and_skips_bad_ones() -> None:
    devices: list[dict[str, object]] = [
        {"name": "NVIDIA GeForce RTX 4090", "total_mb": 24564, "available": True, "error": None},
        {"name": "NVIDIA GeForce RTX 4090", "total_mb": 24564, "available": True, "error": None},
        {"name": "NVIDIA A100", "total_mb": 81920, "available": True, "error": None},
        {"name": "NVIDIA A100", "total_mb": 81920, "available": False, "error": "GPU is lost"},
        {"name": "NVIDIA T4", "total_mb": None, "available": True, "error": None},
    ]
    assert hardware_summary(devices) == [
        {"type": "NVIDIA A100 | 80GB", "count": 1},
        {"type": "NVIDIA GeForce RTX 4090 | 23GB", "count": 2},
    ]


def test_a_host_name_of_this_machine_counts_as_local() -> None:
    from modelmanager.nodes import is_local

    assert is_local(f"http://{socket.gethostname()}:11434")
    assert is_local("http://127.0.0.1:11434") and is_local("http://[::1]:11434")
    assert not is_local("http://10.255.255.1:11434")


# --------------------------------------------------------------- Ollama clients, fleet


def test_ollama_clients_see_every_nodes_models(make_sim: Any, make_service: Any) -> None:
    """Through the manager's Ollama API, ``list`` and ``ps`` cover every node and ``show``
    finds a model installed on one node only."""
    import ollama

    a, b = make_sim(vram_mb=4096), make_sim(vram_mb=4096)
    only_on_b = "gemma:2b"
    requests.delete(f"{a.url}/api/delete", json={"model": only_on_b}, timeout=10)
    svc = _fleet(make_service, a, b)
    client = ollama.Client(host=svc.url)
    try:
        _list_show_ps(svc, client, only_on_b)
    finally:
        client.close()


def _list_show_ps(svc: Service, client: Any, only_on_b: str) -> None:
    listed = [m.model for m in client.list().models]
    assert only_on_b in listed and len(listed) == len(set(listed))  # each name once
    assert client.show(only_on_b).details is not None
    # a model loaded on each node: ps lists both
    ids = [svc.submit(model=m, prompt=f"p{i}") for i in range(8) for m in SMALL[:2]]
    by_node: dict[str, set[str]] = {}
    for job in svc.wait_done(ids).values():
        by_node.setdefault(job["node"], set()).add(job["model"])
    loaded = {m.model for m in client.ps().models}
    expected = {m for ms in by_node.values() for m in ms}
    assert len(by_node) == 2  # both nodes ran jobs
    assert expected <= loaded or wait_until(
        lambda: expected <= {m.model for m in client.ps().models}, timeout=10
    )


def test_with_several_nodes_the_log_names_the_node(
    make_sim: Any, make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modelmanager")
    a, b = make_sim(vram_mb=4096), make_sim(vram_mb=4096)
    svc = _fleet(make_service, a, b)
    done = svc.wait_done([svc.submit(model=m, prompt="x") for m in SMALL])
    nodes = {d["node"] for d in done.values()}
    lines = [r.getMessage() for r in caplog.records]
    for node in nodes:
        assert any(line.startswith("loaded ") and f" on node {node} " in line for line in lines)
        assert any(" started on " in line and f" on node {node} " in line for line in lines)
