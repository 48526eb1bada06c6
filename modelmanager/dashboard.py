"""The live dashboard: ``GET /`` (the page, for browsers) and ``GET /api/dashboard`` (its data).

``GET /`` answers as Ollama does (``Ollama is running``, text/plain) unless the request's
``Accept`` header prefers ``text/html`` over ``text/plain``, as a browser's does: clients
pointed at the manager as if it were Ollama check that text. The page
(``dashboard.html``: plain HTML with inline CSS and JavaScript, nothing fetched from
elsewhere) reads ``/api/dashboard`` every second. Neither ``GET /`` answer carries data,
so neither needs the API key; ``/api/dashboard`` does, and the page asks for it.

``/api/dashboard`` is built from what the service publishes (the scheduler's snapshot,
the pending-job index, the store), never by asking Ollama, and is reused for
:data:`CACHE_SECONDS` so that open pages cost the store one read a second.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .models import Job, JobStatus, Priority
from .scheduler import SchedulerSnapshot

if TYPE_CHECKING:
    from flask import Flask, Response

    from .api import Api

PAGE = Path(__file__).with_name("dashboard.html")
CACHE_SECONDS = 1.0
RECENT_JOBS = 20
RECENT_FAILURES = 10
RECENT_EVENTS = 30
RUNNING_SHOWN = 200  # running jobs listed under their models, at most
_PAGE_HEADERS = {
    "Vary": "Accept",
    "Cache-Control": "no-cache",
    # everything is inline; the page talks to this service only
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def dashboard_state(api: Api, now: float | None = None) -> dict[str, Any]:
    """What the page shows, as JSON-ready data (bytes, seconds since the epoch)."""
    now = time.time() if now is None else now
    published = api.scheduler.snapshot()
    running = api.store.list_jobs(status=JobStatus.RUNNING.value, limit=RUNNING_SHOWN)
    jobs_of: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for job in running:
        for r in published.runners:
            if r.runner == job.runner:
                jobs_of[(r.backend, r.runner)].append(
                    {"job_id": job.id, "priority": job.priority.value, "started_at": job.started_at}
                )
                break
    models, nodes = _models_and_nodes(api, published, jobs_of)
    by_status = api.store.counts_by_status()
    counters = published.counters
    return {
        "now": now,
        "taken_at": published.taken_at,
        "accepting": api.accepting,
        "nodes": nodes,
        "models": models,
        "queue": _queue(api, published),
        "events": [dict(e) for e in reversed(published.recent[-RECENT_EVENTS:])],
        "jobs": {
            "by_status": {s.value: by_status.get(s.value, 0) for s in JobStatus},
            "recent": [_job(j) for j in api.store.list_jobs(limit=RECENT_JOBS)],
            "failures": [
                _job(j)
                for j in api.store.list_jobs(status=JobStatus.FAILED.value, limit=RECENT_FAILURES)
            ],
        },
        "counters": {
            k: counters.get(k, 0)
            for k in ("loads", "unloads", "evictions", "ooms", "retries", "completed", "failed")
        },
        "counters_since": api.started_at,
        "waiters": {"waiting": api.waiters.waiting, "limit": api.waiters.limit},
    }


def _models_and_nodes(
    api: Api,
    published: SchedulerSnapshot,
    jobs_of: dict[tuple[str, str], list[dict[str, Any]]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    models: list[dict[str, Any]] = []
    nodes: list[dict[str, Any]] = []
    for backend in published.backends:
        node = backend.name
        held = [r for r in published.runners if r.backend == node]
        snap = backend.resources
        loaded = snap.loaded if snap is not None else ()
        segments = []  # what each model Ollama lists holds, by /api/ps
        reported: dict[str, int] = {}  # runner -> its /api/ps VRAM
        for m in loaded:
            runner = next((r for r in held if api.registry.holds(r.runner, m)), None)
            if runner is not None:
                reported[runner.runner] = m.vram_bytes
            name = runner.label if runner is not None else m.name
            segments.append({"model": name, "bytes": m.vram_bytes, "managed": runner is not None})
            if runner is None:  # loaded outside the manager
                models.append(
                    {
                        "model": m.name,
                        "node": node,
                        "state": "ready",
                        "managed": False,
                        "ollama_vram_bytes": m.vram_bytes,
                        "planned_vram_bytes": None,
                        "in_flight": 0,
                        "jobs": [],
                    }
                )
        for r in held:
            models.append(
                {
                    "model": r.label,
                    "node": node,
                    "state": r.state,
                    "managed": True,
                    "ollama_vram_bytes": reported.get(r.runner),
                    "planned_vram_bytes": r.size_bytes,
                    "in_flight": r.in_flight,
                    "jobs": jobs_of.get((node, r.runner), []),
                }
            )
        nodes.append(_node(node, backend.url, snap, segments))
    return models, nodes


def _node(name: str, url: str, snap: Any, segments: list[dict[str, Any]]) -> dict[str, Any]:
    """A backend with a memory bar per GPU. Ollama does not say how a model is split
    across several GPUs, so models are drawn on the bar only of a node with one GPU (or
    with a VRAM budget); on several, each bar shows its memory in use as a whole."""
    if snap is None:
        return {"name": name, "url": url, "up": False, "error": "not read yet", "gpus": []}
    gpus = []
    models_bytes = sum(s["bytes"] for s in segments)
    devices = snap.devices
    if not devices:  # VRAM_BUDGET_MB: the budget stands in for the GPU
        gpus.append(
            {
                "id": f"{name}:budget",
                "name": "VRAM budget (no NVML)",
                "total": snap.total_bytes,
                "used": snap.used_bytes,
                "free": snap.free_bytes,
                "segments": segments,
                "other": max(0, snap.used_bytes - models_bytes),
            }
        )
    for d in devices:
        one = len(devices) == 1
        gpus.append(
            {
                "id": f"{name}:gpu{d.index}",
                "index": d.index,
                "name": d.name,
                "total": d.total_bytes,
                "used": d.used_bytes,
                "free": d.free_bytes,
                "utilization_pct": d.utilization_pct,
                "temperature_c": d.temperature_c,
                "error": d.error,
                "segments": segments if one else [],
                "other": max(0, d.used_bytes - models_bytes) if one else d.used_bytes,
            }
        )
    return {
        "name": name,
        "url": url,
        "up": snap.backend_up,
        "error": snap.backend_error,
        "source": snap.source,
        "taken_at": snap.taken_at,
        "gpus": gpus,
    }


def _queue(api: Api, published: SchedulerSnapshot) -> list[dict[str, Any]]:
    """Waiting jobs per model and priority, the longest queue first."""
    rows = []
    for runner, per in api.pending.depth_by_model().items():
        label = api.scheduler.label(runner)
        counts = {p.value: per.get(p.value, 0) for p in Priority}
        rows.append((-sum(counts.values()), label, counts))
    return [
        {"model": label, **counts, "waiting_for": published.waits.get(label)}
        for _, label, counts in sorted(rows, key=lambda row: row[:2])
    ]


def _job(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "model": job.model,
        "kind": job.kind.value,
        "priority": job.priority.value,
        "status": job.status.value,
        "submitted_at": job.submitted_at,
        "started_at": job.started_at,
        "completed_at": job.completed_at,
        "attempts": job.attempts,
        "error_code": job.error_code,
        "error": job.error,
    }


def wants_html(accept: Any) -> bool:
    """Whether an ``Accept`` header (werkzeug's MIMEAccept) prefers HTML to plain text."""
    return bool(accept["text/html"] > accept["text/plain"])


def register(app: Flask, api: Api) -> None:
    """Add ``GET /`` (and ``HEAD /``) and ``GET /api/dashboard`` to ``app``."""
    from flask import Response, request

    page: list[bytes] = []  # read on first use
    cache: dict[str, Any] = {"at": -1e18, "body": b""}
    lock = threading.Lock()

    @app.get("/")
    def root() -> Response:
        if not wants_html(request.accept_mimetypes):
            return Response("Ollama is running", mimetype="text/plain", headers={"Vary": "Accept"})
        if not page:
            page.append(PAGE.read_bytes())
        return Response(page[0], mimetype="text/html", headers=_PAGE_HEADERS)

    @app.get("/api/dashboard")
    def dashboard() -> Response:
        with lock:
            if time.monotonic() - cache["at"] >= CACHE_SECONDS:
                state = dashboard_state(api)
                cache["body"] = json.dumps(state, separators=(",", ":")).encode()
                cache["at"] = time.monotonic()
            body = cache["body"]
        return Response(body, mimetype="application/json", headers={"Cache-Control": "no-store"})
