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

from .errors import BackendUnavailable, ModelNotFound, OllamaError, OutOfMemory, RunnerCrashed
from .logger import escape, get_logger
from .model_registry import ModelRegistry
from .models import MIB, Job, JobKind, ResourceSnapshot
from .ollama_client import InferenceResult, OllamaClient
from .queue_manager import QueueManager
from .resource_monitor import ResourceMonitor
from .store import Store
from .vram_scheduler import ModelView, Residency

log = get_logger("ENGINE")


@dataclass
class _ModelState:
    residency: Residency
    size_bytes: int
    loaded_at: float
    last_used: float
    slots: int  # requests Ollama runs at once for this model
    in_flight: int = 0
    jobs_done: int = 0  # jobs finished since it became ready


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
        self._pulling: set[str] = set()
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
        with self._lock:
            return {
                name: ModelView(
                    name,
                    s.residency,
                    s.in_flight,
                    s.loaded_at,
                    s.last_used,
                    s.size_bytes,
                    s.slots,
                    s.jobs_done,
                )
                for name, s in self._models.items()
            }

    def in_flight(self) -> int:
        with self._lock:
            return sum(s.in_flight for s in self._models.values())

    def load_blocked(self, now: float) -> set[str]:
        """Models whose last load failed and that wait out a backoff."""
        with self._lock:
            return {m for m, until in self._load_blocked_until.items() if until > now}

    def counters_snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def sync(self, snapshot: ResourceSnapshot) -> None:
        """Notice models Ollama loaded or dropped behind our back (from ``/api/ps``)."""
        if not snapshot.backend_up:
            return
        loaded = {m.name: m for m in snapshot.loaded}
        with self._lock:
            for name, state in list(self._models.items()):
                fresh = snapshot.taken_at > state.loaded_at
                if state.residency is Residency.READY and name not in loaded and fresh:
                    del self._models[name]
                    self._gone_at[name] = snapshot.taken_at
                    log.info("%s is no longer loaded in Ollama (dropped outside the manager)", name)
            for name, m in loaded.items():
                if name in self._models or snapshot.taken_at <= self._gone_at.get(name, 0.0):
                    continue
                size = max(m.vram_bytes, self.registry.estimate(name) or 0)
                now = self._clock()
                self._models[name] = _ModelState(Residency.READY, size, now, now, self.slots(name))
                log.info("%s found loaded in Ollama (%d MB); managing it", name, size // MIB)

    def slots(self, model: str) -> int:
        """Ollama's parallel requests for a model: OLLAMA_NUM_PARALLEL, 1 for embedders."""
        return 1 if self.registry.info(model).is_embedding else self.config.OLLAMA_NUM_PARALLEL

    # ----------------------------------------------------------------------- loads

    def start_load(self, model: str) -> None:
        size = self.registry.estimate(model) or 0
        now = self._clock()
        with self._lock:
            if model in self._models or self._closed:
                return
            self._models[model] = _ModelState(Residency.LOADING, size, now, now, self.slots(model))
            self._memory_ops += 1
        self.store.mark_queued(model)
        self._side.submit(self._do_load, model, size)

    def _do_load(self, model: str, size: int) -> None:
        before = self._used_bytes()
        t0 = time.monotonic()
        info = self.registry.info(model)
        log.info("loading %s (estimate %d MB)", model, size // MIB)
        try:
            self.client.load(
                model,
                keep_alive=self.ollama_keep_alive,
                kind="embed" if info.is_embedding else "generate",
            )
        except OllamaError as exc:
            self._load_failed(model, size, exc)
            return
        except Exception as exc:  # never let a load thread die silently
            log.exception("load of %s failed unexpectedly", model)
            self._load_failed(model, size, OllamaError(str(exc)))
            return
        seconds = time.monotonic() - t0
        with self._lock:
            alone = self._memory_ops == 1
        snap = self.monitor.snapshot()  # one read gives both size_vram and NVML used
        ps_vram = next((m.vram_bytes for m in snap.loaded if m.name == model), None)
        after = snap.used_bytes if snap.source == "nvml" else None
        delta = after - before if alone and before is not None and after is not None else None
        learned = self.registry.learn_load(
            model, ps_vram_bytes=ps_vram, nvml_delta_bytes=delta, load_seconds=seconds
        )
        if ps_vram is None and snap.backend_up and not learned:
            # Loaded, yet already gone from /api/ps: Ollama evicted it again at once, to
            # reload a model it had dropped to fit this one. The estimate was too low.
            learned = self.registry.raise_estimate(
                model, at_least=int(size * 1.25), why="Ollama dropped it right after loading it"
            )
        now = self._clock()
        with self._lock:
            self._memory_ops -= 1
            self._load_failures.pop(model, None)
            self._load_blocked_until.pop(model, None)
            self.counters["loads"] += 1
            state = self._models.get(model)
            if state is not None:
                state.residency = Residency.READY
                state.size_bytes = learned or size
                state.loaded_at = state.last_used = now
        log.info("loaded %s in %.2fs (%d MB)", model, seconds, (learned or size) // MIB)
        self._stale()
        self._wake()

    def _load_failed(self, model: str, size: int, exc: OllamaError) -> None:
        now = self._clock()
        with self._lock:
            self._memory_ops -= 1
            self._models.pop(model, None)
            self._gone_at[model] = now
            self._load_failures[model] += 1
            failures = self._load_failures[model]
            delay = backoff_delay(
                failures, self.config.RETRY_BASE_SECONDS, self.config.RETRY_MAX_SECONDS, self._rng
            )
            self._load_blocked_until[model] = now + delay
        self.store.unmark_queued(model)
        message = escape(exc.message)
        if isinstance(exc, OutOfMemory):
            self.count("ooms")
            self.registry.raise_estimate(model, at_least=int(size * 1.25))
            log.warning("out of memory loading %s: %s", model, message)
        else:
            log.warning("load of %s failed (%s): %s", model, exc.code, message)
        if isinstance(exc, ModelNotFound) or failures >= self.config.MAX_ATTEMPTS:
            self.fail_model(model, f"loading {model} failed: {exc.message}", exc.code)
        self._stale()
        self._wake()

    def _used_bytes(self) -> int | None:
        snap = self.monitor.snapshot()
        return snap.used_bytes if snap.source == "nvml" else None

    # ------------------------------------------------------------------------ pulls

    def is_pulling(self, model: str) -> bool:
        with self._lock:
            return model in self._pulling

    def start_pull(self, model: str) -> None:
        """Pull a model Ollama lacks (AUTO_PULL); its jobs wait meanwhile."""
        with self._lock:
            if model in self._pulling or self._closed:
                return
            self._pulling.add(model)
        log.info("pulling %s (AUTO_PULL)", model)
        self._side.submit(self._do_pull, model)

    def _do_pull(self, model: str) -> None:
        try:
            self.client.pull(model)
            self.registry.refresh_tags(force=True)
            log.info("pulled %s", model)
        except OllamaError as exc:
            log.warning("pull of %s failed: %s", model, escape(exc.message))
            self.fail_model(model, f"model '{model}' could not be pulled: {exc.message}", exc.code)
        finally:
            with self._lock:
                self._pulling.discard(model)
            self._wake()

    # ---------------------------------------------------------------------- unloads

    def start_unload(self, model: str, reason: str) -> None:
        with self._lock:
            state = self._models.get(model)
            if state is None or state.residency is not Residency.READY or state.in_flight:
                return
            if self._unload_blocked_until.get(model, 0.0) > self._clock():
                return  # the last unload failed: wait out its backoff
            state.residency = Residency.UNLOADING
            self._memory_ops += 1
            self.counters["unloads"] += 1
            if not reason.startswith("idle"):
                self.counters["evictions"] += 1
        verb = "unloading" if reason.startswith("idle") else "evicting"
        log.info("%s %s: %s", verb, model, reason)
        self._side.submit(self._do_unload, model)

    def _do_unload(self, model: str, deadline_s: float = 60.0) -> None:
        """Ask Ollama to unload; the model counts as gone only once /api/ps drops it."""
        gone, why = False, "still listed in /api/ps"
        try:
            self.client.unload(model)
            # Ollama answers at once; the model leaves /api/ps once really unloaded.
            deadline = time.monotonic() + deadline_s
            while time.monotonic() < deadline:
                if all(m.name != model for m in self.client.ps()):
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
                self._models.pop(model, None)
                self._gone_at[model] = now
                self._unload_failures.pop(model, None)
            else:
                state = self._models.get(model)
                if state is not None:  # still loaded: manage it again, retry later
                    state.residency = Residency.READY
                    state.last_used = now
                self._unload_failures[model] += 1
                delay = backoff_delay(
                    self._unload_failures[model],
                    self.config.RETRY_BASE_SECONDS,
                    self.config.RETRY_MAX_SECONDS,
                    self._rng,
                )
                self._unload_blocked_until[model] = now + max(delay, 0.1)
        if gone:
            log.info("unloaded %s", model)
        else:
            log.warning("unload of %s failed (%s); it stays loaded", model, escape(why))
        self._stale()
        self._wake()

    # ------------------------------------------------------------------------- jobs

    def dispatch(self, model: str, n: int, now: float) -> int:
        """Claim up to ``n`` waiting jobs of a ready model and start them. Returns count."""
        ids = self.queue.pop(model, n, now)
        if not ids:
            return 0
        jobs = self.store.claim(ids, now)
        with self._lock:
            state = self._models.get(model)
            if state is None or state.residency is not Residency.READY or self._closed:
                # it went away between plan and dispatch: give the jobs back untouched
                self.store.release([j.id for j in jobs])
                self._requeue_local(jobs, now)
                return 0
            state.in_flight += len(jobs)
        for job in jobs:
            log.info("job %s started on %s (attempt %d)", job.id, model, job.attempts)
            self._pool.submit(self._run, job)
        return len(jobs)

    def _requeue_local(self, jobs: list[Job], now: float, not_before: float = 0.0) -> None:
        for job in jobs:
            self.queue.add(
                job.id, job.model, job.priority, job.seq, job.submitted_at, not_before, now
            )

    def _call(self, job: Job) -> InferenceResult:
        p = job.payload
        keep = self.ollama_keep_alive
        if job.kind is JobKind.EMBED:
            return self.client.embed(
                job.model, p["input"], keep_alive=keep, options=p.get("options")
            )
        if job.kind is JobKind.CHAT:
            return self.client.chat(
                job.model,
                p["messages"],
                keep_alive=keep,
                format=p.get("format"),
                options=p.get("options"),
            )
        return self.client.generate(
            job.model,
            p.get("prompt", ""),
            keep_alive=keep,
            system=p.get("system"),
            images=p.get("images"),
            format=p.get("format"),
            options=p.get("options"),
        )

    def _run(self, job: Job) -> None:
        done = False
        try:
            try:
                res = self._call(job)
            except OllamaError as exc:
                self._job_error(job, exc)
                return
            except Exception as exc:
                log.exception("job %s: unexpected error", job.id)
                self._job_error(job, OllamaError(f"unexpected error: {exc}"))
                return
            result: Any = res.embeddings if job.kind is JobKind.EMBED else res.text
            timings = {
                "total_duration": res.total_duration_ns,
                "load_duration": res.load_duration_ns,
                "prompt_eval_count": res.prompt_eval_count,
                "eval_count": res.eval_count,
                "eval_duration": res.eval_duration_ns,
            }
            self.registry.learn_job(job.model, (res.total_duration_ns - res.load_duration_ns) / 1e9)
            done = True
            if self.store.complete(job.id, job.attempts, result, timings, self._clock()):
                self.count("completed")
                log.info("job %s complete (%s, %d tokens)", job.id, job.model, res.eval_count)
            else:
                log.info("job %s: late result of a superseded attempt dropped", job.id)
        finally:
            now = self._clock()
            with self._lock:
                state = self._models.get(job.model)
                if state is not None:
                    state.in_flight = max(0, state.in_flight - 1)
                    state.jobs_done += done
                    state.last_used = now
            self._wake()

    def _job_error(self, job: Job, exc: OllamaError) -> None:
        now = self._clock()
        message = escape(exc.message)
        if isinstance(exc, BackendUnavailable) and not exc.reached:
            # the request never reached Ollama: give the attempt back and wait for it
            self.store.release([job.id])
            self._requeue_local([job], now)
            log.warning("job %s: Ollama unreachable (%s); job waits", job.id, message)
            self._stale()
            return
        if isinstance(exc, OutOfMemory):
            self.count("ooms")
            self.registry.raise_estimate(job.model)
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

    def fail_model(self, model: str, reason: str, code: str) -> int:
        """Fail every waiting job of ``model`` at once (too big, not installed, ...)."""
        ids = self.queue.drop_model(model)
        now = self._clock()
        failed = sum(self.store.fail(job_id, None, reason, code, now) for job_id in ids)
        if failed:
            self.count("failed", failed)
            log.warning("%d job(s) for %s failed: %s", failed, model, escape(reason))
        return failed

    # ------------------------------------------------------------------------ stop

    def stop(self, timeout: float) -> bool:
        """Stop starting work; wait up to ``timeout`` s for running jobs. True if all ended."""
        with self._lock:
            self._closed = True
        deadline = time.monotonic() + timeout
        while self.in_flight() and time.monotonic() < deadline:
            time.sleep(0.02)
        drained = self.in_flight() == 0
        self._pool.shutdown(wait=drained, cancel_futures=True)
        self._side.shutdown(wait=False, cancel_futures=True)
        return drained
