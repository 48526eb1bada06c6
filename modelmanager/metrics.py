"""Prometheus metrics: ``GET /metrics`` in the text exposition format, by prometheus-client.

Everything but two histograms is read at scrape time from what the service already
publishes: the scheduler's :class:`~modelmanager.scheduler.SchedulerSnapshot` (backends
and their GPUs, runners held, counters, waits), the pending-job index and the store (jobs
by status, learned load times). A scrape never talks to Ollama and changes nothing.

The two histograms (job latency and queue wait, by priority) are observed as jobs end:
the store calls :meth:`JobTimes.observe` after each write that finished jobs
(``Store.on_end``), so the submit path pays nothing for them.

Labels: ``node`` is a backend's name (``local`` unless OLLAMA_BACKENDS names them),
``gpu`` a device's NVML index (``budget`` when memory comes from ``VRAM_BUDGET_MB``),
``model`` a model as the service names it (with its runner options, as in
``/api/stats``). Counters restart at 0 with the
service, except ``modelmanager_model_loads_total``, which the store keeps.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .errors import DatabaseUnavailable
from .models import JobStatus, Priority
from .plan import UnloadReason
from .store import JobEnd

if TYPE_CHECKING:
    from flask import Flask

    from .api import Api

# No ``*_created`` series: in the text format each is a gauge family of its own (16 of
# them beside the histograms and counters), which scrapers and readers take for metrics.
# (A process-wide switch of prometheus-client; this service has one registry.)
disable_created_metrics()

PREFIX = "modelmanager_"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_ENDS = [s.value for s in JobStatus if s.terminal]
_EVICTION_REASONS = [r.value for r in UnloadReason if r is not UnloadReason.IDLE]


class JobTimes:
    """Latency (submit to end) and wait (submit to start) histograms of finished jobs.

    ``observe`` is a ``Store.on_end`` listener; thread-safe (prometheus-client locks).
    The wait of a job that never started (cancelled or failed while waiting) is not
    observed; a retried job's wait runs to its last start.
    """

    def __init__(self) -> None:
        self.latency = Histogram(
            f"{PREFIX}job_latency_seconds",
            "Seconds from submit to the end of a job, by priority and final status.",
            ["priority", "status"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.wait = Histogram(
            f"{PREFIX}job_wait_seconds",
            "Seconds a finished job waited from submit to its (last) start, by priority.",
            ["priority"],
            buckets=WAIT_BUCKETS,
            registry=None,
        )
        for priority in Priority:  # every series present from the start, at 0
            self.wait.labels(priority.value)
            for status in _ENDS:
                self.latency.labels(priority.value, status)

    def observe(self, ends: list[JobEnd]) -> None:
        for end in ends:
            priority = end.priority.value
            self.latency.labels(priority, end.status.value).observe(
                max(0.0, end.completed_at - end.submitted_at)
            )
            if end.started_at is not None:
                self.wait.labels(priority).observe(max(0.0, end.started_at - end.submitted_at))

    def collect(self) -> Iterable[Metric]:
        yield from self.latency.collect()
        yield from self.wait.collect()


class ServiceCollector:
    """A prometheus-client collector over the service's published state (see the module
    docstring). Reads ``api`` only when collecting."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def collect(self) -> Iterator[Metric]:
        api = self.api
        published = api.scheduler.snapshot()
        yield from self._jobs(api)
        yield from self._counters(published.counters)
        yield from self._backends(published)
        yield from self._runners(api, published)
        yield from api.job_times.collect()
        accepting = GaugeMetricFamily(
            f"{PREFIX}accepting", "1 while the service takes submits, 0 once it stops."
        )
        accepting.add_metric([], 1.0 if api.accepting else 0.0)
        yield accepting

    def _jobs(self, api: Api) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            f"{PREFIX}database_up",
            "1 while the job store answers, 0 while its database (DATABASE_URL) does not; "
            "the families read from the store are left out then.",
        )
        try:
            by_status: dict[str, int] | None = api.store.counts_by_status()
        except DatabaseUnavailable:
            by_status = None
        up.add_metric([], 0.0 if by_status is None else 1.0)
        yield up
        if by_status is not None:
            jobs = GaugeMetricFamily(
                f"{PREFIX}jobs",
                "Jobs in the store by status (with DATABASE_URL, the shared store: the "
                "same on every instance).",
                labels=["status"],
            )
            for status in JobStatus:
                jobs.add_metric([status.value], by_status.get(status.value, 0))
            yield jobs
        depth = GaugeMetricFamily(
            f"{PREFIX}queue_depth",
            "Jobs waiting in the priority queue (retries in backoff included), by model "
            "and priority.",
            labels=["model", "priority"],
        )
        for runner, per in sorted(api.pending.depth_by_model().items()):
            model = api.scheduler.label(runner)
            for priority, n in per.items():
                depth.add_metric([model, priority], n)
        yield depth
        waiters = api.waiters
        now = GaugeMetricFamily(
            f"{PREFIX}job_waiters", "Requests waiting now in GET /api/job/<id>?wait=S."
        )
        now.add_metric([], waiters.waiting)
        limit = GaugeMetricFamily(
            f"{PREFIX}job_waiters_limit", "Requests that may wait at once (MAX_WAITERS)."
        )
        limit.add_metric([], waiters.limit)
        refused = CounterMetricFamily(
            f"{PREFIX}job_waits_refused_total",
            "?wait requests answered at once because MAX_WAITERS requests were waiting.",
        )
        refused.add_metric([], waiters.refused)
        yield from (now, limit, refused)

    def _counters(self, counters: Any) -> Iterator[Metric]:
        for name, key, text in (
            ("loads_total", "loads", "Model loads that succeeded."),
            ("unloads_total", "unloads", "Model unloads started (idle and evictions)."),
            ("ooms_total", "ooms", "Out-of-memory answers from Ollama (loads and jobs)."),
            ("retries_total", "retries", "Job attempts that failed and were put back."),
        ):
            family = CounterMetricFamily(f"{PREFIX}{name}", text)
            family.add_metric([], counters.get(key, 0))
            yield family
        evictions = CounterMetricFamily(
            f"{PREFIX}evictions_total",
            "Models unloaded to make room or for other work, by reason (room, outranked, "
            "runner_options, pinned).",
            labels=["reason"],
        )
        for reason in _EVICTION_REASONS:
            evictions.add_metric([reason], counters.get(f"evictions_{reason}", 0))
        yield evictions

    def _backends(self, published: Any) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            f"{PREFIX}backend_up", "1 if Ollama answered the last read.", labels=["node"]
        )
        loaded = GaugeMetricFamily(
            f"{PREFIX}loaded_models",
            "Models Ollama reports loaded (/api/ps), the manager's or not.",
            labels=["node"],
        )
        labels = ["node", "gpu"]
        total = GaugeMetricFamily(f"{PREFIX}vram_total_bytes", "GPU memory in all.", labels=labels)
        used = GaugeMetricFamily(
            f"{PREFIX}vram_used_bytes", "GPU memory in use (by any program).", labels=labels
        )
        free = GaugeMetricFamily(f"{PREFIX}vram_free_bytes", "GPU memory free.", labels=labels)
        info = GaugeMetricFamily(
            f"{PREFIX}gpu_info",
            "1 per GPU, with its name and UUID.",
            labels=[*labels, "name", "uuid"],
        )
        gpu_up = GaugeMetricFamily(
            f"{PREFIX}gpu_up", "1 unless NVML answered the last read with an error.", labels=labels
        )
        busy = GaugeMetricFamily(
            f"{PREFIX}gpu_utilization_ratio", "GPU compute utilisation, 0 to 1.", labels=labels
        )
        temperature = GaugeMetricFamily(
            f"{PREFIX}gpu_temperature_celsius", "GPU temperature.", labels=labels
        )
        for backend in published.backends:
            snap = backend.resources
            node = backend.name
            up.add_metric([node], 1.0 if snap is not None and snap.backend_up else 0.0)
            if snap is None:
                continue
            loaded.add_metric([node], len(snap.loaded))
            if not snap.devices:  # planned with VRAM_BUDGET_MB: one pseudo-device
                for family, value in ((total, snap.total_bytes), (used, snap.used_bytes)):
                    family.add_metric([node, "budget"], value)
                free.add_metric([node, "budget"], snap.free_bytes)
            for d in snap.devices:
                gpu = [node, str(d.index)]
                total.add_metric(gpu, d.total_bytes)
                used.add_metric(gpu, d.used_bytes)
                free.add_metric(gpu, d.free_bytes)
                info.add_metric([*gpu, d.name, d.uuid], 1)
                gpu_up.add_metric(gpu, 0.0 if d.error else 1.0)
                if d.utilization_pct is not None:
                    busy.add_metric(gpu, d.utilization_pct / 100)
                if d.temperature_c is not None:
                    temperature.add_metric(gpu, d.temperature_c)
        yield from (up, loaded, total, used, free, info, gpu_up, busy, temperature)

    def _runners(self, api: Api, published: Any) -> Iterator[Metric]:
        vram = GaugeMetricFamily(
            f"{PREFIX}model_vram_bytes",
            "VRAM of each model the manager holds (loading, ready or unloading): measured "
            "once loaded, estimated before.",
            labels=["node", "model", "state"],
        )
        in_flight = GaugeMetricFamily(
            f"{PREFIX}model_jobs_in_flight",
            "Jobs sent to Ollama and not yet answered, by model.",
            labels=["node", "model"],
        )
        for r in published.runners:
            vram.add_metric([r.backend, r.label, r.state], r.size_bytes)
            in_flight.add_metric([r.backend, r.label], r.in_flight)
        yield vram
        yield in_flight
        waiting = GaugeMetricFamily(
            f"{PREFIX}model_waiting",
            "1 for each model whose jobs wait for something, with the reason (memory, "
            "model_cap, load_slot, ...).",
            labels=["model", "reason"],
        )
        for model, reason in sorted(published.waits.items()):
            waiting.add_metric([model, reason], 1)
        yield waiting
        load_seconds = GaugeMetricFamily(
            f"{PREFIX}model_load_seconds",
            "Seconds the model's last load took (kept across restarts).",
            labels=["model"],
        )
        loads = CounterMetricFamily(
            f"{PREFIX}model_loads",
            "Loads of the model that succeeded, ever (kept across restarts; with "
            "DATABASE_URL, on every instance, the same on each).",
            labels=["model"],
        )
        try:
            stored = api.store.load_model_stats()
        except DatabaseUnavailable:
            return
        for runner, stats in sorted(stored.items()):
            model = api.scheduler.label(runner)
            if stats.get("load_seconds") is not None:
                load_seconds.add_metric([model], stats["load_seconds"])
            loads.add_metric([model], stats.get("loads") or 0)
        yield load_seconds
        yield loads


def metrics_registry(api: Api) -> CollectorRegistry:
    """A registry of the service's metrics plus the process, platform and GC ones."""
    registry = CollectorRegistry()
    registry.register(ServiceCollector(api))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def register(app: Flask, api: Api) -> None:
    """Add ``GET /metrics`` to ``app`` (Prometheus text format, or OpenMetrics when the
    scraper asks for it in ``Accept``)."""
    from flask import Response, request

    registry = metrics_registry(api)

    @app.get("/metrics")
    def metrics() -> Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encode(registry), headers={"Content-Type": content_type})
