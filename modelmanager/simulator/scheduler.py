"""Ollama's scheduler (v0.11.5+): a fast path for loaded models, one FIFO pending queue
worked by one thread with head-of-line blocking, one load at a time, eviction by
(keep_alive, name) with idle runners first, a cap on loaded models (OLLAMA_FACTS §2).
With several GPUs a runner is placed as :mod:`.gpu` describes (§2.9).

Handler threads call :meth:`Scheduler._acquire`; the scheduler thread runs
:meth:`Scheduler._scheduler_loop`. A request whose client goes away leaves the queue at
once, and a load nobody waits for any more is aborted, as Ollama cancels it.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from typing import Any

from .catalog import CUDA_CONTEXT_BYTES, ModelSpec
from .gpu import Placement, place, spill
from .residency import POLL_S, Residency
from .runners import CRASHED, GONE, LOADING, READY, RELEASING, Pending, Runner, RunnerOptions
from .watch import ClientGone, ShuttingDown, Watch
from .wire import ERR_LOAD_OOM, ERR_QUEUE_FULL, ERR_SHUTDOWN, ApiError

OOM_STARTUP_S = 0.3  # how long a load that runs out of memory takes to fail (scaled)


class Scheduler(Residency):
    """Residency plus the pending queue and the scheduler thread's loop."""

    def __init__(self, *, max_queue: int, **residency: Any) -> None:
        super().__init__(**residency)
        self.max_queue = max_queue
        self._queue: deque[Pending] = deque()
        self._head: Pending | None = None

    # ----- getting a runner (handler threads) ----------------------------------------

    def _acquire(
        self,
        spec: ModelSpec,
        name: str,
        opts: RunnerOptions,
        keep_alive: float | None,
        watch: Watch,
    ) -> Runner:
        """Fast path or the FIFO queue; blocks until a runner is attached (refcount held).

        ``name`` is the stored name of the requested model (listed in /api/ps if this
        request loads it). Raises :class:`ApiError` (503 queue full, 500 load failure),
        :class:`ClientGone` or :class:`ShuttingDown`.
        """
        with self._cv:
            if self._stopping:
                raise ShuttingDown
            r = self._loaded.get(spec.name)
            if r is not None and self._usable(r, opts):
                self._attach(r, keep_alive)
                return r
            if len(self._queue) >= self.max_queue:
                raise ApiError(503, ERR_QUEUE_FULL)
            pending = Pending(spec, name, opts, keep_alive)
            self._queue.append(pending)
            self._cv.notify_all()
            while pending.runner is None and pending.error is None:
                if self._stopping or watch.gone:
                    pending.cancelled = True
                    with contextlib.suppress(ValueError):
                        self._queue.remove(pending)
                    self._cv.notify_all()
                    raise ShuttingDown if self._stopping else ClientGone
                self._cv.wait(POLL_S)
            if pending.error is not None:
                raise pending.error
            assert pending.runner is not None
            return pending.runner

    # ----- the scheduler thread --------------------------------------------------------

    def _scheduler_loop(self) -> None:
        """Ollama's ``processPending``: one request at a time, strictly FIFO."""
        with self._cv:
            while True:
                while not self._stopping and not self._queue:
                    self._cv.wait()
                if self._stopping:
                    for pending in self._queue:
                        pending.error = ApiError(500, ERR_SHUTDOWN)
                    self._queue.clear()
                    self._cv.notify_all()
                    return
                pending = self._queue.popleft()
                self._head = pending
                try:
                    self._serve_head(pending)
                except Exception as exc:  # keep scheduling whatever went wrong
                    pending.error = ApiError(500, f"simulator error: {exc!r}")
                finally:
                    self._head = None
                    self._cv.notify_all()

    def _serve_head(self, p: Pending) -> None:
        """Find or make a runner for the head request; blocks the whole queue meanwhile."""
        while True:
            if p.cancelled:
                return
            if self._stopping:
                p.error = ApiError(500, ERR_SHUTDOWN)
                return
            existing = self._loaded.get(p.spec.name)
            if existing is not None:
                if self._usable(existing, p.opts):
                    self._attach(existing, p.keep_alive)
                    p.runner = existing
                    return
                if not existing.expiring:
                    reason = "reload" if existing.opts.needs_reload(p.opts) else "expired"
                    self._mark_expiring(existing, reason)
                self._wait_gone(existing, p)
                continue
            if len(self._loaded) >= self.max_loaded_models:
                self._evict_one(p, "max loaded models")
                continue
            parallel = 1 if p.spec.is_embedding else self.num_parallel
            full = p.spec.vram_for(p.opts.num_ctx, parallel)
            vram = self._vram_part(p.spec, p.opts, full)
            parts = place(vram, self._ollama_free(), CUDA_CONTEXT_BYTES)
            if parts is not None:
                self._load(p, parallel, full, parts)
                return
            if self._releasing:
                self._wait_releases(p)
                continue
            if self._loaded:
                self._evict_one(p, "needs memory")
                continue
            # too big for the GPUs: part of it on the CPU
            self._load(p, parallel, full, spill(vram, self._ollama_free(), CUDA_CONTEXT_BYTES))
            return

    def _vram_part(self, spec: ModelSpec, opts: RunnerOptions, full: int) -> int:
        """Bytes of a runner of ``full`` bytes that go to the GPU with ``num_gpu``."""
        if opts.num_gpu == 0:
            return 0
        layers = spec.block_count + 1
        if 0 < opts.num_gpu < layers:
            return full * opts.num_gpu // layers
        return full

    def _evict_one(self, p: Pending, reason: str) -> None:
        """One victim per iteration: sort by (keep_alive, name), idle first; wait it out."""
        ordered = sorted(self._loaded.values(), key=lambda r: (r.session, r.spec.name))
        idle = [r for r in ordered if r.refcount == 0 and r.state == READY]
        victim = idle[0] if idle else ordered[0]
        self._mark_expiring(victim, f"evicted ({reason})")
        self._wait_gone(victim, p)

    def _wait_gone(self, r: Runner, p: Pending) -> None:
        """Block (lock released while waiting) until ``r`` is unloaded and its VRAM free."""
        while r.state in (LOADING, READY, RELEASING) and not self._stopping and not p.cancelled:
            self._cv.wait(POLL_S)

    def _wait_releases(self, p: Pending) -> None:
        while self._releasing and not self._stopping and not p.cancelled:
            self._cv.wait(POLL_S)

    def _load(self, p: Pending, parallel: int, full: int, parts: Placement) -> None:
        """Start a runner for the head request on the GPUs ``parts`` names and wait for it
        (one load at a time). It runs out of memory if it does not fit in some GPU's REAL
        free memory (what other programs hold included)."""
        spec = p.spec
        vram = sum(part for _, part in parts)
        cpu_share = 1.0 - (vram / full if full else 1.0)
        self._seq += 1
        r = Runner(
            spec=spec,
            name=p.name,
            opts=p.opts,
            parallel=parallel,
            size=full,
            size_vram=vram,
            session=self.default_keep_alive if p.keep_alive is None else p.keep_alive,
            pid=40000 + 100000 * self.nvml_index + self._seq,
            seq=self._seq,
            token_seconds=spec.token_seconds * (1.0 + 9.0 * cpu_share),
            parts=parts,
        )
        self._loaded[spec.name] = r
        oom = any(r.mb_on(i) > self._gpus[i].total_mb - self._real_used_mb(i) for i in r.gpus)
        r.counted = not oom
        self._loads += 1
        event: dict[str, Any] = {
            "model": r.name,
            "gpus": sorted(r.gpus),
            "started": time.monotonic(),
            "finished": None,
            "ok": None,
        }
        self._load_events.append(event)
        self._memory_changed()
        seconds = OOM_STARTUP_S if oom else spec.load_seconds(r.gpu_bytes)
        deadline = time.monotonic() + self._scaled(seconds)
        while r.state == LOADING and not self._stopping and not p.cancelled:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._cv.wait(min(left, POLL_S))
        event["finished"] = time.monotonic()
        event["ok"] = False
        if r.state == CRASHED:
            p.error = ApiError(500, ERR_LOAD_OOM)
            return
        if self._stopping:
            self._drop(r, GONE)
            p.error = ApiError(500, ERR_SHUTDOWN)
            return
        if p.cancelled:  # the client went away: Ollama aborts the load
            self._unload(r, "load aborted")
            return
        if oom:
            self._ooms += 1
            self._drop(r, GONE)
            p.error = ApiError(500, ERR_LOAD_OOM)
            return
        r.state = READY
        event["ok"] = True
        self._attach(r, p.keep_alive)
        p.runner = r
        self._cv.notify_all()
