"""Runner residency: what is loaded, its memory, its slots, idle expiry and unloading.

:class:`Residency` holds the simulator's shared state behind ONE condition variable
(``_cv``): loaded and releasing runners, the simulated GPUs' memory, the gate, counters
and logs. Methods whose names start with ``_`` and are documented "lock held" must be
called with ``_cv`` held; the others take it. The FIFO queue and the scheduler thread
build on this in :mod:`.scheduler`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from .gpu import Gpu
from .memory import GpuMemory
from .runners import CRASHED, GONE, READY, RELEASING, Runner, RunnerCrashed, RunnerOptions
from .watch import ClientGone, ShuttingDown, Watch
from .wire import MAX_INT64_NS

POLL_S = 0.05  # how often waiting threads re-check conditions nobody notifies about


class Residency(GpuMemory):
    """Loaded runners and the GPUs they live on (:class:`~.memory.GpuMemory`). Durations
    are seconds; memory is bytes, except names ending in ``_mb`` (MiB)."""

    def __init__(
        self,
        *,
        gpu_vram_mb: tuple[int, ...],
        nvml_index: int,
        time_scale: float,
        nvml_state: Path | None,
        num_parallel: int,
        max_loaded_models: int,
        default_keep_alive: float,
        vram_release_lag: float,
        scale_keep_alive: bool,
        gpu_name: str,
        request_log_size: int,
    ) -> None:
        super().__init__(
            gpu_vram_mb=gpu_vram_mb,
            nvml_index=nvml_index,
            nvml_state=nvml_state,
            gpu_name=gpu_name,
        )
        self.time_scale = time_scale
        self.num_parallel = num_parallel
        self.max_loaded_models = max_loaded_models
        self.default_keep_alive = default_keep_alive
        self.vram_release_lag = vram_release_lag
        self.scale_keep_alive = scale_keep_alive
        self.request_log_size = request_log_size

        self._cv = threading.Condition()
        self._stop_event = threading.Event()
        self._stopping = False
        self._loaded: dict[str, Runner] = {}  # by the weights' identity (catalog name)
        self._releasing: list[Runner] = []
        self._seq = 0
        self._gate_closed = False
        self._gate_after = 0
        self._in_flight = self._gated = self._generating = 0
        self._reset_counters()

    # ----- accounting (lock held) ------------------------------------------------------

    def _reset_counters(self) -> None:
        self._loads = self._unloads = self._ooms = self._crashes = self._cancelled = 0
        self._by_endpoint: dict[str, int] = {}
        self._by_status: dict[str, int] = {}
        self._load_events: deque[dict[str, Any]] = deque(maxlen=1000)
        self._unload_events: deque[dict[str, Any]] = deque(maxlen=1000)
        self._request_log: deque[dict[str, Any]] = deque(maxlen=self.request_log_size)
        self._peak_mb = 0

    def _scaled(self, seconds: float) -> float:
        return seconds * self.time_scale

    def _keep_alive_scaled(self, seconds: float) -> float:
        return seconds * self.time_scale if self.scale_keep_alive else seconds

    def _memory_changed(self) -> None:
        self._track_peaks()
        self._write_nvml()
        self._cv.notify_all()

    def _runner_info(self, r: Runner) -> dict[str, Any]:
        return {
            "model": r.name,
            "state": r.state,
            "refcount": r.refcount,
            "active": r.active,
            "expiring": r.expiring,
            "keep_alive": None if math.isinf(r.session) else r.session,
            "size_vram": r.size_vram,
            "gpu_mb": r.gpu_mb,
            "gpus": [{"index": i, "size_vram": part, "gpu_mb": r.mb_on(i)} for i, part in r.parts],
            "num_parallel": r.parallel,
            "context_length": r.context_length,
            "pid": r.pid,
        }

    # ----- the request log (takes the lock) ------------------------------------------

    def _record(
        self,
        t0: float,
        endpoint: str,
        model: str | None,
        status: int,
        fault: str | None = None,
        tag: str | None = None,
    ) -> dict[str, Any]:
        """Count a request and append it to the request log; return its log entry."""
        entry: dict[str, Any] = {"t": t0, "endpoint": endpoint, "model": model, "status": status}
        if fault:
            entry["fault"] = fault
        if tag:
            entry["tag"] = tag
        with self._cv:
            self._by_endpoint[endpoint] = self._by_endpoint.get(endpoint, 0) + 1
            self._by_status[str(status)] = self._by_status.get(str(status), 0) + 1
            self._request_log.append(entry)
        return entry

    def _record_cancel(
        self,
        entry: dict[str, Any] | None,
        t0: float,
        endpoint: str,
        model: str | None,
        tag: str | None,
    ) -> None:
        """The client of a request went away: count it, log it with status 499 (what
        Ollama logs), changing the entry of an answer that had already begun."""
        if entry is None:
            self._record(t0, endpoint, model, 499, tag=tag)
        else:
            with self._cv:
                old = str(entry["status"])
                self._by_status[old] = self._by_status.get(old, 1) - 1
                if not self._by_status[old]:
                    del self._by_status[old]
                self._by_status["499"] = self._by_status.get("499", 0) + 1
                entry["status"] = 499
        with self._cv:
            self._cancelled += 1

    # ----- runners: attach, release, unload, crash (lock held) -------------------------

    def _usable(self, r: Runner, opts: RunnerOptions) -> bool:
        return r.state == READY and not r.expiring and not r.opts.needs_reload(opts)

    def _attach(self, r: Runner, keep_alive: float | None) -> None:
        r.refcount += 1
        r.idle_deadline = None
        if keep_alive is not None and not r.expiring:
            r.session = keep_alive

    def _go_idle(self, r: Runner) -> None:
        if r.expiring or r.session <= 0:
            self._unload(r, r.expire_reason or "keep_alive 0")
            return
        if math.isinf(r.session):
            r.idle_deadline = None
            r.expires_wall = time.time() + MAX_INT64_NS / 1e9
        else:
            delay = self._keep_alive_scaled(r.session)
            r.idle_deadline = time.monotonic() + delay
            r.expires_wall = time.time() + delay

    def _mark_expiring(self, r: Runner, reason: str) -> None:
        if not r.expiring:
            r.expiring = True
            r.expire_reason = reason
        r.session = 0.0
        if r.state == READY and r.refcount == 0:
            self._unload(r, r.expire_reason)
        self._cv.notify_all()

    def _unload(self, r: Runner, reason: str) -> None:
        """Remove ``r`` from /api/ps now; its memory is freed after the release lag."""
        if self._loaded.get(r.spec.name) is r:
            del self._loaded[r.spec.name]
        if r.counted:
            r.state = RELEASING
            r.release_at = time.monotonic() + self._scaled(self.vram_release_lag)
            self._releasing.append(r)
        else:
            r.state = GONE
        self._unloads += 1
        self._unload_events.append({"model": r.name, "t": time.monotonic(), "reason": reason})
        self._memory_changed()

    def _drop(self, r: Runner, state: str) -> None:
        """The runner process is gone at once (crash, failed load): memory freed now."""
        if self._loaded.get(r.spec.name) is r:
            del self._loaded[r.spec.name]
        r.state = state
        r.counted = False
        self._memory_changed()

    def _crash_until_fits(self) -> None:
        """Real use above a GPU's capacity: crash the runners on that GPU, most recently
        loaded first, until it fits (runners on other GPUs only are spared)."""
        for g in self._gpus:
            self._crash_until_gpu_fits(g)

    def _crash_until_gpu_fits(self, g: Gpu) -> None:
        while self._real_used_mb(g.index) > g.total_mb:
            candidates = [r for r in self._loaded.values() if r.counted and g.index in r.gpus]
            if not candidates:
                break
            victim = max(candidates, key=lambda r: r.seq)
            self._crashes += 1
            self._unload_events.append(
                {"model": victim.name, "t": time.monotonic(), "reason": "crash"}
            )
            self._drop(victim, CRASHED)

    def _release(self, r: Runner) -> None:
        """A request is done with ``r`` (its HTTP exchange ended). Takes the lock."""
        with self._cv:
            r.refcount -= 1
            if r.refcount == 0 and r.state == READY:
                self._go_idle(r)
            self._cv.notify_all()

    def request_unload(self, spec_name: str) -> None:
        """``keep_alive: 0`` with an empty prompt: expire the runner of the weights
        ``spec_name`` once it is idle. Takes the lock."""
        with self._cv:
            r = self._loaded.get(spec_name)
            if r is not None:
                self._mark_expiring(r, "requested")

    # ----- the GPUs' other programs (takes the lock) -----------------------------------

    def set_other_program_mb(self, mb: int, gpu: int | None = None) -> None:
        """Memory (MiB) another program holds on GPU ``gpu`` (None: GPU 0). Ollama's fit
        check cannot see it; if real use then exceeds that GPU, the runners on it crash,
        most recently loaded first."""
        if mb < 0:
            raise ValueError(f"other_mb must be >= 0, got {mb}")
        index = 0 if gpu is None else gpu
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"gpu must be a GPU index, got {gpu!r}")
        if not 0 <= index < len(self._gpus):
            raise ValueError(f"gpu must be 0..{len(self._gpus) - 1}, got {gpu}")
        with self._cv:
            self._gpus[index].other_mb = int(mb)
            self._crash_until_fits()
            self._write_nvml()
            self._cv.notify_all()

    # ----- slots and the gate (take the lock) ------------------------------------------

    def _enter_slot(self, r: Runner, watch: Watch) -> None:
        """Wait (FIFO) for one of the runner's ``num_parallel`` slots."""
        ticket = object()
        with self._cv:
            r.waiters.append(ticket)
            try:
                while True:
                    self._check_alive(r, watch)
                    if r.waiters[0] is ticket and r.active < r.parallel:
                        r.waiters.popleft()
                        r.active += 1
                        return
                    self._cv.wait(POLL_S)
            except BaseException:
                with contextlib.suppress(ValueError):
                    r.waiters.remove(ticket)
                self._cv.notify_all()
                raise

    def _leave_slot(self, r: Runner) -> None:
        with self._cv:
            r.active -= 1
            self._cv.notify_all()

    def _check_alive(self, r: Runner, watch: Watch) -> None:
        """Raise if the runner crashed, the simulator stops or the client went away."""
        if r.state == CRASHED:
            raise RunnerCrashed
        if self._stopping:
            raise ShuttingDown
        if watch.gone:
            raise ClientGone

    def _gate(self, r: Runner, token_index: int, watch: Watch) -> None:
        """Hold the request while the gate is closed for this token index."""
        if not self._gate_closed:  # unlocked fast check; re-checked below
            return
        with self._cv:
            if not (self._gate_closed and token_index >= self._gate_after):
                return
            self._gated += 1
            self._cv.notify_all()
            try:
                while self._gate_closed and token_index >= self._gate_after:
                    self._check_alive(r, watch)
                    self._cv.wait(POLL_S)
            finally:
                self._gated -= 1
                self._cv.notify_all()

    def _set_generating(self, r: Runner, delta: int) -> None:
        """A request starts (+1) or stops (-1) computing on ``r``: its GPUs look busy."""
        with self._cv:
            self._generating += delta
            r.generating += delta
            if (delta > 0 and r.generating == 1) or r.generating == 0:
                self._write_nvml()

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the simulator stops."""
        if seconds > 0 and self._stop_event.wait(seconds):
            raise ShuttingDown

    # ----- housekeeping (lock held) ----------------------------------------------------

    def _housekeep(self, now: float) -> float | None:
        """Free the VRAM of runners whose release lag is over and unload runners idle past
        their keep_alive; return the next monotonic time something is due, or None."""
        released = [r for r in self._releasing if r.release_at <= now]
        for r in released:
            self._releasing.remove(r)
            r.state = GONE
            r.counted = False
        if released:
            self._memory_changed()
        for r in list(self._loaded.values()):
            if (
                r.state == READY
                and r.refcount == 0
                and r.idle_deadline is not None
                and r.idle_deadline <= now
            ):
                self._unload(r, "expired")
        deadlines = [r.release_at for r in self._releasing]
        deadlines += [
            r.idle_deadline
            for r in self._loaded.values()
            if r.idle_deadline is not None and r.refcount == 0
        ]
        return min(deadlines) if deadlines else None
