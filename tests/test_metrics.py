"""``GET /metrics``: Prometheus text read back with prometheus-client's own parser, names
that follow Prometheus' conventions, values that match the service's state, and the job
latency and wait histograms fed by the store's job-end hook."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from modelmanager.metrics import JobTimes, ServiceCollector
from modelmanager.models import GIB, GpuDevice, Job, JobKind, JobStatus, LoadedModel, Priority
from modelmanager.models import ResourceSnapshot as Resources
from modelmanager.scheduler import BackendStatus, RunnerStatus, SchedulerSnapshot
from modelmanager.store import JobEnd, Store
from modelmanager.waiting import JobWaiters
from tests.conftest import Service, wait_until

MODEL = "qwen2.5:0.5b"


def scrape(svc: Service, **headers: str) -> dict[str, Any]:
    r = requests.get(f"{svc.url}/metrics", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    """The value of the one sample ``name`` with these labels (a family may hold several
    sample names: ``_bucket``, ``_count``, ...)."""
    family_name = re.sub(r"_(total|bucket|count|sum|created)$", "", name)
    family = families.get(family_name) or families[name]
    hits = [s for s in family.samples if s.name == name and s.labels == labels]
    assert len(hits) == 1, (name, labels, family.samples)
    return float(hits[0].value)


def test_metrics_parse_and_follow_the_service(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    done = svc.wait_done(
        [
            svc.submit(model=MODEL, prompt="a", priority="high"),
            svc.submit(model=MODEL, prompt="b", priority="low"),
            svc.submit(model="no-such-model:1b", prompt="c"),
        ]
    )
    assert sorted(b["status"] for b in done.values()) == ["complete", "complete", "failed"]
    m = scrape(svc)
    assert value(m, "modelmanager_jobs", status="complete") == 2
    assert value(m, "modelmanager_jobs", status="failed") == 1
    assert value(m, "modelmanager_jobs", status="pending") == 0
    for priority in ("high", "low"):
        labels = {"priority": priority, "status": "complete"}
        assert value(m, "modelmanager_job_latency_seconds_count", **labels) == 1
        assert value(m, "modelmanager_job_latency_seconds_sum", **labels) > 0
        assert value(m, "modelmanager_job_wait_seconds_count", priority=priority) == 1
    failed = {"priority": "normal", "status": "failed"}
    assert value(m, "modelmanager_job_latency_seconds_count", **failed) == 1
    assert value(m, "modelmanager_job_wait_seconds_count", priority="normal") == 0  # never ran
    assert value(m, "modelmanager_loads_total") == 1
    assert value(m, "modelmanager_unloads_total") == 0
    for reason in ("room", "outranked", "runner_options"):
        assert value(m, "modelmanager_evictions_total", reason=reason) == 0
    assert value(m, "modelmanager_ooms_total") == value(m, "modelmanager_retries_total") == 0
    assert value(m, "modelmanager_model_loads_total", model=MODEL) >= 1
    assert 0 < value(m, "modelmanager_model_load_seconds", model=MODEL) < 30
    gpu = {"node": "local", "gpu": "0"}
    assert value(m, "modelmanager_vram_total_bytes", **gpu) == 24 * GIB
    used = value(m, "modelmanager_vram_used_bytes", **gpu)
    assert used > 0 and used + value(m, "modelmanager_vram_free_bytes", **gpu) == 24 * GIB
    assert value(m, "modelmanager_gpu_up", **gpu) == 1
    assert value(m, "modelmanager_backend_up", node="local") == 1
    assert value(m, "modelmanager_loaded_models", node="local") == 1
    ready = {"node": "local", "model": MODEL, "state": "ready"}
    assert value(m, "modelmanager_model_vram_bytes", **ready) > 0
    assert value(m, "modelmanager_job_waiters_limit") == 8
    assert value(m, "modelmanager_accepting") == 1
    assert "process_resident_memory_bytes" in m  # the standard process metrics too


def test_metrics_show_the_queue_and_jobs_in_flight(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    sim.set_gate(True)  # jobs stay running; the rest wait in the queue
    for priority in ("high", "low", "low", "low"):
        svc.submit(model=MODEL, prompt="x", priority=priority)

    def settled() -> dict[str, Any] | None:
        m = scrape(svc)
        flight = {"node": "local", "model": MODEL}
        if value(m, "modelmanager_model_jobs_in_flight", **flight) != 2:
            return None  # OLLAMA_NUM_PARALLEL 1 + DISPATCH_AHEAD 1
        return m

    m = wait_until(settled, what="two jobs in flight")
    assert value(m, "modelmanager_jobs", status="running") == 2
    # the high job went first, so two low ones wait
    assert value(m, "modelmanager_queue_depth", model=MODEL, priority="high") == 0
    assert value(m, "modelmanager_queue_depth", model=MODEL, priority="low") == 2
    sim.set_gate(False)


def test_metric_names_follow_prometheus_conventions(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    svc.wait_done([svc.submit(model=MODEL, prompt="x")])
    families = scrape(svc)
    ours = {name: f for name, f in families.items() if name.startswith("modelmanager_")}
    assert len(ours) >= 25
    for name, family in ours.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        assert family.documentation, f"{name} has no help text"
        assert not name.endswith("_total"), f"{name}: the parser strips _total from counters"
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), name
        assert not name.endswith("_created"), f"{name}: a creation time is not a metric"
        if family.type == "histogram":
            assert name.endswith("_seconds"), name
        for unit in ("_mb", "_ms", "_gb", "_percent", "_kb"):
            assert unit not in name, f"{name}: use base units (bytes, seconds, ratios)"
    types = {name: f.type for name, f in ours.items()}
    assert types["modelmanager_loads"] == "counter"
    assert types["modelmanager_evictions"] == "counter"
    assert types["modelmanager_jobs"] == "gauge"
    assert types["modelmanager_job_latency_seconds"] == "histogram"
    assert types["modelmanager_job_wait_seconds"] == "histogram"
    assert types["modelmanager_vram_used_bytes"] == "gauge"


def test_metrics_in_openmetrics_when_asked(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    accept = "application/openmetrics-text; version=1.0.0"
    r = requests.get(f"{svc.url}/metrics", headers={"Accept": accept}, timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n") and "modelmanager_loads_total 0" in r.text


def test_metrics_need_the_api_key(sim: Any, make_service: Any) -> None:
    key = "m" * 16
    svc: Service = make_service(sim, API_KEY=key)
    r = requests.get(f"{svc.url}/metrics", timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
    assert "modelmanager_jobs" in scrape(svc, Authorization=f"Bearer {key}")


def test_metrics_in_budget_mode_use_a_budget_pseudo_gpu(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim, nvml=False, VRAM_BUDGET_MB=8192)
    svc.wait_done([svc.submit(model=MODEL, prompt="x")])
    m = scrape(svc)
    budget = {"node": "local", "gpu": "budget"}
    assert value(m, "modelmanager_vram_total_bytes", **budget) == 8 * GIB
    assert value(m, "modelmanager_vram_used_bytes", **budget) > 0
    assert not [s for s in m["modelmanager_gpu_info"].samples]


# ------------------------------------------------------------------ without HTTP


@dataclass
class _FakeApi:
    """What ServiceCollector reads of the Api, by hand: a published snapshot with two
    GPUs, counters and a waiting model."""

    store: Store
    scheduler: Any
    pending: Any
    waiters: JobWaiters = field(default_factory=lambda: JobWaiters(4))
    job_times: JobTimes = field(default_factory=JobTimes)
    accepting: bool = False


@dataclass
class _FakeScheduler:
    published: SchedulerSnapshot

    def snapshot(self) -> SchedulerSnapshot:
        return self.published

    def label(self, runner: str) -> str:
        return runner


class _FakePending:
    def depth_by_model(self) -> dict[str, dict[str, int]]:
        return {"phi3:mini": {"high": 1, "normal": 0, "low": 4}}


def test_collector_labels_every_gpu_of_every_node(tmp_path: Path) -> None:
    devices = tuple(
        GpuDevice(
            i,
            "H100",
            f"GPU-{i}",
            80 * GIB,
            10 * GIB * (i + 1),
            80 * GIB - 10 * GIB * (i + 1),
            50,
            None,
            40 + i,
        )
        for i in range(2)
    )
    snap = Resources(
        0.0, "nvml", 160 * GIB, 30 * GIB, 130 * GIB, devices, (LoadedModel("m", 1, 1),)
    )
    published = SchedulerSnapshot(
        taken_at=0.0,
        backends=(
            BackendStatus("node-a", "http://a", snap),
            BackendStatus("node-b", "http://b", None),
        ),
        runners=(RunnerStatus("phi3:mini", "phi3:mini", "node-a", "loading", 0, 4 * GIB),),
        counters={"loads": 3, "evictions": 2, "evictions_room": 1, "evictions_outranked": 1},
        waits={"phi3:mini": "memory"},
    )
    store = Store(tmp_path / "jobs.db")
    api = _FakeApi(store, _FakeScheduler(published), _FakePending())
    families = {f.name: f for f in ServiceCollector(api).collect()}  # type: ignore[arg-type]

    def samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
        family = families[name]
        return {
            tuple(sorted(s.labels.items())): s.value
            for s in family.samples
            if s.name in (name, name + "_total")
        }

    assert samples("modelmanager_vram_used_bytes") == {
        (("gpu", "0"), ("node", "node-a")): 10 * GIB,
        (("gpu", "1"), ("node", "node-a")): 20 * GIB,
    }
    assert samples("modelmanager_gpu_utilization_ratio")[(("gpu", "1"), ("node", "node-a"))] == 0.5
    assert samples("modelmanager_gpu_temperature_celsius")[(("gpu", "1"), ("node", "node-a"))] == 41
    assert samples("modelmanager_backend_up") == {
        (("node", "node-a"),): 1,
        (("node", "node-b"),): 0,
    }
    assert samples("modelmanager_evictions") == {
        (("reason", "room"),): 1,
        (("reason", "outranked"),): 1,
        (("reason", "runner_options"),): 0,
        (("reason", "pinned"),): 0,
    }
    assert samples("modelmanager_queue_depth")[(("model", "phi3:mini"), ("priority", "low"))] == 4
    assert samples("modelmanager_model_waiting") == {
        (("model", "phi3:mini"), ("reason", "memory")): 1
    }
    assert samples("modelmanager_model_vram_bytes") == {
        (("model", "phi3:mini"), ("node", "node-a"), ("state", "loading")): 4 * GIB
    }
    assert samples("modelmanager_accepting") == {(): 0}
    store.close()


def test_job_times_observe_latency_and_wait_by_priority() -> None:
    times = JobTimes()
    times.observe(
        [
            JobEnd(JobStatus.COMPLETE, Priority.HIGH, 100.0, 100.5, 103.0),
            JobEnd(JobStatus.CANCELLED, Priority.LOW, 100.0, None, 160.0),
            JobEnd(JobStatus.FAILED, Priority.LOW, 100.0, 99.0, 99.5),  # a clock step back
        ]
    )
    samples: list[Sample] = [s for f in times.collect() for s in f.samples]

    def one(name: str, **labels: str) -> float:
        return next(s.value for s in samples if s.name == name and s.labels == labels)

    assert one("modelmanager_job_latency_seconds_sum", priority="high", status="complete") == 3.0
    assert one("modelmanager_job_wait_seconds_sum", priority="high") == 0.5
    assert (
        one(
            "modelmanager_job_latency_seconds_bucket", priority="low", status="cancelled", le="60.0"
        )
        == 1
    )
    assert (
        one(
            "modelmanager_job_latency_seconds_bucket", priority="low", status="cancelled", le="30.0"
        )
        == 0
    )
    assert (
        one("modelmanager_job_wait_seconds_count", priority="low") == 1
    )  # the cancelled never ran
    assert one("modelmanager_job_latency_seconds_sum", priority="low", status="failed") == 0.0


def _job(i: int, priority: Priority = Priority.NORMAL) -> Job:
    return Job(
        id=f"job-{i}",
        model=MODEL,
        kind=JobKind.GENERATE,
        priority=priority,
        payload={},
        submitted_at=10.0,
    )


def test_store_reports_every_job_end_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "jobs.db")
    ends: list[JobEnd] = []
    store.on_end(ends.extend)
    store.insert_jobs([_job(i, Priority.HIGH if i == 0 else Priority.LOW) for i in range(5)])
    store.claim(["job-0", "job-1"], now=11.0)
    assert store.complete("job-0", 1, {"text": "x"}, {}, now=12.0)
    assert not store.complete("job-0", 1, {"text": "x"}, {}, now=13.0)  # fenced: no second end
    assert store.fail("job-1", 1, "boom", "BACKEND_ERROR", now=14.0)
    assert store.fail("job-2", None, "not installed", "MODEL_NOT_FOUND", now=15.0)
    assert store.cancel("job-3", now=16.0) is JobStatus.PENDING
    assert store.cancel("job-3", now=17.0) is JobStatus.CANCELLED  # already over: no end
    assert store.expire(submitted_before=20.0, now=18.0, timeout=5.0) == ["job-4"]
    assert ends == [
        JobEnd(JobStatus.COMPLETE, Priority.HIGH, 10.0, 11.0, 12.0),
        JobEnd(JobStatus.FAILED, Priority.LOW, 10.0, 11.0, 14.0),
        JobEnd(JobStatus.FAILED, Priority.LOW, 10.0, None, 15.0),
        JobEnd(JobStatus.CANCELLED, Priority.LOW, 10.0, None, 16.0),
        JobEnd(JobStatus.FAILED, Priority.LOW, 10.0, None, 18.0),
    ]
    store.close()


@pytest.mark.parametrize("status", ["complete", "failed", "cancelled"])
def test_latency_series_exist_before_any_job_ends(status: str) -> None:
    samples = [s for f in JobTimes().collect() for s in f.samples]
    assert any(s.labels == {"priority": "normal", "status": status} for s in samples)
