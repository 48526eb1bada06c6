"""The internal API: submit, get, list, cancel, retry, stats, models, health, nodes and
GPUs, and the models on the nodes' disks (:mod:`modelmanager.model_disk`).

No Flask here: plain dicts in and out, :class:`ApiError` subclasses for failures. A job is
committed to the store before ``submit`` returns; then it is indexed for the scheduler and
the loop is woken.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from config import Config

from .contract import MAX_BATCH, Submission, parse_jobs_query, validate_submission
from .errors import (
    Conflict,
    DatabaseUnavailable,
    InvalidRequest,
    NotFound,
    QueueFull,
    ServiceUnavailable,
)
from .fleet import Fleet
from .gpu_api import local_devices, local_driver
from .job_runner import JobRunner
from .logger import get_logger
from .metrics import JobTimes
from .model_disk import ModelDisk
from .model_registry import ModelRegistry, normalize
from .models import Job, JobKind, JobStatus, ResourceSnapshot
from .pending import PendingIndex
from .resource_monitor import NvmlGpuSource
from .runners import runner_of
from .scheduler import Scheduler
from .store import Store
from .streams import Subscription
from .waiting import JobWaiters, WaitOutcome

log = get_logger("API")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: Fields of a job's stored output shown beside ``result`` (see ``job_output``).
OUTPUT_FIELDS = ("thinking", "tool_calls", "done_reason", "message", "context", "logprobs")


def job_to_json(job: Job) -> dict[str, Any]:
    """The public view of a job. ``result`` is the text (generate, chat) or the vectors
    (embed); what else Ollama answered sits beside it, ``null`` when absent."""
    output = job.result
    if isinstance(output, dict):  # this version's stored shape
        result = output.get("embeddings") if job.kind is JobKind.EMBED else output.get("text")
    else:  # a result stored by an older version: the text or the vectors themselves
        result, output = output, {}
    view = {
        "job_id": job.id,
        "status": job.status.value,
        "model": job.model,
        "kind": job.kind.value,
        "priority": job.priority.value,
        "result": result,
        **{key: output.get(key) for key in OUTPUT_FIELDS},
        "error": job.error,
        "error_code": job.error_code,
        "submitted_at": _iso(job.submitted_at),
        "started_at": _iso(job.started_at),
        "completed_at": _iso(job.completed_at),
        "attempts": job.attempts,
        "metadata": job.metadata,
        "source": job.source,
        "node": job.node,
        "load_duration": job.timings.get("load_duration"),
        "total_duration": job.timings.get("total_duration"),
        "prompt_eval_count": job.timings.get("prompt_eval_count"),
        "eval_count": job.timings.get("eval_count"),
    }
    return view


def _encode_job(job: Job) -> bytes:
    return json.dumps(job_to_json(job), separators=(",", ":")).encode()


class Api:
    """The internal API over the store, the pending-job index and the scheduler's
    published snapshot. Reads never talk to Ollama; a cancel aborts the job's request."""

    def __init__(
        self,
        config: Config,
        store: Store,
        pending: PendingIndex,
        registry: ModelRegistry,
        scheduler: Scheduler,
        jobs: JobRunner,
        *,
        clock: Callable[[], float] = time.time,
        fleet: Fleet | None = None,
        gpu: NvmlGpuSource | None = None,
        disk: ModelDisk | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.pending = pending
        self.registry = registry
        self.scheduler = scheduler
        self.jobs = jobs
        self.fleet = fleet
        self.gpu = gpu
        self.disk = disk
        self._clock = clock
        self.waiters = JobWaiters(config.MAX_WAITERS)
        self.job_times = JobTimes()  # latency and wait histograms, for /metrics
        store.on_change(self.waiters.notify)
        store.on_end(self.job_times.observe)
        self.accepting = True
        self.started_at = clock()
        # GET /api/v1/instances; the Manager sets the shared queue's (modelmanager.cluster)
        self.instances: Callable[[], dict[str, Any]] = self._one_instance
        # unfinished jobs other instances sharing the queue hold, for QUEUE_MAX_SIZE
        self.unfinished_elsewhere: Callable[[], int] = lambda: 0
        # jobs of submits between the room check and the queue: concurrent submits share
        # commits, so without counting these they could pass QUEUE_MAX_SIZE together
        self._reserved = 0
        self._room_lock = threading.Lock()

    @property
    def accepting(self) -> bool:
        """Whether submits are taken; set False when the service stops, which also
        answers every waiting ``?wait`` request at once."""
        return self._accepting

    @accepting.setter
    def accepting(self, value: bool) -> None:
        self._accepting = value
        if not value:
            self.waiters.close()

    # ------------------------------------------------------------------------ submit

    def _check_accepting(self) -> None:
        if not self.accepting:
            raise ServiceUnavailable(
                "the service is shutting down; submit again shortly",
                headers={"Retry-After": "5"},
            )

    def _reserve_room(self, n: int) -> None:
        """Count ``n`` jobs against QUEUE_MAX_SIZE until ``_accept`` has queued them."""
        limit = self.config.QUEUE_MAX_SIZE
        if n > limit:  # never fits, however long the client waits
            raise InvalidRequest(
                f"a batch of {n} jobs is more than the whole queue holds (QUEUE_MAX_SIZE is "
                f"{limit}); send it in parts of at most {limit}",
                field="jobs",
            )
        with self._room_lock:
            unfinished = len(self.pending) + self.jobs.in_flight() + self._reserved
            unfinished += self.unfinished_elsewhere()
            if unfinished + n > limit:
                what = (
                    "the queue is full"
                    if n == 1 or unfinished >= limit
                    else (f"the queue has room for {limit - unfinished} more job(s), not {n}")
                )
                raise QueueFull(
                    f"{what} ({unfinished} unfinished jobs, QUEUE_MAX_SIZE is {limit}); "
                    "retry later",
                    details={"unfinished": unfinished, "max": limit},
                    headers={"Retry-After": "5"},
                )
            self._reserved += n

    def _new_job(self, sub: Submission, now: float, source: str) -> Job:
        return Job(
            id=str(uuid.uuid4()),
            model=sub.model,
            runner=runner_of(sub.model, sub.payload.get("options")),
            kind=sub.kind,
            priority=sub.priority,
            payload=sub.payload,
            metadata=sub.metadata,
            submitted_at=now,
            idempotency_key=sub.idempotency_key,
            source=source,
        )

    def _accept(
        self,
        subs: list[Submission],
        *,
        source: str = "api",
        on_created: Callable[[Job], None] | None = None,
    ) -> list[Job]:
        """Store and queue ``subs``. ``on_created`` sees each new job before it is stored,
        so before the scheduler can start it (a front door subscribes to its answer)."""
        self._check_accepting()
        self._reserve_room(len(subs))
        try:
            now = self._clock()
            jobs = [self._new_job(s, now, source) for s in subs]
            if on_created is not None:
                for job in jobs:
                    on_created(job)
            stored = self.store.insert_jobs(jobs)
            for job, created in stored:
                if created:
                    self.pending.add(
                        job.id, job.runner, job.priority, job.seq, job.submitted_at, name=job.model
                    )
        finally:
            with self._room_lock:
                self._reserved -= len(subs)
        self.scheduler.wake()
        return [job for job, _ in stored]

    def submit(self, body: Any) -> dict[str, Any]:
        job = self._accept([validate_submission(body)])[0]
        log.info(
            "job %s accepted: %s %s (%s)", job.id, job.kind.value, job.model, job.priority.value
        )
        return {"job_id": job.id, "status": "submitted"}

    def submit_streamed(
        self, sub: Submission, source: str, *, live: bool = False
    ) -> tuple[Job, Subscription]:
        """Accept one job from a front door (``source``: ``ollama``, ``openai``), subscribed
        to its answer (:mod:`modelmanager.streams`) before the scheduler can start it;
        ``live``: the chunks go on to the client as they come. The caller closes the
        subscription."""
        subs: list[Subscription] = []

        def subscribe(job: Job) -> None:
            subs.append(self.jobs.streams.subscribe(job.id, live))

        try:
            job = self._accept([sub], source=source, on_created=subscribe)[0]
        except BaseException:
            for s in subs:
                s.close()
            raise
        log.info(
            "job %s accepted: %s %s (%s, %s)",
            job.id,
            job.kind.value,
            job.model,
            job.priority.value,
            source,
        )
        return job, subs[0]

    def submit_batch(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("jobs"), list):
            raise InvalidRequest("the body must be an object with a 'jobs' list", field="jobs")
        unknown = set(body) - {"jobs"}
        if unknown:
            raise InvalidRequest(
                f"unknown field(s): {', '.join(sorted(unknown))}", field=sorted(unknown)[0]
            )
        items = body["jobs"]
        if not 0 < len(items) <= MAX_BATCH:
            raise InvalidRequest(f"'jobs' must hold 1 to {MAX_BATCH} jobs", field="jobs")
        subs = []
        for i, item in enumerate(items):
            try:
                subs.append(validate_submission(item))
            except InvalidRequest as exc:
                exc.details["index"] = i
                exc.message = f"jobs[{i}]: {exc.message}"
                raise
        jobs = self._accept(subs)
        log.info("batch of %d jobs accepted", len(jobs))
        return {"job_ids": [j.id for j in jobs], "status": "submitted", "count": len(jobs)}

    # -------------------------------------------------------------------------- read

    def get(self, job_id: str) -> dict[str, Any]:
        job = self.store.get(job_id, payload=False)
        if job is None:
            raise NotFound(f"no job with id {job_id!r}", details={"job_id": job_id})
        return job_to_json(job)

    def get_encoded(self, job_id: str) -> bytes:
        """``get`` as compact JSON bytes, from the store's cache of job views (polls)."""
        body = self.store.job_view(job_id, _encode_job)
        if body is None:
            raise NotFound(f"no job with id {job_id!r}", details={"job_id": job_id})
        return body

    def wait(self, job_id: str, seconds: float) -> tuple[bytes, WaitOutcome]:
        """``get_encoded`` once the job has finished, or after ``seconds`` (see
        :mod:`modelmanager.waiting`), and why it answered."""
        return self.waiters.wait(job_id, seconds, self.get_encoded)

    def list_jobs(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        """A page of jobs, newest first, for the query string of ``GET /api/jobs`` (each
        parameter with its values): ``status``, ``model``, ``limit``, ``cursor``."""
        q = parse_jobs_query(query)
        before = int(q.cursor) if q.cursor is not None else None
        jobs = self.store.list_jobs(
            status=q.status.value if q.status is not None else None,
            model=normalize(q.model) if q.model else None,
            limit=q.limit + 1,  # one more tells whether there is a next page
            before_seq=before,
        )
        page = jobs[: q.limit]
        more = len(jobs) > q.limit
        return {
            "jobs": [job_to_json(j) for j in page],
            "count": len(page),
            "next_cursor": str(page[-1].seq) if more else None,
        }

    # ------------------------------------------------------------------------ change

    def cancel(self, job_id: str) -> dict[str, Any]:
        old = self.store.cancel(job_id, self._clock())
        if old is None:
            raise NotFound(f"no job with id {job_id!r}", details={"job_id": job_id})
        if old.terminal:
            raise Conflict(f"job {job_id} is already {old.value}", details={"status": old.value})
        self.pending.remove(job_id)
        if old is JobStatus.RUNNING:
            self.jobs.abort([job_id])  # Ollama stops generating and frees the slot now
        log.info("job %s cancelled (was %s)", job_id, old.value)
        return {"job_id": job_id, "status": JobStatus.CANCELLED.value, "was": old.value}

    def retry(self, job_id: str) -> dict[str, Any]:
        job = self.store.retry(job_id)
        if job is None:
            current = self.store.get(job_id)
            if current is None:
                raise NotFound(f"no job with id {job_id!r}", details={"job_id": job_id})
            raise Conflict(
                f"only failed jobs can be retried; job {job_id} is {current.status.value}",
                details={"status": current.status.value},
            )
        self.pending.add(
            job.id, job.runner, job.priority, job.seq, job.submitted_at, name=job.model
        )
        self.scheduler.wake()
        log.info("job %s put back in the queue by request", job_id)
        return {"job_id": job_id, "status": job.status.value}

    # ------------------------------------------------------------------------ status

    def _resources(self) -> ResourceSnapshot | None:
        """Every backend's last read, added up (devices and loaded models of all)."""
        read = [b.resources for b in self.scheduler.snapshot().backends if b.resources]
        if not read:
            return None
        if len(read) == 1:
            return read[0]
        sources = {r.source for r in read}
        return ResourceSnapshot(
            taken_at=min(r.taken_at for r in read),
            source=sources.pop() if len(sources) == 1 else "mixed",
            total_bytes=sum(r.total_bytes for r in read),
            used_bytes=sum(r.used_bytes for r in read),
            free_bytes=sum(r.free_bytes for r in read),
            devices=tuple(d for r in read for d in r.devices),
            loaded=tuple(m for r in read for m in r.loaded),
            backend_up=all(r.backend_up for r in read),
            backend_error="; ".join(r.backend_error for r in read if r.backend_error) or None,
        )

    def _device_nodes(self) -> list[str]:
        """The backend of each device of :meth:`_resources`, in the same order."""
        backends = self.scheduler.snapshot().backends
        return [b.name for b in backends if b.resources for _ in b.resources.devices]

    def stats(self) -> dict[str, Any]:
        published = self.scheduler.snapshot()
        snap = self._resources()
        by_status = self.store.counts_by_status()
        counters = published.counters
        return {
            "running": self.accepting,
            "queue": {
                "total_jobs": sum(by_status.values()),
                "by_status": by_status,
                "waiting": len(self.pending),
                "by_model": {
                    self.scheduler.label(runner): depth
                    for runner, depth in self.pending.depth_by_model().items()
                },
            },
            "resources": {
                "source": snap.source if snap else None,
                "vram": {
                    "total": snap.total_bytes if snap else 0,
                    "used": snap.used_bytes if snap else 0,
                    "free": snap.free_bytes if snap else 0,
                },
                "loaded_models": sorted(m.name for m in snap.loaded) if snap else [],
                "managed_models": {
                    r.label: {
                        "state": r.state,
                        "in_flight": r.in_flight,
                        "vram_bytes": r.size_bytes,
                    }
                    for r in published.runners
                },
                "gpus": [
                    {
                        "node": node,
                        "device": f"{node}:gpu{d.index}",
                        "index": d.index,
                        "name": d.name,
                        "uuid": d.uuid,
                        "total": d.total_bytes,
                        "used": d.used_bytes,
                        "free": d.free_bytes,
                        "utilization_pct": d.utilization_pct,
                        "temperature_c": d.temperature_c,
                        "error": d.error,
                    }
                    for d, node in zip(
                        snap.devices if snap else (), self._device_nodes(), strict=False
                    )
                ],
                "backend_up": published.backend_up(),
            },
            "waiting_for": dict(published.waits),
            "counters": {
                k: counters.get(k, 0)
                for k in (
                    "loads",
                    "unloads",
                    "evictions",
                    "ooms",
                    "retries",
                    "completed",
                    "failed",
                )
            },
            # the counters live in memory: they start at 0 with each start of the service
            "counters_since": _iso(self.started_at),
        }

    def models(self) -> dict[str, Any]:
        runners = {r.runner: r for r in self.scheduler.snapshot().runners}
        depth = self.pending.depth_by_model()
        out = []
        for name in sorted(set(self.registry.known_models()) | set(runners) | set(depth)):
            info = self.registry.info(name)
            held = runners.get(name)
            out.append(
                {
                    "name": self.scheduler.label(name),
                    "key": name,
                    "estimated_vram_bytes": info.estimate_bytes,
                    "evidence_vram_bytes": info.evidence_bytes,
                    "estimate_source": info.source,
                    "learned_vram_bytes": info.learned_vram_bytes,
                    "learned_ps_vram_bytes": info.learned_ps_vram_bytes,
                    "learned_load_seconds": info.learned_load_seconds,
                    "loads": info.loads,
                    "installed": info.installed,
                    "loaded": held is not None and held.state == "ready",
                    "state": held.state if held else "unloaded",
                    "in_flight": held.in_flight if held else 0,
                    "queue_depth": sum(depth.get(name, {}).values()),
                }
            )
        return {"models": out}

    def health(self) -> dict[str, Any]:
        """Whether the service takes work and every node's Ollama answers. ``nodes``: each
        node's name, url, up and error (None while up; "not read yet" before its first
        read). ``backend`` is the summary older clients read: ``up`` when every node is
        up; ``url`` and ``error`` of the first node that is down (else of the first node);
        with several nodes the error names the node."""
        snap = self._resources()
        backends = self.scheduler.snapshot().backends
        nodes: list[dict[str, Any]] = []
        for b in backends:
            res = b.resources
            up = res is not None and res.backend_up
            error = None if up else (res.backend_error if res is not None else "not read yet")
            nodes.append({"name": b.name, "url": b.url, "up": up, "error": error})
        up = bool(nodes) and all(n["up"] for n in nodes)
        first = next((n for n in nodes if not n["up"]), nodes[0] if nodes else None)
        if first is None:
            backend = {"url": self.config.OLLAMA_BASE_URL, "up": False, "error": "not read yet"}
        else:
            error = first["error"]
            if error is not None and len(nodes) > 1:
                error = f"node {first['name']}: {error}"
            backend = {"url": first["url"], "up": up, "error": error}
        database = self._database_health()
        return {
            "status": "ok" if up and self.accepting and database["up"] else "degraded",
            "accepting": self.accepting,
            "backend": backend,
            "vram_source": snap.source if snap else None,
            "nodes": nodes,
            "database": database,
            "uptime_seconds": round(self._clock() - self.started_at, 3),
        }

    def _database_health(self) -> dict[str, Any]:
        """``{"kind", "up", "error"}`` of the job store; PostgreSQL is asked to answer."""
        if self.store.kind == "postgresql":
            try:
                self.store.integrity_check()
            except DatabaseUnavailable as exc:
                return {"kind": self.store.kind, "up": False, "error": exc.message}
        return {"kind": self.store.kind, "up": True, "error": None}

    def _one_instance(self) -> dict[str, Any]:
        """``GET /api/v1/instances`` without DATABASE_URL: this instance alone."""
        return {"database": "sqlite", "instances": []}

    # ------------------------------------------------------------------------- nodes

    def nodes(self) -> dict[str, Any]:
        return self._fleet().describe()

    def add_node(self, body: Any) -> dict[str, Any]:
        return self._fleet().register(body)

    def remove_node(self, name: str) -> dict[str, Any]:
        return self._fleet().unregister(name)

    def _fleet(self) -> Fleet:
        if self.fleet is None:
            raise ServiceUnavailable("this service manages no nodes")
        return self.fleet

    def gpu_devices(self) -> dict[str, Any]:
        """This host's GPUs through NVML (``[]`` with no GPU or no NVML)."""
        return {"devices": local_devices(self.gpu)}

    def gpu_driver(self) -> dict[str, Any]:
        return local_driver(self.gpu)

    # ----------------------------------------------------------------- models on disk

    def model_status(self, body: Any) -> dict[str, Any]:
        return self._disk().status(body)

    def model_download(self, body: Any) -> dict[str, Any]:
        return self._disk().download(body)

    def model_delete(self, body: Any) -> dict[str, Any]:
        return self._disk().delete(body)

    def model_list(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        return self._disk().listing(query)

    def model_space(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        return self._disk().space(query)

    def _disk(self) -> ModelDisk:
        if self.disk is None:
            raise ServiceUnavailable(
                "this service manages no models on disk", headers={"Retry-After": "5"}
            )
        return self.disk
