"""The scheduler: one thread that owns the state of every runner and applies Plans.

``tick(now)`` is one pass: apply the events workers posted (loads, unloads, pulls and
jobs that ended), release retries whose backoff ended, read each backend's resources
(reused for ``MONITOR_INTERVAL``; at once after a load, unload or backend error), match
what Ollama lists against the runners held, ask the pure planner for a Plan and carry it
out through the ports: :class:`~modelmanager.residency.Residency` (loads, unloads, pulls)
and :class:`~modelmanager.job_runner.JobRunner` (jobs). It then publishes an immutable
:class:`SchedulerSnapshot` that HTTP reads (stats, health, models, metrics, dashboard)
use, so reads never talk to Ollama or change state.

The loop wakes early on every submit and every posted event. It logs each wait once per
runner, with its real reason, and each eviction with its reason and figures.

Runner identity: a job's stored runner key (:func:`~modelmanager.runners.runner_key`)
is what its client sent. Each pass re-keys it to the runner Ollama would really use
(:meth:`~modelmanager.model_registry.ModelRegistry.canonical`): names that are copies
of one another (the same digest in ``/api/tags``) are one runner, as Ollama keys runners
by the model's blob path (``server/sched.go``), and runner options equal to what Ollama
uses anyway are dropped (``needsReload``). Demands of the stored keys that meet in one
runner are merged; dispatch, arrivals, marks and failures cover all of them. Each job
still runs under, and reports, the name its user sent.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from config import Config

from .backend import Backend
from .errors import ApiError, DatabaseUnavailable, ModelNotFound, OutOfMemory
from .events import (
    Event,
    JobEnded,
    JobOutcome,
    KeepAliveSet,
    LoadEnded,
    NodeAdded,
    NodeDraining,
    PullEnded,
    UnloadEnded,
)
from .job_runner import JobRunner
from .logger import escape, get_logger
from .model_registry import ModelRegistry, normalize
from .models import MIB, ResourceSnapshot
from .names import InvalidModelName, display_name, model_key
from .pending import PendingIndex
from .plan import (
    BackendView,
    Demand,
    Dispatch,
    Drain,
    Fail,
    FailCode,
    Load,
    Plan,
    PlannerSettings,
    Pull,
    RunnerFacts,
    RunnerState,
    RunnerView,
    Unload,
    UnloadReason,
    Wait,
    WaitReason,
)
from .planner import plan
from .residency import Residency
from .runners import describe, model_of, options_of
from .store import Store
from .verdicts import after_load_failure, backoff_delay

log = get_logger("SCHEDULER")

IDLE_REFRESH = 2.0  # seconds between resource reads when nothing waits to be loaded
PROBE_BASE = 1.0  # seconds before a backend that is down is read again, doubling...
PROBE_MAX = 30.0  # ... up to this
WAIT_RELOG = 5.0  # seconds before a waiting runner's changed reason is logged again
DB_DOWN_RELOG = 30.0  # s: a database that does not answer is logged at most this often
ARRIVAL_WINDOW = 10.0  # seconds of arrivals an arrival rate is measured over
ARRIVAL_MIN_WINDOW = 2.0  # a runner ready for less than this has no arrival rate yet
ARRIVAL_QUIET = 2.0  # no new job for this long: the jobs that came were a batch, not a stream
RECENT_EVENTS = 100  # loads, unloads and evictions kept for the dashboard

_WAIT_TEXT = {
    WaitReason.MEMORY: "waits for VRAM",
    WaitReason.MODEL_CAP: "waits for a seat under Ollama's loaded-model cap",
    WaitReason.LOAD_SLOT: "waits for the load under way (Ollama loads one model at a time)",
    WaitReason.UNLOADING: "waits for an unload under way to give its memory back",
    WaitReason.RUNNER_SWITCH: "waits for the model's runner with other options to go",
    WaitReason.BUSY_SEATS: "waits: the loaded models' queues are cheaper to finish than to move",
    WaitReason.BACKOFF: "waits before trying its load again",
    WaitReason.SIZE_UNKNOWN: "waits for Ollama to tell its size",
    WaitReason.PULLING: "waits for its download",
    WaitReason.BACKEND_DOWN: "waits for Ollama to be reachable",
}
_UNLOAD_TEXT = {
    UnloadReason.IDLE: "unloading",
    UnloadReason.ROOM: "evicting (no waiting jobs)",
    UnloadReason.OUTRANKED: "evicting (outranked)",
    UnloadReason.RUNNER_OPTIONS: "evicting (other runner options wanted)",
    UnloadReason.PINNED: "evicting pinned model",
}


@dataclass
class _Held:
    """One runner held on a backend; changed by the scheduler thread only."""

    runner: str
    backend: str
    name: str  # the model's name as sent to Ollama for loads and unloads
    state: RunnerState
    size_bytes: int
    loaded_at: float
    last_used: float
    slots: int
    in_flight: int = 0
    jobs_done: int = 0
    keep_alive: float | None = None
    draining: bool = False  # logged as draining (for the log only; plans are stateless)
    adopted: bool = False  # found loaded in Ollama: its load options are not known

    @property
    def label(self) -> str:
        return describe(self.name, self.runner)

    def view(self, arrival_rate: float = 0.0, arrivals: int = 0) -> RunnerView:
        return RunnerView(
            self.runner,
            self.backend,
            self.state,
            self.in_flight,
            self.loaded_at,
            self.last_used,
            self.size_bytes,
            self.slots,
            self.jobs_done,
            self.keep_alive,
            arrival_rate,
            arrivals,
        )


@dataclass(frozen=True)
class RunnerStatus:
    label: str
    runner: str
    backend: str
    state: str
    in_flight: int
    size_bytes: int


@dataclass(frozen=True)
class BackendStatus:
    name: str
    url: str
    resources: ResourceSnapshot | None  # None before the first read
    draining: bool = False


@dataclass(frozen=True)
class SchedulerSnapshot:
    """What the scheduler published after its last pass; immutable, for HTTP reads."""

    taken_at: float
    backends: tuple[BackendStatus, ...] = ()
    runners: tuple[RunnerStatus, ...] = ()
    counters: Mapping[str, int] = field(default_factory=dict)
    waits: Mapping[str, str] = field(default_factory=dict)  # runner label -> reason
    recent: tuple[Mapping[str, Any], ...] = ()  # newest last
    labels: Mapping[str, str] = field(default_factory=dict)  # runner key -> label

    def backend_up(self) -> bool:
        return all(b.resources is not None and b.resources.backend_up for b in self.backends)


class Scheduler:
    def __init__(
        self,
        config: Config,
        *,
        store: Store,
        pending: PendingIndex,
        registry: ModelRegistry,
        backends: list[Backend],
        residency: Residency,
        jobs: JobRunner,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        downloads: Any = None,
    ) -> None:
        self.config = config
        # modelmanager.downloads.Downloads (or a fake): pulls for AUTO_PULL, and which
        # models are downloading (their jobs wait)
        self.downloads = downloads
        # with a shared queue (modelmanager.cluster): whether this instance may load a
        # runner now, or leaves it to another instance; None: always
        self.may_load: Callable[[str], bool] | None = None
        # ... and the runners whose waiting jobs another instance serves (not planned here)
        self.served_elsewhere: Callable[[], frozenset[str]] | None = None
        self.store = store
        self.pending = pending
        self.registry = registry
        self.backends = {b.name: b for b in backends}
        self.residency = residency
        self.jobs = jobs
        self.clock = clock
        self._rng = rng or random.Random()
        self.settings = PlannerSettings(
            safety_margin_bytes=config.safety_margin_bytes,
            max_concurrent_per_model=config.MAX_CONCURRENT_PER_MODEL,
            min_residency=config.MIN_RESIDENCY,
            keep_alive=config.MODEL_KEEP_ALIVE,
            auto_pull=config.AUTO_PULL,
            dispatch_ahead=config.DISPATCH_AHEAD,
            pinned=frozenset(pinned_runners(config.pinned_models)),
        )
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # ---- owned by the scheduler thread (and by tests that call tick directly)
        self._held: dict[tuple[str, str], _Held] = {}  # (runner, backend) -> runner held
        # runner -> the stored runner keys of the jobs that wait for it (last pass)
        self._members: dict[str, list[str]] = {}
        self._job_runner: dict[str, str] = {}  # job id -> the held runner it was sent to
        self._tags_forced = False  # Ollama's list was re-read at once this pass
        self._snapshots: dict[str, ResourceSnapshot] = {}
        self._stale = True
        self._gone_at: dict[str, float] = {}  # runner or model -> when it left
        self._load_failures: collections.Counter[str] = collections.Counter()
        self._blocked_until: dict[str, float] = {}  # runner -> no load before
        self._unload_failures: collections.Counter[str] = collections.Counter()
        self._unload_blocked_until: dict[str, float] = {}
        self._pulling: set[str] = set()  # model identities whose pull was asked for
        self._pins_missing: set[str] = set()  # pinned runners logged as not installed
        self._waits: dict[str, WaitReason] = {}  # runner -> why it waits now
        # runner -> the wait reason last logged for it, and when
        self._wait_logged: dict[str, tuple[WaitReason, float]] = {}
        self._backend_up: dict[str, bool] = {}
        self._probe_at: dict[str, float] = {}  # backend -> when to read it again (down)
        self._down_reads: dict[str, int] = {}  # backend -> reads in a row that found it down
        self._draining: set[str] = set()  # backends being removed
        self.counters: collections.Counter[str] = collections.Counter()
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_EVENTS)
        self._recent_published: tuple[Mapping[str, Any], ...] = ()
        self._recent_changed = False
        self._published = SchedulerSnapshot(taken_at=clock())
        self.hooks: list[Callable[[float], None]] = []  # run once a second (housekeeping)
        self.on_removed: list[Callable[[Backend], None]] = []  # a drained backend is gone
        self._hooks_at = 0.0

    # ----------------------------------------------------------------- outside calls

    def post(self, event: Event) -> None:
        """Hand a finished operation to the scheduler (any thread); wakes the loop."""
        self._events.put(event)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def snapshot(self) -> SchedulerSnapshot:
        """The state published after the last pass (any thread; never blocks)."""
        return self._published

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _loop(self) -> None:
        db_down_logged = -DB_DOWN_RELOG  # when a pass that met a lost database last said so
        while not self._stop.is_set():
            self._wake.clear()
            try:
                now = self.clock()
                self.tick(now)
                if now - self._hooks_at >= 1.0:
                    self._hooks_at = now
                    for hook in self.hooks:
                        hook(now)
            except DatabaseUnavailable as exc:  # PostgreSQL restarting: the next pass
                if time.monotonic() - db_down_logged >= DB_DOWN_RELOG:
                    db_down_logged = time.monotonic()
                    log.warning("scheduler passes stop at the database: %s", exc)
            except Exception:
                log.exception("scheduler pass failed; continuing")
            self._wake.wait(self._next_wait())

    def _next_wait(self) -> float:
        interval = self.config.SCHEDULER_LOOP_INTERVAL
        due = self.pending.next_delayed_at()
        return interval if due is None else max(0.0, min(interval, due - self.clock()))

    # ------------------------------------------------------------------------- pass

    def tick(self, now: float | None = None) -> Plan:
        """One pass (see the module docstring). Returns the Plan it carried out."""
        now = self.clock() if now is None else now
        self._apply_events(now)
        if self._draining:
            self._finish_draining()
        self.pending.release_delayed(now)
        demands = self._group(self.pending.demand(now))
        held_runners = {r for r, _ in self._held}
        if self.served_elsewhere is not None:  # left to the instance that holds them
            hidden = self.served_elsewhere() - held_runners
            demands = [d for d in demands if d.runner not in hidden]
        pins = self.settings.pinned - held_runners
        if not demands and not self._held and not pins:
            self._refresh(now, IDLE_REFRESH)
            self._publish(now)
            return Plan()
        must_plan_loads = any(d.runner not in held_runners for d in demands)
        self._refresh(now, self.config.MONITOR_INTERVAL if must_plan_loads else IDLE_REFRESH)
        facts = self._facts([d.runner for d in demands] + list(held_runners), now)
        facts.update(self._pin_facts(pins - set(facts)))
        views = [h.view(*self._arrivals(h, now)) for h in self._held.values()]
        result = plan(demands, views, self._backend_views(), facts, self.settings, now)
        self._carry_out(result, now)
        self._publish(now)
        return result

    def _canon(self, runner: str) -> str:
        """The runner Ollama would really use for a stored runner key (see the module
        doc); a runner already held wins among copies of its weights."""
        held = dict.fromkeys(model_of(h.runner) for h in self._held.values())
        return self.registry.canonical(runner, held)

    def _group(self, raw: list[Demand]) -> list[Demand]:
        """Demands per runner Ollama would really use: the stored keys that meet in one
        runner merged (their members, most urgent first, kept for dispatch)."""
        unknown = [d.runner for d in raw if self.registry.installed(d.runner) is not True]
        self._tags_forced = False
        # a name not listed may be a copy made since the list was read: ask again at once
        if (
            unknown
            and self.registry.refresh_tags()
            and any(self.registry.installed(r) is False for r in unknown)
        ):
            self._tags_forced = self.registry.refresh_tags(force=True)
        groups: dict[str, list[Demand]] = {}
        for d in raw:
            groups.setdefault(self._canon(d.runner), []).append(d)
        if self.settings.pinned != (pins := frozenset(map(self._canon, self.settings.pinned))):
            self.settings = dataclasses.replace(self.settings, pinned=pins)
        self._members = {
            runner: [d.runner for d in sorted(ds, key=lambda d: (d.rank, d.oldest_submitted_at))]
            for runner, ds in groups.items()
        }
        return [
            ds[0] if len(ds) == 1 and ds[0].runner == r else _merged(r, ds)
            for r, ds in groups.items()
        ]

    def _members_of(self, runner: str) -> list[str]:
        """The stored runner keys whose jobs wait for ``runner`` (itself at least)."""
        members = self._members.get(runner, [])
        return members if runner in members else [*members, runner]

    def _refresh(self, now: float, max_age: float) -> None:
        for name, backend in list(self.backends.items()):
            snap = self._snapshots.get(name)
            if snap is not None and not snap.backend_up:
                if now < self._probe_at.get(name, 0.0):
                    continue  # down: probed again only after its backoff
            elif not (self._stale or snap is None or now - snap.taken_at >= max_age):
                continue
            snap = self._snapshots[name] = backend.snapshot()
            self._note_backend(backend, snap, now)
            self._reconcile(name, snap)
        self._stale = False

    def _note_backend(self, backend: Backend, snap: ResourceSnapshot, now: float) -> None:
        name = backend.name
        if not snap.backend_up:
            self._down_reads[name] = self._down_reads.get(name, 0) + 1
            delay = min(PROBE_MAX, PROBE_BASE * 2 ** (self._down_reads[name] - 1))
            self._probe_at[name] = now + delay
        else:
            self._down_reads.pop(name, None)
        if snap.backend_up == self._backend_up.get(name):
            return
        self._backend_up[name] = snap.backend_up
        if snap.backend_up:
            log.info("Ollama reachable at %s (node %s)", backend.url, name)
            return
        log.warning(
            "Ollama unreachable at %s (node %s: %s); probing it again with backoff",
            backend.url,
            name,
            escape(snap.backend_error or ""),
        )
        lost = [key for key, h in self._held.items() if h.backend == name]
        for key in lost:
            del self._held[key]
        if lost:
            log.warning(
                "node %s is down: %d runner(s) forgotten; their jobs run elsewhere", name, len(lost)
            )
        self.jobs.release(node=name)  # requests in flight there go back to the queue

    def _reconcile(self, backend: str, snap: ResourceSnapshot) -> None:
        """Match ``/api/ps`` against the runners held: forget one Ollama dropped behind our
        back, manage one it holds that we do not (by identity or digest). An Ollama without
        ``/api/ps`` tells neither: what the manager loaded is taken as loaded."""
        if not snap.backend_up or not snap.ps_available:
            return
        matched: set[int] = set()
        for key, h in list(self._held.items()):
            if h.backend != backend:
                continue
            hits = [i for i, m in enumerate(snap.loaded) if self.registry.holds(h.runner, m)]
            matched.update(hits)
            ours = h.state is RunnerState.READY and not h.adopted and not options_of(h.runner)
            if hits and ours:
                context = snap.loaded[hits[0]].context_length
                if context:  # what a request without num_ctx gets: it is no runner option
                    self.registry.learn_default_context(h.runner, context)
            if h.state is RunnerState.READY and not hits and snap.taken_at > h.loaded_at:
                del self._held[key]
                self._gone_at[h.runner] = snap.taken_at
                log.info(
                    "%s is no longer loaded in Ollama (dropped outside the manager)",
                    self._where(h),
                )
        for i, m in enumerate(snap.loaded):
            runner = self._canon(normalize(m.name))
            gone_at = max(self._gone_at.get(runner, 0.0), self._gone_at.get(model_of(runner), 0.0))
            if i in matched or snap.taken_at <= gone_at or (runner, backend) in self._held:
                continue
            size = max(m.vram_bytes, self.registry.estimate(runner) or 0)
            now = snap.taken_at
            self._held[(runner, backend)] = _Held(
                runner,
                backend,
                m.name,
                RunnerState.READY,
                size,
                now,
                now,
                self._slots(runner),
                adopted=True,
            )
            log.info("%s found loaded in Ollama (%d MB); managing it", m.name, size // MIB)

    def _backend_views(self) -> list[BackendView]:
        views = []
        for name, backend in self.backends.items():
            snap = self._snapshots.get(name)
            if snap is None:
                continue
            ours = [h for h in self._held.values() if h.backend == name]
            foreign = sum(
                1 for m in snap.loaded if not any(self.registry.holds(h.runner, m) for h in ours)
            )
            devices = tuple((d.total_bytes, d.free_bytes) for d in snap.devices if d.error is None)
            free = snap.free_bytes
            if not snap.ps_available and snap.source == "budget":
                # no /api/ps to subtract: the budget minus what the manager holds there
                # (loads in progress are subtracted by the planner)
                held = sum(h.size_bytes for h in ours if h.state is not RunnerState.LOADING)
                free = max(0, snap.total_bytes - held)
            views.append(
                BackendView(
                    name,
                    snap.backend_up,
                    snap.total_bytes,
                    free,
                    backend.max_loaded,
                    foreign=foreign,
                    devices=devices,
                    draining=name in self._draining,
                )
            )
        return views

    def _slots(self, runner: str) -> int:
        """Ollama's parallel requests for a model: OLLAMA_NUM_PARALLEL, 1 for embedders."""
        return 1 if self.registry.info(runner).is_embedding else self.config.OLLAMA_NUM_PARALLEL

    def _facts(self, runners: list[str], now: float) -> dict[str, RunnerFacts]:
        """What the planner needs to know of each runner that waits or is held."""
        out: dict[str, RunnerFacts] = {}
        unknown_installed = [r for r in runners if self.registry.installed(r) is not True]
        if unknown_installed:
            self.registry.refresh_tags()
        for runner in dict.fromkeys(runners):
            installed = self.registry.installed(runner)
            pulling = self._downloading(model_of(runner))
            # a model Ollama lacks is asked for again at once, unless it is downloading
            # (the download re-reads the list when it ends)
            if (
                installed is False
                and not pulling
                and not self._tags_forced
                and self.registry.refresh_tags(force=True)
            ):
                installed = self.registry.installed(runner)
            out[runner] = self._runner_facts(runner, installed, pulling)
        return out

    def _runner_facts(self, runner: str, installed: bool | None, pulling: bool) -> RunnerFacts:
        info = self.registry.info(runner)
        return RunnerFacts(
            estimate_bytes=info.estimate_bytes,
            evidence_bytes=info.evidence_bytes,
            measured=info.learned_vram_bytes is not None,
            load_seconds=info.learned_load_seconds or self.load_prior(info.estimate_bytes),
            job_seconds=self.registry.job_seconds(runner),
            slots=self._slots(runner),
            installed=installed,
            pulling=pulling,
            blocked_until=self._blocked_until.get(runner, 0.0),
            backends=self.registry.installed_on(runner) or None,
        )

    def _downloading(self, model: str) -> bool:
        if self.downloads is not None and self.downloads.active(model):
            return True
        return model in self._pulling

    def _pin_facts(self, runners: frozenset[str]) -> dict[str, RunnerFacts]:
        """Facts of pinned runners nobody holds or waits for: as :meth:`_facts`, but
        Ollama's list is re-read only when stale (a pinned model Ollama lacks must not make
        every pass ask again), and a missing one is logged once."""
        out: dict[str, RunnerFacts] = {}
        if runners and any(self.registry.installed(r) is not True for r in runners):
            self.registry.refresh_tags()
        for runner in sorted(runners):
            info = self.registry.info(runner)
            if info.installed is False and runner not in self._pins_missing:
                self._pins_missing.add(runner)
                log.warning(
                    "pinned model %s is on no node's disk; download it (PRELOAD_MODELS or "
                    "POST /api/v1/models/download) to have it loaded",
                    self._label(runner),
                )
            elif info.installed:
                self._pins_missing.discard(runner)
            out[runner] = self._runner_facts(
                runner, info.installed, self._downloading(model_of(runner))
            )
        return out

    def _arrivals(self, h: _Held, now: float) -> tuple[float, int]:
        """New jobs for a ready runner since it loaded, over the last ARRIVAL_WINDOW
        seconds: (per second, how many). Jobs already waiting when it loaded are its
        backlog, not a stream. The rate is 0 until it has been ready ARRIVAL_MIN_WINDOW
        seconds, and once no job has come for ARRIVAL_QUIET seconds: a batch submitted
        at once is a backlog to finish, not a stream that keeps the runner busy."""
        if h.state is not RunnerState.READY:
            return 0.0, 0
        since = max(now - ARRIVAL_WINDOW, h.loaded_at)
        count = sum(self.pending.arrivals_since(r, since) for r in self._members_of(h.runner))
        if now - since < ARRIVAL_MIN_WINDOW:
            return 0.0, count
        if count and not self.pending.arrivals_since(h.runner, now - ARRIVAL_QUIET):
            return 0.0, count
        return count / (now - since), count

    @staticmethod
    def load_prior(estimate: int | None) -> float:
        """Load seconds before a model has loaded once: start-up plus 2 GB/s of weights."""
        return 0.3 + (estimate or 0) / 2e9

    # ----------------------------------------------------------------- carrying out

    def _carry_out(self, result: Plan, now: float) -> None:
        waiting: dict[str, Wait] = {}
        for action in result.actions:
            if isinstance(action, Fail):
                self._fail(action)
            elif isinstance(action, Pull):
                self._pull(action)
            elif isinstance(action, Unload):
                self._unload(action, now)
            elif isinstance(action, Drain):
                self._drain(action)
            elif isinstance(action, Load):
                self._load(action, now)
            elif isinstance(action, Dispatch):
                self._dispatch(action, now)
            elif isinstance(action, Wait):
                waiting[action.runner] = action
        self._log_waits(waiting, now)
        drained = {a.runner for a in result.actions if isinstance(a, Drain)}
        for h in self._held.values():
            if h.runner not in drained:
                h.draining = False

    def _label(self, runner: str) -> str:
        for h in self._held.values():
            if h.runner == runner:
                return h.label
        return describe(self._send_name(runner), runner)

    def _send_name(self, runner: str) -> str:
        """The name to send Ollama for a runner's model: as Ollama stores it when
        ``/api/tags`` listed it, else as a client spelled it (any spelling resolves)."""
        name = self.registry.stored_name(runner) or next(
            filter(None, map(self.pending.name_of, self._members_of(runner))), None
        )
        if name:
            return name
        try:
            return display_name(model_of(runner))
        except ValueError:
            return model_of(runner)

    def _fail(self, action: Fail) -> None:
        name = self._send_name(action.runner)
        if action.code is FailCode.MODEL_NOT_FOUND:
            message = (
                f"model '{name}' is not installed in Ollama; pull it first (ollama pull {name})"
            )
        else:
            message = f"model {self._label(action.runner)} {action.message}"
        self.fail_runner(action.runner, message, action.code.value)

    def fail_runner(self, runner: str, message: str, code: str) -> int:
        """Fail every waiting job of ``runner`` at once (too big, not installed, ...)."""
        ids = [i for r in self._members_of(runner) for i in self.pending.drop_model(r)]
        now = self.clock()
        failed = sum(self.store.fail(job_id, None, message, code, now) for job_id in ids)
        if failed:
            self.counters["failed"] += failed
            log.warning("%d job(s) for %s failed: %s", failed, self._label(runner), escape(message))
        return failed

    def _pull(self, action: Pull) -> None:
        """AUTO_PULL: download the model through the download manager (one download per
        model; at MAX_DOWNLOADS it is asked again on a later pass)."""
        model = model_of(action.runner)
        if self.downloads is None or self._downloading(model):
            return
        name = self._send_name(action.runner)
        try:
            self.downloads.start(name, action.backend, reason="AUTO_PULL")
        except (ApiError, KeyError):
            return  # downloading already, or no free slot there yet: a later pass asks again
        self._pulling.add(model)

    def _unload(self, action: Unload, now: float) -> None:
        h = self._held.get((action.runner, action.backend))
        if h is None or h.state is not RunnerState.READY or h.in_flight:
            return
        if self._unload_blocked_until.get(action.runner, 0.0) > now:
            return  # the last unload failed: wait out its backoff
        h.state = RunnerState.UNLOADING
        self.counters["unloads"] += 1
        if action.reason is not UnloadReason.IDLE:
            self.counters["evictions"] += 1
            self.counters[f"evictions_{action.reason.value}"] += 1
        why = self._why(action.reason, action.for_runner, action.detail)
        log.info("%s %s: %s", _UNLOAD_TEXT[action.reason], self._where(h), why)
        self._remember("unload", h.label, action.reason.value, why, now)
        self.residency.unload(self.backends[h.backend], h.runner, self._where(h), h.name)

    def _where(self, h: _Held) -> str:
        """How the log names a held runner: its label, with its node when there are
        several."""
        return f"{h.label} on node {h.backend}" if len(self.backends) > 1 else h.label

    def _drain(self, action: Drain) -> None:
        h = self._held.get((action.runner, action.backend))
        if h is None or h.draining:
            return
        h.draining = True
        why = self._why(action.reason, action.for_runner, action.detail)
        log.info("draining %s (%d job(s) in flight): %s", self._where(h), h.in_flight, why)

    def _why(self, reason: UnloadReason, for_runner: str | None, detail: str) -> str:
        parts = {
            UnloadReason.IDLE: detail,
            UnloadReason.ROOM: f"room for {self._label(for_runner or '')}",
            UnloadReason.OUTRANKED: f"outranked by {self._label(for_runner or '')}",
            UnloadReason.RUNNER_OPTIONS: f"{self._label(for_runner or '')} is wanted",
            UnloadReason.PINNED: f"outranked by a higher-priority need of "
            f"{self._label(for_runner or '')}",
        }[reason]
        if detail and reason is not UnloadReason.IDLE:
            parts += f" ({detail})"
        return parts

    def _load(self, action: Load, now: float) -> None:
        key = (action.runner, action.backend)
        if key in self._held:
            return
        if self.may_load is not None and not self.may_load(action.runner):
            return  # another instance sharing the queue serves this model
        info = self.registry.info(action.runner)
        size = info.estimate_bytes or 0
        name = self._send_name(action.runner)
        h = _Held(
            action.runner,
            action.backend,
            name,
            RunnerState.LOADING,
            size,
            now,
            now,
            self._slots(action.runner),
        )
        self._held[key] = h
        self._waits.pop(action.runner, None)
        for member in self._members_of(action.runner):
            self.store.mark_queued(member)
        self._remember("load", h.label, "start", f"estimate {size // MIB} MB", now)
        pinned = action.runner in self.settings.pinned
        if pinned:
            log.info("loading pinned model %s (PINNED_MODELS) on node %s", h.label, h.backend)
        self.residency.load(
            self.backends[action.backend],
            action.runner,
            self._where(h),
            name,
            options_of(action.runner),
            "embed" if info.is_embedding else "generate",
            size,
            # a pinned model stays until the manager unloads it, whatever Ollama's timer
            keep_alive=-1 if pinned else None,
        )

    def _dispatch(self, action: Dispatch, now: float) -> None:
        h = self._held.get((action.runner, action.backend))
        if h is None or h.state is not RunnerState.READY:
            return
        ids: list[str] = []
        for member in self._members_of(action.runner):
            ids += self.pending.pop(member, action.count - len(ids), now)
            if len(ids) >= action.count:
                break
        if not ids:
            return
        self.jobs.expect(len(ids))
        try:
            jobs = self.store.claim(ids, now, action.backend)  # skips jobs cancelled meanwhile
        except BaseException:  # (the shared queue's next full look indexes them again)
            self.jobs.expect(-len(ids))
            raise
        self.jobs.expect(len(jobs) - len(ids))
        h.in_flight += len(jobs)
        backend = self.backends[action.backend]
        for job in jobs:
            self._job_runner[job.id] = h.runner
            self.jobs.start(job, backend, self._where(h))

    def _log_waits(self, waiting: dict[str, Wait], now: float) -> None:
        """One line when a runner starts waiting, with its reason; while it keeps waiting,
        a changed reason is logged at most every WAIT_RELOG seconds (a burst moves
        reasons around quickly: memory, the cap, the one load at a time)."""
        for runner, wait in waiting.items():
            self._waits[runner] = wait.reason
            logged = self._wait_logged.get(runner)
            if logged is not None and (logged[0] is wait.reason or now - logged[1] < WAIT_RELOG):
                continue
            self._wait_logged[runner] = (wait.reason, now)
            detail = f" ({wait.detail})" if wait.detail else ""
            log.info("%s %s%s", self._label(runner), _WAIT_TEXT[wait.reason], detail)
        for runner in list(self._waits):
            if runner not in waiting:
                del self._waits[runner]
                self._wait_logged.pop(runner, None)

    def _remember(self, kind: str, label: str, what: str, detail: str, now: float) -> None:
        self._recent.append(
            {"at": now, "kind": kind, "model": label, "what": what, "detail": detail}
        )
        self._recent_changed = True

    # ----------------------------------------------------------------------- events

    def _apply_events(self, now: float) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, JobEnded):
                self._job_ended(event, now)
            elif isinstance(event, LoadEnded):
                self._load_ended(event, now)
            elif isinstance(event, UnloadEnded):
                self._unload_ended(event, now)
            elif isinstance(event, PullEnded):
                self._pull_ended(event)
            elif isinstance(event, NodeAdded):
                self._node_added(event.backend)
            elif isinstance(event, NodeDraining):
                if event.name in self.backends:
                    self._draining.add(event.name)
                    log.info("draining node %s: no new jobs; it goes once its jobs end", event.name)
            elif isinstance(event, KeepAliveSet):
                held = dict.fromkeys(model_of(h.runner) for h in self._held.values())
                model = self.registry.identity(event.model, held)
                for h in self._held.values():
                    if model_of(h.runner) == model:
                        h.keep_alive = event.seconds

    def _node_added(self, backend: Backend) -> None:
        self.backends[backend.name] = backend
        self.registry.add_source(backend.name, backend.client.tags)
        self._draining.discard(backend.name)
        self._stale = True
        log.info("node %s added: Ollama at %s", backend.name, backend.url)

    def _finish_draining(self) -> None:
        """Remove each draining backend once nothing of ours runs or is held on it."""
        for name in list(self._draining):
            if any(h.backend == name for h in self._held.values()):
                continue
            if self.jobs.in_flight_on(name):
                continue
            self._draining.discard(name)
            backend = self.backends.pop(name, None)
            self._snapshots.pop(name, None)
            self._backend_up.pop(name, None)
            self.registry.remove_source(name)
            log.info("node %s drained and removed", name)
            if backend is not None:
                for hook in self.on_removed:
                    hook(backend)

    def _job_ended(self, e: JobEnded, now: float) -> None:
        job = e.job
        runner = self._job_runner.pop(job.id, None) or self._canon(job.runner)
        h = self._held.get((runner, e.backend))
        if h is not None:
            h.in_flight = max(0, h.in_flight - 1)
            h.last_used = now
            if e.outcome is JobOutcome.COMPLETE:
                h.jobs_done += 1
                h.keep_alive = job.payload.get("keep_alive")
        if e.outcome is JobOutcome.COMPLETE:
            self.counters["completed"] += 1
        elif e.outcome is JobOutcome.FAILED:
            self.counters["failed"] += 1
        elif e.outcome is JobOutcome.RETRY:
            self.counters["retries"] += 1
        if e.outcome in (JobOutcome.RETRY, JobOutcome.RELEASED):
            self.pending.add(
                job.id, job.runner, job.priority, job.seq, job.submitted_at, e.not_before, now
            )
        if e.out_of_memory:
            self.counters["ooms"] += 1
            self.registry.raise_estimate(runner)
        if e.out_of_memory or e.runner_crashed or e.backend_lost:
            self._stale = True  # the runner (or the server) may be gone: re-read /api/ps

    def _load_ended(self, e: LoadEnded, now: float) -> None:
        key = (e.runner, e.backend)
        h = self._held.get(key)
        if e.error is None and not e.dropped:
            self._load_failures.pop(e.runner, None)
            self._blocked_until.pop(e.runner, None)
            self.counters["loads"] += 1
            if h is not None:
                h.state = RunnerState.READY
                h.size_bytes = e.size_bytes or h.size_bytes
                h.loaded_at = h.last_used = now
                self._remember("load", h.label, "loaded", f"{e.seconds:.2f}s", now)
            self._stale = True
            return
        if e.error is None:  # loaded, then dropped at once by Ollama
            self.counters["loads"] += 1
            failures = 0
        else:
            self._load_failures[e.runner] += 1
            failures = self._load_failures[e.runner]
        delay = 0.0
        if failures:
            delay = backoff_delay(
                failures,
                self.config.RETRY_BASE_SECONDS,
                self.config.RETRY_MAX_SECONDS,
                self._rng.random(),
            )
        decision = after_load_failure(
            failures=failures,
            max_attempts=self.config.MAX_ATTEMPTS,
            not_found=isinstance(e.error, ModelNotFound),
            out_of_memory=isinstance(e.error, OutOfMemory),
            dropped=e.dropped,
            delay=delay,
        )
        label = h.label if h is not None else self._label(e.runner)
        if e.error is not None:
            self._held.pop(key, None)
            self._gone_at[e.runner] = now
            self._blocked_until[e.runner] = now + decision.backoff
            for member in self._members_of(e.runner):
                self.store.unmark_queued(member)
            if isinstance(e.error, OutOfMemory):
                self.counters["ooms"] += 1
            self._remember("load", label, "failed", e.error.message, now)
        if decision.raise_estimate:
            size = h.size_bytes if h is not None else (self.registry.estimate(e.runner) or 0)
            why = "Ollama dropped it right after loading it" if e.dropped else "out-of-memory"
            self.registry.raise_estimate(e.runner, at_least=int(size * 1.25), why=why)
        if decision.fail_jobs and e.error is not None:
            self.fail_runner(e.runner, f"loading {label} failed: {e.error.message}", e.error.code)
        self._stale = True

    def _unload_ended(self, e: UnloadEnded, now: float) -> None:
        key = (e.runner, e.backend)
        h = self._held.get(key)
        if e.gone:
            self._held.pop(key, None)
            self._gone_at[e.runner] = now
            self._unload_failures.pop(e.runner, None)
            if h is not None:
                self._remember("unload", h.label, "unloaded", "", now)
        else:
            if h is not None:  # still loaded: manage it again, retry later
                h.state = RunnerState.READY
                h.last_used = now
            self._unload_failures[e.runner] += 1
            delay = backoff_delay(
                self._unload_failures[e.runner],
                self.config.RETRY_BASE_SECONDS,
                self.config.RETRY_MAX_SECONDS,
                self._rng.random(),
            )
            self._unload_blocked_until[e.runner] = now + max(delay, 0.1)
        self._stale = True

    def _pull_ended(self, e: PullEnded) -> None:
        """A download ended. If it failed and no node has the model, the jobs waiting for
        it (every runner of it) fail with the node's message."""
        model = model_of(e.runner)
        self._pulling.discard(model)
        if e.error is None or self._downloading(model) or self.registry.installed(model):
            return
        name = self._send_name(e.runner)
        for runner in [r for r in self.pending.depth_by_model() if model_of(r) == model]:
            self.fail_runner(
                runner, f"model '{name}' could not be pulled: {e.error.message}", e.error.code
            )

    # ---------------------------------------------------------------------- publish

    def _publish(self, now: float) -> None:
        if self._recent_changed:
            self._recent_published = tuple(dict(e) for e in self._recent)
            self._recent_changed = False
        self._published = SchedulerSnapshot(
            taken_at=now,
            backends=tuple(
                BackendStatus(name, b.url, self._snapshots.get(name), name in self._draining)
                for name, b in self.backends.items()
            ),
            runners=tuple(
                RunnerStatus(h.label, h.runner, h.backend, h.state.value, h.in_flight, h.size_bytes)
                for h in self._held.values()
            ),
            counters=dict(self.counters),
            waits={self._label(r): w.value for r, w in self._waits.items()},
            recent=self._recent_published,
            labels={h.runner: h.label for h in self._held.values()},
        )

    def label(self, runner: str) -> str:
        """How reads name a runner (any thread): the model as Ollama stores it, else as a
        client spelled it, with the runner's options."""
        known = self._published.labels.get(runner)
        if known is not None:
            return known
        return describe(self._send_name(runner), runner)


def pinned_runners(names: list[str]) -> list[str]:
    """The runner keys (default runners) of PINNED_MODELS' names; invalid names skipped
    (the settings refuse them at start)."""
    out = []
    for name in names:
        try:
            out.append(model_key(name))
        except InvalidModelName:
            continue
    return out


def _merged(runner: str, demands: list[Demand]) -> Demand:
    """One demand for ``runner`` from the demands of the stored keys that meet in it."""

    def best(values: list[int | None]) -> int | None:
        known = [v for v in values if v is not None]
        return min(known) if known else None

    counts = tuple(sum(d.counts[i] for d in demands) for i in range(3))
    ranks = tuple(best([d.ranks[i] for d in demands]) for i in range(3))
    return Demand(
        runner,
        sum(d.waiting for d in demands),
        min(d.rank for d in demands),
        min((d.oldest_submitted_at for d in demands), default=math.inf),
        (counts[0], counts[1], counts[2]),
        (ranks[0], ranks[1], ranks[2]),
    )
