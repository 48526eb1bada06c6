"""Carries out Plans: loads and unloads through Ollama, runs jobs on a thread pool.

It never chooses what to load (the planner does). It owns the per-model residency state
the planner reads (:meth:`views`), applies the retry policy to backend errors, and logs
one line per load, unload, eviction, job end, out-of-memory and retry.

Thread safety: model state and counters sit behind one lock; store and queue are
thread-safe themselves. ``wake`` is called whenever something the scheduler cares about
changed (a job finished, a load ended), so the loop reacts at once.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from config import Config

from .abortable import Call
from .errors import (
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
    OllamaError,
    OutOfMemory,
    RequestAborted,
    RunnerCrashed,
)
from .logger import escape, get_logger
from .model_registry import ModelRegistry, normalize
from .models import MIB, Job, JobKind, ResourceSnapshot
from .names import display_name
from .ollama_client import InferenceResult, OllamaClient
from .queue_manager import QueueManager
from .resource_monitor import ResourceMonitor
from .runners import describe, model_of, options_of
from .store import Store
from .vram_scheduler import ModelView, Residency

log = get_logger("ENGINE")


@dataclass
class _ModelState:
    """One runner the manager holds in Ollama (keyed by its runner key)."""

    residency: Residency
    size_bytes: int
    loaded_at: float
    last_used: float
    slots: int  # requests Ollama runs at once for this model
    name: str  # the model's name as sent to Ollama for loads and unloads
    in_flight: int = 0
    jobs_done: int = 0  # jobs finished since it became ready
    keep_alive: float | None = None  # idle seconds asked by its last job (None: default)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Capped exponential backoff with full jitter: uniform(0, min(cap, base * 2**(n-1)))."""
    return rng.uniform(0.0, min(cap, base * 2 ** max(0, attempt - 1)))


class ExecutionEngine:
    def __init__(
        self,
        client: OllamaClient,
        store: Store,
        queue: QueueManager,
        registry: ModelRegistry,
        monitor: ResourceMonitor,
        config: Config,
        *,
        wake: Callable[[], None] = lambda: None,
        on_backend_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.queue = queue
        self.registry = registry
        self.monitor = monitor
        self.config = config
        self._wake = wake
        self._stale = on_backend_change
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._models: dict[str, _ModelState] = {}
        self._gone_at: dict[str, float] = {}
        self._load_failures: Counter[str] = Counter()
        self._load_blocked_until: dict[str, float] = {}
        self._pulling: set[str] = set()  # model identities being pulled
        self._calls: dict[str, Call] = {}  # job id -> its request in flight
        self._unload_failures: Counter[str] = Counter()
        self._unload_blocked_until: dict[str, float] = {}
        self._memory_ops = 0  # loads/unloads under way (an NVML delta is exact only alone)
        self.counters: Counter[str] = Counter()
        self._pool = ThreadPoolExecutor(config.ENGINE_THREADS, thread_name_prefix="job")
        self._side = ThreadPoolExecutor(4, thread_name_prefix="residency")
        self._closed = False
        # Ollama keeps our models longer than we do, so the manager always unloads first,
        # while models of a manager that died still expire eventually.
        self.ollama_keep_alive = config.MODEL_KEEP_ALIVE * 2 + 60

    # ------------------------------------------------------------------------ views

    def views(self) -> dict[str, ModelView]:
        """Every runner the manager holds, by runner key."""
        with self._lock:
            return {
                runner: ModelView(
                    runner,
                    s.residency,
                    s.in_flight,
                    s.loaded_at,
                    s.last_used,
                    s.size_bytes,
                    s.slots,
                    s.jobs_done,
                    s.keep_alive,
                )
                for runner, s in self._models.items()
            }

    def in_flight(self) -> int:
        with self._lock:
            return sum(s.in_flight for s in self._models.values())

    def load_blocked(self, now: float) -> set[str]:
        """Runners whose last load failed and that wait out a backoff."""
        with self._lock:
            return {m for m, until in self._load_blocked_until.items() if until > now}

    def counters_snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def label(self, runner: str) -> str:
        """How logs name a runner: the model as Ollama stores it, with its options."""
        with self._lock:
            state = self._models.get(runner)
        return describe(state.name if state else self._send_name(runner), runner)

    def _send_name(self, runner: str) -> str:
        """The name to send Ollama for a runner's model: as Ollama stores it when
        ``/api/tags`` listed it, else as a client spelled it (any spelling resolves; these
        read best in logs, and a pull keeps the spelling)."""
        stored = self.registry.stored_name(runner) or self.queue.name_of(runner)
        if stored:
            return stored
        model = model_of(runner)
        try:
            return display_name(model)
        except ValueError:
            return model

    def sync(self, snapshot: ResourceSnapshot) -> None:
        """Notice models Ollama loaded or dropped behind our back (from ``/api/ps``).

        Runners are matched to ``/api/ps`` entries by model identity, whatever the
        spelling or case Ollama reports, or by digest (a copy shares its source's runner).
        """
        if not snapshot.backend_up:
            return
        with self._lock:
            matched: set[int] = set()
            for runner, state in list(self._models.items()):
                hits = [i for i, m in enumerate(snapshot.loaded) if self.registry.holds(runner, m)]
                matched.update(hits)
                fresh = snapshot.taken_at > state.loaded_at
                if state.residency is Residency.READY and not hits and fresh:
                    del self._models[runner]
                    self._gone_at[runner] = snapshot.taken_at
                    log.info(
                        "%s is no longer loaded in Ollama (dropped outside the manager)",
                        describe(state.name, runner),
                    )
            for i, m in enumerate(snapshot.loaded):
                model = normalize(m.name)
                if i in matched or snapshot.taken_at <= self._gone_at.get(model, 0.0):
                    continue
                size = max(m.vram_bytes, self.registry.estimate(model) or 0)
                now = self._clock()
                self._models[model] = _ModelState(
                    Residency.READY, size, now, now, self.slots(model), m.name
                )
                log.info("%s found loaded in Ollama (%d MB); managing it", m.name, size // MIB)

    def slots(self, runner: str) -> int:
        """Ollama's parallel requests for a model: OLLAMA_NUM_PARALLEL, 1 for embedders."""
        return 1 if self.registry.info(runner).is_embedding else self.config.OLLAMA_NUM_PARALLEL

    # ----------------------------------------------------------------------- loads

    def start_load(self, runner: str) -> None:
        size = self.registry.estimate(runner) or 0
        name = self._send_name(runner)
        now = self._clock()
        with self._lock:
            if runner in self._models or self._closed:
                return
            self._models[runner] = _ModelState(
                Residency.LOADING, size, now, now, self.slots(runner), name
            )
            self._memory_ops += 1
        self.store.mark_queued(runner)
        self._side.submit(self._do_load, runner, name, size)

    def _do_load(self, runner: str, name: str, size: int) -> None:
        before = self._used_bytes()
        t0 = time.monotonic()
        info = self.registry.info(runner)
        label = describe(name, runner)
        log.info("loading %s (estimate %d MB)", label, size // MIB)
        try:
            self.client.load(
                name,
                keep_alive=self.ollama_keep_alive,
                options=options_of(runner) or None,
                kind="embed" if info.is_embedding else "generate",
            )
        except OllamaError as exc:
            self._load_failed(runner, label, size, exc)
            return
        except Exception as exc:  # never let a load thread die silently
            log.exception("load of %s failed unexpectedly", label)
            self._load_failed(runner, label, size, OllamaError(str(exc)))
            return
        seconds = time.monotonic() - t0
        with self._lock:
            alone = self._memory_ops == 1
        snap = self.monitor.snapshot()  # one read gives both size_vram and NVML used
        ps_vram = next((m.vram_bytes for m in snap.loaded if self.registry.holds(runner, m)), None)
        after = snap.used_bytes if snap.source == "nvml" else None
        delta = after - before if alone and before is not None and after is not None else None
        learned = self.registry.learn_load(
            runner, ps_vram_bytes=ps_vram, nvml_delta_bytes=delta, load_seconds=seconds
        )
        if ps_vram is None and snap.backend_up and not learned:
            # Loaded, yet already gone from /api/ps: Ollama evicted it again at once, to
            # reload a model it had dropped to fit this one. The estimate was too low.
            learned = self.registry.raise_estimate(
                runner, at_least=int(size * 1.25), why="Ollama dropped it right after loading it"
            )
        now = self._clock()
        with self._lock:
            self._memory_ops -= 1
            self._load_failures.pop(runner, None)
            self._load_blocked_until.pop(runner, None)
            self.counters["loads"] += 1
            state = self._models.get(runner)
            if state is not None:
                state.residency = Residency.READY
                state.size_bytes = learned or size
                state.loaded_at = state.last_used = now
        log.info("loaded %s in %.2fs (%d MB)", label, seconds, (learned or size) // MIB)
        self._stale()
        self._wake()

    def _load_failed(self, runner: str, label: str, size: int, exc: OllamaError) -> None:
        now = self._clock()
        with self._lock:
            self._memory_ops -= 1
            self._models.pop(runner, None)
            self._gone_at[runner] = now
            self._load_failures[runner] += 1
            failures = self._load_failures[runner]
            delay = backoff_delay(
                failures, self.config.RETRY_BASE_SECONDS, self.config.RETRY_MAX_SECONDS, self._rng
            )
            self._load_blocked_until[runner] = now + delay
        self.store.unmark_queued(runner)
        message = escape(exc.message)
        if isinstance(exc, OutOfMemory):
            self.count("ooms")
            self.registry.raise_estimate(runner, at_least=int(size * 1.25))
            log.warning("out of memory loading %s: %s", label, message)
        else:
            log.warning("load of %s failed (%s): %s", label, exc.code, message)
        if isinstance(exc, ModelNotFound) or failures >= self.config.MAX_ATTEMPTS:
            self.fail_model(runner, f"loading {label} failed: {exc.message}", exc.code)
        self._stale()
        self._wake()

    def _used_bytes(self) -> int | None:
        snap = self.monitor.snapshot()
        return snap.used_bytes if snap.source == "nvml" else None

    # ------------------------------------------------------------------------ pulls

    def is_pulling(self, runner: str) -> bool:
        with self._lock:
            return model_of(runner) in self._pulling

    def start_pull(self, runner: str) -> None:
        """Pull the model of a runner Ollama lacks (AUTO_PULL); its jobs wait meanwhile."""
        model = model_of(runner)
        name = self._send_name(runner)
        with self._lock:
            if model in self._pulling or self._closed:
                return
            self._pulling.add(model)
        log.info("pulling %s (AUTO_PULL)", name)
        self._side.submit(self._do_pull, runner, name)

    def _do_pull(self, runner: str, name: str) -> None:
        try:
            self.client.pull(name)
            self.registry.refresh_tags(force=True)
            log.info("pulled %s", name)
        except OllamaError as exc:
            log.warning("pull of %s failed: %s", name, escape(exc.message))
            self.fail_model(runner, f"model '{name}' could not be pulled: {exc.message}", exc.code)
        finally:
            with self._lock:
                self._pulling.discard(model_of(runner))
            self._wake()

    # ---------------------------------------------------------------------- unloads

    def start_unload(self, runner: str, reason: str) -> None:
        with self._lock:
            state = self._models.get(runner)
            if state is None or state.residency is not Residency.READY or state.in_flight:
                return
            if self._unload_blocked_until.get(runner, 0.0) > self._clock():
                return  # the last unload failed: wait out its backoff
            state.residency = Residency.UNLOADING
            self._memory_ops += 1
            self.counters["unloads"] += 1
            if not reason.startswith("idle"):
                self.counters["evictions"] += 1
            name = state.name
        verb = "unloading" if reason.startswith("idle") else "evicting"
        log.info("%s %s: %s", verb, describe(name, runner), reason)
        self._side.submit(self._do_unload, runner, name)

    def _do_unload(self, runner: str, name: str, deadline_s: float = 60.0) -> None:
        """Ask Ollama to unload; the model counts as gone only once /api/ps drops it."""
        gone, why = False, "still listed in /api/ps"
        try:
            self.client.unload(name)
            # Ollama answers at once; the model leaves /api/ps once really unloaded.
            deadline = time.monotonic() + deadline_s
            while time.monotonic() < deadline:
                if not any(self.registry.holds(runner, m) for m in self.client.ps()):
                    gone = True
                    break
                time.sleep(0.02)  # polling Ollama, not waiting in a test
        except ModelNotFound:
            gone = True  # deleted from Ollama: nothing left to unload
        except OllamaError as exc:
            why = exc.message
        now = self._clock()
        with self._lock:
            self._memory_ops -= 1
            if gone:
                self._models.pop(runner, None)
                self._gone_at[runner] = now
                self._unload_failures.pop(runner, None)
            else:
                state = self._models.get(runner)
                if state is not None:  # still loaded: manage it again, retry later
                    state.residency = Residency.READY
                    state.last_used = now
                self._unload_failures[runner] += 1
                delay = backoff_delay(
                    self._unload_failures[runner],
                    self.config.RETRY_BASE_SECONDS,
                    self.config.RETRY_MAX_SECONDS,
                    self._rng,
                )
                self._unload_blocked_until[runner] = now + max(delay, 0.1)
        label = describe(name, runner)
        if gone:
            log.info("unloaded %s", label)
        else:
            log.warning("unload of %s failed (%s); it stays loaded", label, escape(why))
        self._stale()
        self._wake()

    # ------------------------------------------------------------------------- jobs

    def dispatch(self, runner: str, n: int, now: float) -> int:
        """Claim up to ``n`` waiting jobs of a ready runner and start them. Returns count."""
        ids = self.queue.pop(runner, n, now)
        if not ids:
            return 0
        jobs = self.store.claim(ids, now)
        with self._lock:
            state = self._models.get(runner)
            if state is None or state.residency is not Residency.READY or self._closed:
                # it went away between plan and dispatch: give the jobs back untouched
                self.store.release([j.id for j in jobs])
                self._requeue_local(jobs, now)
                return 0
            state.in_flight += len(jobs)
            label = describe(state.name, runner)
            calls = {job.id: Call() for job in jobs}
            self._calls.update(calls)
        for job in jobs:
            log.info("job %s started on %s (attempt %d)", job.id, label, job.attempts)
            self._pool.submit(self._run, job, calls[job.id])
        return len(jobs)

    def abort(self, job_ids: list[str] | None = None) -> int:
        """Abort the requests in flight for these jobs (None: all of them), so Ollama stops
        generating and frees the slot at once. Their jobs end as the store already says
        (cancelled, failed by JOB_TIMEOUT) or, at shutdown, rerun at the next start.
        Returns how many requests were aborted."""
        with self._lock:
            calls = (
                list(self._calls.values())
                if job_ids is None
                else [c for j in job_ids if (c := self._calls.get(j)) is not None]
            )
        for call in calls:
            call.abort()
        return len(calls)

    def _requeue_local(self, jobs: list[Job], now: float, not_before: float = 0.0) -> None:
        for job in jobs:
            self.queue.add(
                job.id, job.runner, job.priority, job.seq, job.submitted_at, not_before, now
            )

    def _call(self, job: Job, call: Call) -> InferenceResult:
        """Send the job's payload to Ollama as it is; ``keep_alive`` is the manager's."""
        fields = {k: v for k, v in job.payload.items() if k != "keep_alive"}
        return self.client.infer(
            job.kind.value, job.model, fields, keep_alive=self.ollama_keep_alive, call=call
        )

    def _run(self, job: Job, call: Call) -> None:
        done = False
        try:
            try:
                res = self._call(job, call)
            except OllamaError as exc:
                self._job_error(job, exc)
                return
            except Exception as exc:
                log.exception("job %s: unexpected error", job.id)
                self._job_error(job, OllamaError(f"unexpected error: {exc}"))
                return
            timings = {
                "total_duration": res.total_duration_ns,
                "load_duration": res.load_duration_ns,
                "prompt_eval_count": res.prompt_eval_count,
                "eval_count": res.eval_count,
                "eval_duration": res.eval_duration_ns,
            }
            busy = (res.total_duration_ns - res.load_duration_ns) / 1e9
            self.registry.learn_job(job.runner, busy)
            done = True
            output = job_output(job, res)
            if self.store.complete(job.id, job.attempts, output, timings, self._clock()):
                self.count("completed")
                log.info("job %s complete (%s, %d tokens)", job.id, job.model, res.eval_count)
            else:
                log.info("job %s: late result of a superseded attempt dropped", job.id)
        finally:
            now = self._clock()
            with self._lock:
                self._calls.pop(job.id, None)
                state = self._models.get(job.runner)
                if state is not None:
                    state.in_flight = max(0, state.in_flight - 1)
                    state.jobs_done += done
                    state.last_used = now
                    if done:
                        state.keep_alive = job.payload.get("keep_alive")
            self._wake()

    def _job_error(self, job: Job, exc: OllamaError) -> None:
        now = self._clock()
        message = escape(exc.message)
        if isinstance(exc, RequestAborted):
            # cancelled, timed out by JOB_TIMEOUT, or the service is stopping: the store
            # already holds the job's fate (or keeps it running, to rerun at next start)
            log.info("job %s: request to Ollama aborted", job.id)
            return
        if isinstance(exc, BackendUnavailable) and not exc.reached:
            # the request never reached Ollama: give the attempt back and wait for it
            self.store.release([job.id])
            self._requeue_local([job], now)
            log.warning("job %s: Ollama unreachable (%s); job waits", job.id, message)
            self._stale()
            return
        if isinstance(exc, BackendTimeout):
            exc = self._timeout_error(exc)
            message = escape(exc.message)
        if isinstance(exc, OutOfMemory):
            self.count("ooms")
            self.registry.raise_estimate(job.runner)
        if isinstance(exc, RunnerCrashed | OutOfMemory):
            self._stale()  # the runner may be gone: re-read /api/ps
        if exc.transient and job.attempts < self.config.MAX_ATTEMPTS:
            delay = backoff_delay(
                job.attempts,
                self.config.RETRY_BASE_SECONDS,
                self.config.RETRY_MAX_SECONDS,
                self._rng,
            )
            if self.store.requeue(job.id, job.attempts, exc.message, exc.code, now + delay):
                self.count("retries")
                self._requeue_local([job], now, now + delay)
                log.warning(
                    "job %s: %s (%s); retry %d/%d in %.1fs",
                    job.id,
                    exc.code,
                    message,
                    job.attempts + 1,
                    self.config.MAX_ATTEMPTS,
                    delay,
                )
            return
        if self.store.fail(job.id, job.attempts, exc.message, exc.code, now):
            self.count("failed")
            log.warning("job %s failed (%s): %s", job.id, exc.code, message)

    def _timeout_error(self, exc: BackendTimeout) -> BackendTimeout:
        """The timeout restated with the setting that bounds it and why it is (not)
        retried."""
        limit = self.config.REQUEST_TIMEOUT
        if exc.chunks:
            text = (
                f"Ollama stalled for REQUEST_TIMEOUT ({limit:g} s) in the middle of the "
                f"answer, after {exc.chunks} chunk(s)"
            )
        else:
            text = (
                f"Ollama sent no token within REQUEST_TIMEOUT ({limit:g} s); the same "
                f"request would wait the same way, so it is not retried (raise "
                f"MM_REQUEST_TIMEOUT if the model needs longer to read the prompt)"
            )
        return BackendTimeout(text, status=exc.status, model=exc.model, chunks=exc.chunks)

    def fail_model(self, runner: str, reason: str, code: str) -> int:
        """Fail every waiting job of ``runner`` at once (too big, not installed, ...)."""
        ids = self.queue.drop_model(runner)
        now = self._clock()
        failed = sum(self.store.fail(job_id, None, reason, code, now) for job_id in ids)
        if failed:
            self.count("failed", failed)
            log.warning("%d job(s) for %s failed: %s", failed, self.label(runner), escape(reason))
        return failed

    # ------------------------------------------------------------------------ stop

    def stop(self, timeout: float) -> bool:
        """Stop starting work; wait up to ``timeout`` s for running jobs, then abort the
        requests still in flight (Ollama stops them; their jobs rerun at the next start).
        True if all ended in time."""
        with self._lock:
            self._closed = True
        deadline = time.monotonic() + timeout
        while self.in_flight() and time.monotonic() < deadline:
            time.sleep(0.02)
        drained = self.in_flight() == 0
        if not drained:
            self.abort()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._side.shutdown(wait=False, cancel_futures=True)
        return drained


def job_output(job: Job, res: InferenceResult) -> dict[str, Any]:
    """What a finished job stores as its result: Ollama's answer beyond the metrics.

    Generate: ``text`` (the response), ``thinking``, ``tool_calls``, ``context``,
    ``logprobs``, ``done_reason``; chat: ``text`` (the message content), ``message`` (the
    whole assistant message: what a client appends to continue the conversation),
    ``thinking``, ``tool_calls``, ``logprobs``, ``done_reason``; embed: ``embeddings``.
    Fields Ollama left out are left out.
    """
    raw = res.raw
    if job.kind is JobKind.EMBED:
        return {"embeddings": res.embeddings or []}
    out: dict[str, Any] = {"text": res.text}
    if job.kind is JobKind.CHAT:
        message = raw.get("message")
        if isinstance(message, dict):
            out["message"] = message
            for key in ("thinking", "tool_calls"):
                if message.get(key):
                    out[key] = message[key]
    else:
        for key in ("thinking", "tool_calls", "context"):
            if raw.get(key):
                out[key] = raw[key]
    for key in ("logprobs", "done_reason"):
        if raw.get(key):
            out[key] = raw[key]
    return out
