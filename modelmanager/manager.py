"""Wires the components and runs the scheduler loop (one thread that owns the loop state).

``tick(now)`` is one pass: release retries whose backoff ended, read resources (cached for
``MONITOR_INTERVAL``; refreshed at once after a load, unload or backend error), ask the
pure planner for a Plan, hand it to the engine. The loop wakes early on every submit and
every job end, so dispatch does not wait for the next 100 ms tick; with nothing waiting a
pass is a few dictionary reads.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from config import Config

from .api import Api
from .errors import DataDirLocked
from .execution_engine import ExecutionEngine
from .logger import escape, get_logger
from .model_registry import ModelInfo, ModelRegistry
from .models import ResourceSnapshot
from .ollama_client import OllamaClient
from .queue_manager import ModelDemand, QueueManager
from .resource_monitor import NvmlGpuSource, ResourceMonitor
from .store import Store
from .vram_scheduler import PlannerSettings, plan

log = get_logger("SCHEDULER")
syslog = get_logger("SYSTEM")

IDLE_REFRESH = 5.0  # seconds between resource snapshots when nothing waits
HOUSEKEEPING_INTERVAL = 1.0  # seconds between JOB_TIMEOUT / RESULT_TTL sweeps


class Manager:
    def __init__(
        self,
        config: Config,
        *,
        client: OllamaClient | None = None,
        gpu: NvmlGpuSource | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        data = Path(config.DATA_DIR)
        data.mkdir(parents=True, exist_ok=True)
        self._lockfile = _lock_data_dir(data)
        self.store = Store(data / "jobs.db", synchronous=config.SQLITE_SYNCHRONOUS)
        self.client = client or OllamaClient(
            config.OLLAMA_BASE_URL,
            timeout=config.REQUEST_TIMEOUT,
            load_timeout=config.LOAD_TIMEOUT,
        )
        self.monitor = ResourceMonitor(
            self.client.ps, gpu=gpu, budget_bytes=config.budget_bytes, clock=clock
        )
        self.registry = ModelRegistry(
            self.store,
            multiplier=config.VRAM_ESTIMATION_MULTIPLIER,
            tags=self.client.tags,
            show=self.client.show,
            clock=clock,
        )
        self.queue = QueueManager(config.AGING_SECONDS)
        self._wake_event = threading.Event()
        self._stop = threading.Event()
        self._snapshot: ResourceSnapshot | None = None
        self._snapshot_lock = threading.Lock()
        self._stale = True
        self.engine = ExecutionEngine(
            self.client,
            self.store,
            self.queue,
            self.registry,
            self.monitor,
            config,
            wake=self.wake,
            on_backend_change=self.mark_stale,
            clock=clock,
        )
        self.api = Api(
            config,
            self.store,
            self.queue,
            self.registry,
            self.engine,
            snapshot=self.snapshot,
            wake=self.wake,
            clock=clock,
        )
        self.settings = PlannerSettings(
            safety_margin_bytes=config.safety_margin_bytes,
            max_concurrent_per_model=config.MAX_CONCURRENT_PER_MODEL,
            min_residency=config.MIN_RESIDENCY,
            keep_alive=config.MODEL_KEEP_ALIVE,
            max_loaded_models=config.OLLAMA_MAX_LOADED_MODELS,
        )
        self._thread: threading.Thread | None = None
        self._waiting_logged: set[str] = set()
        self._backend_up: bool | None = None
        self._housekept_at = 0.0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Manager:
        now = self.clock()
        requeued, failed = self.store.recover(self.config.MAX_ATTEMPTS, now)
        if requeued or failed:
            syslog.info(
                "recovered after restart: %d job(s) back in the queue, %d failed "
                "after MAX_ATTEMPTS",
                requeued,
                failed,
            )
        n = self.queue.add_many(self.store.waiting_jobs(), now)
        syslog.info(
            "Model Manager started: Ollama at %s, %d job(s) waiting, store %s",
            self.config.OLLAMA_BASE_URL,
            n,
            self.store.path,
        )
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, let running jobs finish up to ``timeout``, close. Idempotent."""
        if self._stop.is_set():
            return
        self.api.accepting = False
        self._stop.set()
        self._wake_event.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        drained = self.engine.stop(timeout)
        syslog.info(
            "stopped%s", "" if drained else f"; jobs still running after {timeout}s will rerun"
        )
        self.monitor.close()
        self.client.close()
        self.store.close()
        self._lockfile.close()

    def wake(self) -> None:
        self._wake_event.set()

    def mark_stale(self) -> None:
        self._stale = True
        self._wake_event.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake_event.clear()
            try:
                self.tick()
                now = self.clock()
                if now - self._housekept_at >= HOUSEKEEPING_INTERVAL:
                    self._housekept_at = now
                    self.housekeeping(now)
            except Exception:
                log.exception("scheduler pass failed; continuing")
            self._wake_event.wait(self._next_wait())

    def _next_wait(self) -> float:
        interval = self.config.SCHEDULER_LOOP_INTERVAL
        due = self.queue.next_delayed_at()
        return interval if due is None else max(0.0, min(interval, due - self.clock()))

    # ---------------------------------------------------------------------- pass

    def housekeeping(self, now: float) -> None:
        """Fail jobs past JOB_TIMEOUT; delete results older than RESULT_TTL."""
        timeout = self.config.JOB_TIMEOUT
        if timeout:
            expired = self.store.expire(now - timeout, now, timeout)
            for job_id in expired:
                self.queue.remove(job_id)
            self.engine.abort(expired)  # Ollama stops the expired ones that were running
            if expired:
                log.warning(
                    "%d job(s) failed: not finished within JOB_TIMEOUT (%gs)", len(expired), timeout
                )
        if self.config.RESULT_TTL:
            purged = self.store.purge(now - self.config.RESULT_TTL)
            if purged:
                syslog.info("purged %d finished job(s) older than RESULT_TTL", purged)

    def snapshot(self, *, max_age: float | None = None) -> ResourceSnapshot:
        """The latest resource snapshot, refreshed if older than ``max_age`` or stale."""
        max_age = self.config.MONITOR_INTERVAL if max_age is None else max_age
        with self._snapshot_lock:
            snap = self._snapshot
            if self._stale or snap is None or self.clock() - snap.taken_at >= max_age:
                self._stale = False
                snap = self._snapshot = self.monitor.snapshot()
                self.engine.sync(snap)
                self._note_backend(snap)
            return snap

    def _note_backend(self, snap: ResourceSnapshot) -> None:
        if snap.backend_up != self._backend_up:
            if snap.backend_up:
                syslog.info("Ollama reachable at %s", self.config.OLLAMA_BASE_URL)
            else:
                syslog.warning(
                    "Ollama unreachable at %s (%s); jobs wait",
                    self.config.OLLAMA_BASE_URL,
                    escape(snap.backend_error or ""),
                )
            self._backend_up = snap.backend_up

    def tick(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.queue.release_delayed(now)
        demand = self.queue.demand(now)
        views = self.engine.views()
        if not demand and not views:
            return  # idle: nothing waits, nothing loaded
        # Dispatching to loaded models needs no VRAM figures; only load decisions do.
        must_plan_loads = any(d.model not in views for d in demand)
        snap = self.snapshot(max_age=None if must_plan_loads else IDLE_REFRESH)
        views = self.engine.views()
        blocked = self.engine.load_blocked(now)
        demand = [d for d in demand if d.model in views or d.model not in blocked]
        infos = self._estimates([d.model for d in demand if d.model not in views])
        estimates = {m: info.estimate_bytes for m, info in infos.items()}
        evidence = {m: e for m, info in infos.items() if (e := info.evidence_bytes) is not None}
        work = {m: self._queued_work(d) for d in demand if (m := d.model) in estimates}
        result = plan(demand, views, snap, estimates, self.settings, now, work, evidence)
        for model, reason in result.fail:
            self.engine.fail_model(model, reason, "MODEL_TOO_LARGE")
        for model, reason in result.unloads:
            self.engine.start_unload(model, reason)
        for model in result.loads:
            self.engine.start_load(model)
        for model, n in result.dispatch.items():
            self.engine.dispatch(model, n, now)
        self._log_waiting(result.waiting_for_memory, snap)

    def _queued_work(self, d: ModelDemand) -> float:
        """Estimated seconds the waiting jobs of a model keep its runner busy."""
        slots = self.engine.slots(d.model)
        return d.waiting * self.registry.job_seconds(d.model) / slots

    def _estimates(self, runners: list[str]) -> dict[str, ModelInfo]:
        """What is known of runners that wait to be loaded; fails jobs of absent models."""
        out: dict[str, ModelInfo] = {}
        if not runners:
            return out
        self.registry.refresh_tags()
        for runner in runners:
            if self.engine.is_pulling(runner):
                continue
            installed = self.registry.installed(runner)
            if installed is False and self.registry.refresh_tags(force=True):
                installed = self.registry.installed(runner)
            if installed is False and self.config.AUTO_PULL:
                self.engine.start_pull(runner)
                continue
            if installed is False:
                name = self.queue.name_of(runner) or runner
                self.engine.fail_model(
                    runner,
                    f"model '{name}' is not installed in Ollama; pull it first "
                    f"(ollama pull {name})",
                    "MODEL_NOT_FOUND",
                )
                continue
            out[runner] = self.registry.info(runner)
        return out

    def _log_waiting(self, waiting: list[str], snap: ResourceSnapshot) -> None:
        now_waiting = set(waiting)
        for runner in now_waiting - self._waiting_logged:
            log.info(
                "%s waits for VRAM (%d MB free)",
                self.engine.label(runner),
                snap.free_bytes // (1024 * 1024),
            )
        self._waiting_logged = now_waiting


def _lock_data_dir(data: Path) -> IO[str]:
    """Hold an exclusive lock on ``data/manager.lock`` for the life of the process."""
    path = data / "manager.lock"
    handle = open(path, "a+")  # noqa: SIM115 - held open until stop()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirLocked(
            f"another Model Manager is already running with data directory {data} "
            f"(lock {path} is held); stop it or use another --data-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
