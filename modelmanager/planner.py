"""The planner: a PURE function from what waits and what is held to a :class:`Plan`.

No I/O, no clock, no threads, no logging: every scheduling rule is a plain unit test.
Policy "demand_based", in the order of a pass:

1. **Idle expiry.** A ready runner with no waiting job and none in flight, unused for its
   keep-alive (the last job's ``keep_alive``, else ``MODEL_KEEP_ALIVE``; negative: never),
   is unloaded.
2. **Rank the waiting groups** (runners with waiting jobs that no backend holds): best
   effective priority (aging included), then the most overdue: oldest submit time minus
   the group's estimated queued work, so in a burst the longest group starts first.
3. **Place each group**, best first. A group Ollama lacks fails (or is pulled with
   ``AUTO_PULL``); one whose measured size exceeds the GPU fails; one whose model is held
   with other runner options waits for that runner to go. Otherwise it loads where its
   estimate fits in ``free - safety margin - loads in progress`` under Ollama's
   loaded-model cap and one load at a time. If it does not fit, room is made from, in
   order: idle runners without waiting jobs (fewest new jobs lately, then least recently
   used, first), busy ones
   without waiting jobs (drained: they finish their jobs, then go), and runners that still
   have waiting jobs, **only where the switch pays** (below). A runner without waiting
   jobs that still gets new ones (a stream) is spared until the group has waited as long
   as reloading it would take: evicting it would most likely mean reloading it soon.
4. **Dispatch**: every ready runner that is not being drained gets up to
   ``min(MAX_CONCURRENT_PER_MODEL, its slots + DISPATCH_AHEAD) - in flight`` more jobs:
   as many as Ollama runs at once, plus a few waiting in its runner so that a slot never
   idles between two jobs (a newer, more urgent job for the same model waits for at
   most those few).

**A switch must pay for itself.** Evicting runner L, which still has waiting jobs, for
group G is allowed only if G's best job strictly outranks L's, L has finished a job since
it loaded (or been resident ``min_residency``), L would need longer to finish its queue
than the round trip of a switch takes (``T_L`` > ``away``: unload L, load G, run G's
urgent jobs, reload L), and the weighted waiting the switch saves
exceeds the weighted waiting it causes::

    away = unload + G's load + G's urgent work + unload + L's load
    gain = W(G's jobs that outrank L) x T_L
    cost = W(L's waiting jobs) x away + W(every other waiting job) x (unload + L's load)

``T_L`` is how long L needs to finish its queue on its own: (waiting + in flight) x job
seconds / slots, stretched by ``1 / (1 - rho)`` when new jobs keep arriving for it at a
share ``rho`` of its capacity (infinite when it is fed as fast as it serves, as a
low-priority stream would be); ``W`` sums job weights, ``weight_base ** (2 - effective rank)`` (high
100, normal 10, low 1 by default; aging raises a job's weight with its rank). Keeping L
makes G's urgent jobs wait ``T_L``; evicting it makes L's jobs wait while G loads and
works and L loads again, and the extra load takes the one loader Ollama has and a seat,
delaying the rest of the work that waits. So a burst in which every model has some high
jobs runs each model's queue in one residency (the lower-priority jobs ride along),
while a high-priority job still overtakes a long low-priority backlog.

Memory is in bytes throughout; a runner's memory counts until its unload is finished
(Ollama no longer lists it), and so does its seat under Ollama's cap.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .plan import (
    BackendView,
    Demand,
    Dispatch,
    Drain,
    Fail,
    FailCode,
    JobDecision,
    JobVerdict,
    Load,
    LoadDecision,
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
from .runners import model_of

MIB = 1024 * 1024
ROLLOUT_GROUPS = 12  # at most this many equally urgent groups are compared for the next load


def _mb(n: int) -> str:
    return f"{n // MIB} MB"


def weight(rank: int, base: float) -> float:
    """A job's weight at effective ``rank`` (0 high, 1 normal, 2 low; aging lowers it)."""
    return float(base ** (2 - rank))


def demand_weight(d: Demand, base: float, below: int | None = None) -> float:
    """The summed weight of a group's waiting jobs; with ``below``, only of those whose
    effective rank is better (lower) than ``below``. A priority's jobs are weighed at the
    rank of its oldest job."""
    total = 0.0
    for count, rank in zip(d.counts, d.ranks, strict=True):
        if count and rank is not None and (below is None or rank < below):
            total += count * weight(rank, base)
    if total == 0.0 and d.waiting and below is None:
        total = d.waiting * weight(d.rank, base)  # counts not given: all at the best rank
    return total


@dataclass
class _Room:
    """One backend's memory and seats as this pass plans them."""

    view: BackendView
    free: int  # free now, after margin and loads in progress
    incoming: int  # memory that unloads under way give back
    seats: int  # runners held (any state) + foreign models
    load_slots: int


class _Pass:
    """The state of one planning pass (mutated as decisions are made)."""

    def __init__(
        self,
        demands: Iterable[Demand],
        runners: Iterable[RunnerView],
        backends: Iterable[BackendView],
        facts: Mapping[str, RunnerFacts],
        settings: PlannerSettings,
        now: float,
    ) -> None:
        self.demands = {d.runner: d for d in demands}
        self.runners = list(runners)
        self.backends = [b for b in backends if b.up]
        self.facts = facts
        self.settings = settings
        self.now = now
        self.plan = Plan()
        self.leaving: set[tuple[str, str]] = set()  # (runner, backend) unloading or drained
        margin = settings.safety_margin_bytes
        self.rooms: dict[str, _Room] = {}
        for b in self.backends:
            mine = [v for v in self.runners if v.backend == b.name]
            loading = [v for v in mine if v.state is RunnerState.LOADING]
            unloading = [v for v in mine if v.state is RunnerState.UNLOADING]
            self.rooms[b.name] = _Room(
                view=b,
                free=b.free_bytes - margin - sum(v.size_bytes for v in loading),
                incoming=sum(v.size_bytes for v in unloading),
                seats=len(mine) + b.foreign,
                load_slots=b.max_parallel_loads - len(loading),
            )
            self.leaving.update((v.runner, b.name) for v in unloading)
        self.held = {v.runner for v in self.runners}

    # ------------------------------------------------------------------------ helpers

    def work(self, d: Demand) -> float:
        f = self.facts.get(d.runner)
        if f is None:
            return 0.0
        return d.waiting * f.job_seconds / max(1, f.slots)

    def waiting_weight(self) -> float:
        """The weight of every waiting job, held runners' included."""
        base = self.settings.weight_base
        return sum(demand_weight(d, base) for d in self.demands.values())

    def fresh(self, v: RunnerView) -> bool:
        """Loaded so recently, with no job done yet, that it may not be evicted."""
        return v.jobs_done == 0 and self.now - v.loaded_at < self.settings.min_residency

    @staticmethod
    def time_to_idle(v: RunnerView, own: Demand, f: RunnerFacts) -> float:
        """Seconds ``v`` needs to finish its queue on its own. New jobs arriving for it at
        a share ``rho`` of what it can serve stretch that by ``1 / (1 - rho)``; fed at
        or past its capacity, it never goes idle."""
        work = (own.waiting + v.in_flight) * f.job_seconds / max(1, v.slots)
        rho = v.arrival_rate * f.job_seconds / max(1, v.slots)
        return work / (1.0 - rho) if rho < 1.0 else math.inf

    def warm(self, v: RunnerView, group: Demand) -> bool:
        """Whether ``v``, which has no waiting job, still gets new jobs and ``group`` has
        not yet waited as long as reloading ``v`` would take. Evicting such a runner
        would most likely mean loading it again soon: the group waits that long first
        (and gathers more jobs to run per load), as a ski-rental rule would."""
        if v.arrivals <= 0:
            return False
        f = self.facts.get(v.runner) or RunnerFacts(estimate_bytes=v.size_bytes)
        reload = self.settings.unload_seconds + f.load_seconds
        return self.now - group.oldest_submitted_at < reload

    def switch(self, group: Demand, v: RunnerView, others: float) -> tuple[bool, str]:
        """Whether evicting ``v`` (which has waiting jobs) for ``group`` pays (see the
        module docstring); with the figures for the log."""
        own = self.demands[v.runner]
        if not group.rank < own.rank or self.fresh(v):
            return False, ""
        fv = self.facts.get(v.runner) or RunnerFacts(estimate_bytes=v.size_bytes)
        fg = self.facts.get(group.runner) or RunnerFacts(estimate_bytes=None)
        base, unload = self.settings.weight_base, self.settings.unload_seconds
        t_idle = self.time_to_idle(v, own, fv)
        urgent = sum(
            n
            for n, r in zip(group.counts, group.ranks, strict=True)
            if r is not None and r < own.rank
        )
        t_urgent = max(1, urgent) * fg.job_seconds / max(1, fg.slots)
        reload = unload + fv.load_seconds
        away = unload + fg.load_seconds + t_urgent + reload
        if t_idle <= away:  # it is done before the round trip of a switch would be
            return False, ""
        gain = demand_weight(group, base, below=own.rank) * t_idle
        own_weight = demand_weight(own, base)
        cost = own_weight * away + max(0.0, others - own_weight) * reload
        if math.isinf(t_idle):
            detail = "its queue is fed as fast as it serves it"
        else:
            detail = f"switch gain {gain:.0f} > cost {cost:.0f} (weighted job-seconds)"
        return gain > cost, detail

    def leave(self, v: RunnerView, reason: UnloadReason, group: str | None, detail: str) -> None:
        """Unload ``v`` if idle, else drain it."""
        room = self.rooms[v.backend]
        if v.in_flight == 0:
            self.plan.actions.append(Unload(v.runner, v.backend, reason, group, detail))
        else:
            self.plan.actions.append(Drain(v.runner, v.backend, reason, group, detail))
        self.leaving.add((v.runner, v.backend))
        room.incoming += v.size_bytes

    # ------------------------------------------------------------------------ steps

    def expire_idle(self) -> None:
        for v in self.runners:
            if v.state is not RunnerState.READY or v.in_flight or v.runner in self.demands:
                continue
            keep = self.settings.keep_alive if v.keep_alive is None else v.keep_alive
            if keep >= 0 and self.now - v.last_used >= keep:
                idle = f"idle for {self.now - v.last_used:.0f}s"
                self.leave(v, UnloadReason.IDLE, None, idle)

    def place_groups(self) -> None:
        waiting = [d for d in self.demands.values() if d.runner not in self.held]
        waiting.sort(key=lambda d: (d.rank, d.oldest_submitted_at - self.work(d)))
        if len(self.backends) == 1 and len(waiting) > 1:
            waiting = self.soonest_first(waiting, self.rooms[self.backends[0].name])
        total_waiting = self.waiting_weight()
        base = self.settings.weight_base
        for group in waiting:
            others = total_waiting - demand_weight(group, base)
            self.place(group, others)

    def soonest_first(self, waiting: list[Demand], room: _Room) -> list[Demand]:
        """Of the most urgent groups (same best rank), put first the one whose load now
        lets all of them finish soonest (:func:`rollout`); the rest keep their order."""
        tier = [d for d in waiting if d.rank == waiting[0].rank][:ROLLOUT_GROUPS]
        jobs: list[tuple[str, float, float]] = []
        for d in tier:
            f = self.facts.get(d.runner)
            if f is None or f.estimate_bytes is None:
                return waiting
            jobs.append((d.runner, f.load_seconds, self.work(d)))
        if len(jobs) < 2:
            return waiting
        unload = self.settings.unload_seconds
        seats: list[float] = [0.0] * max(0, room.view.max_loaded - room.seats)
        loader = 0.0
        for v in self.runners:
            if v.backend != room.view.name:
                continue
            f = self.facts.get(v.runner) or RunnerFacts(estimate_bytes=v.size_bytes)
            if v.state is RunnerState.LOADING:
                ready = max(0.0, f.load_seconds - (self.now - v.loaded_at))
                loader = max(loader, ready)
                own = self.demands.get(v.runner)
                work = self.work(own) if own is not None else 0.0
                seats.append(ready + work + unload)
            elif v.state is RunnerState.UNLOADING:
                seats.append(unload)
            else:
                own = self.demands.get(v.runner)
                busy = v.in_flight * f.job_seconds / max(1, v.slots)
                if own is not None:
                    busy = min(self.time_to_idle(v, own, f), 1e6)
                seats.append(busy + unload)
        seats.extend([1e6] * room.view.foreign)  # taken by others: not ours to plan
        if not seats:
            return waiting
        best = min(
            range(len(jobs)),
            key=lambda i: (
                rollout([jobs[i], *_longest_first(jobs[:i] + jobs[i + 1 :])], seats, loader),
                i,
            ),
        )
        first = next(d for d in waiting if d.runner == jobs[best][0])
        return [first, *(d for d in waiting if d is not first)]

    def place(self, group: Demand, others: float) -> None:
        runner = group.runner
        f = self.facts.get(runner)
        wait = self.plan.actions.append
        if f is None or f.estimate_bytes is None:
            if f is not None and f.installed is False:
                self.missing(group)
            elif f is not None and f.pulling:
                wait(Wait(runner, WaitReason.PULLING))
            else:
                wait(Wait(runner, WaitReason.SIZE_UNKNOWN))
            return
        if f.installed is False:
            self.missing(group)
            return
        if f.pulling:
            wait(Wait(runner, WaitReason.PULLING))
            return
        if not self.backends:
            wait(Wait(runner, WaitReason.BACKEND_DOWN))
            return
        if f.blocked_until > self.now:
            wait(Wait(runner, WaitReason.BACKOFF, f"{f.blocked_until - self.now:.1f}s left"))
            return
        margin = self.settings.safety_margin_bytes
        capacity = max(b.total_bytes - margin for b in self.backends)
        need = f.estimate_bytes
        measured = f.evidence_bytes if f.evidence_bytes is not None else need
        known = any(b.total_bytes > 0 for b in self.backends)
        if known and measured > capacity:
            self.plan.actions.append(
                Fail(
                    runner,
                    FailCode.MODEL_TOO_LARGE,
                    f"needs about {_mb(measured)} of VRAM but the GPU has "
                    f"{_mb(max(capacity, 0))} in all (after the {_mb(margin)} safety margin)",
                )
            )
            return
        if known and need > capacity:
            need = max(capacity, 0)  # failures raised it past the GPU: try it alone
        if self.switch_runner(group, others):
            return
        room = self.rooms[self.backends[0].name]
        self.fit(group, need, room, others)

    def missing(self, group: Demand) -> None:
        if self.settings.auto_pull and self.backends:
            self.plan.actions.append(Pull(group.runner, self.backends[0].name))
        else:
            self.plan.actions.append(
                Fail(group.runner, FailCode.MODEL_NOT_FOUND, "not installed in Ollama")
            )

    def switch_runner(self, group: Demand, others: float) -> bool:
        """Ollama holds one runner per model: before a runner with other options can load,
        the model's current one must go (if the group may displace it); the group waits."""
        model = model_of(group.runner)
        rivals = [v for v in self.runners if v.runner != group.runner]
        rivals = [v for v in rivals if model_of(v.runner) == model]
        if not rivals:
            return False
        for v in rivals:
            if v.state is not RunnerState.READY or (v.runner, v.backend) in self.leaving:
                continue
            if v.runner not in self.demands:
                self.leave(v, UnloadReason.RUNNER_OPTIONS, group.runner, "")
                continue
            pays, detail = self.switch(group, v, others)
            if pays:
                self.leave(v, UnloadReason.RUNNER_OPTIONS, group.runner, detail)
        self.plan.actions.append(Wait(group.runner, WaitReason.RUNNER_SWITCH))
        return True

    def fit(self, group: Demand, need: int, room: _Room, others: float) -> None:
        runner, backend = group.runner, room.view.name
        seat_free = room.seats < room.view.max_loaded
        if need <= room.free and seat_free:
            if room.load_slots > 0:
                self.plan.actions.append(Load(runner, backend))
                room.load_slots -= 1
            else:
                self.plan.actions.append(Wait(runner, WaitReason.LOAD_SLOT))
            room.free -= need  # reserved for it even if it starts on a later pass
            room.seats += 1
            return
        leaving_here = any(b == backend for _, b in self.leaving)
        if leaving_here and need <= room.free + room.incoming:
            room.incoming -= max(0, need - room.free)
            room.free = 0
            self.plan.actions.append(Wait(runner, WaitReason.UNLOADING))
            return
        chosen, _, blocked = self.victims(group, need, room, seat_free, others)
        if chosen:
            why = WaitReason.MEMORY if need > room.free else WaitReason.MODEL_CAP
            for v, why_leave, detail in chosen:
                self.leave(v, why_leave, runner, detail)
            room.free = 0  # keep memory for this group while its victims go
            self.plan.actions.append(Wait(runner, why, f"needs {_mb(need)}"))
            return
        if blocked:
            wait = WaitReason.BUSY_SEATS
        elif need <= room.free:
            wait = WaitReason.MODEL_CAP
        else:
            wait = WaitReason.MEMORY
        self.plan.actions.append(
            Wait(runner, wait, f"needs {_mb(need)}, {_mb(max(room.free, 0))} free")
        )

    def victims(
        self, group: Demand, need: int, room: _Room, seat_free: bool, others: float
    ) -> tuple[list[tuple[RunnerView, UnloadReason, str]], int, bool]:
        """Runners whose going makes room for ``group``: (runner, reason, detail) in the
        order they are taken, the memory they free, and whether runners that may not be
        displaced stood in the way. Empty if even all of them would not make room."""
        idle_free: list[RunnerView] = []
        busy_free: list[RunnerView] = []
        paying: list[tuple[float, RunnerView, str]] = []
        blocked = False
        for v in self.runners:
            if v.backend != room.view.name or v.state is not RunnerState.READY:
                continue
            if (v.runner, v.backend) in self.leaving:
                continue
            if v.runner not in self.demands:
                if self.warm(v, group):
                    blocked = True  # jobs keep coming for it: not yet worth a reload
                    continue
                (idle_free if v.in_flight == 0 else busy_free).append(v)
                continue
            pays, detail = self.switch(group, v, others)
            if pays:
                own = self.demands[v.runner]
                paying.append((-own.rank, v, detail))  # least urgent first
            else:
                blocked = True
        # the runner least likely to be needed again soon goes first: fewest new jobs
        # lately, then least recently used
        idle_free.sort(key=lambda v: (v.arrivals, v.last_used))
        busy_free.sort(key=lambda v: (v.arrivals, v.in_flight))
        paying.sort(key=lambda item: (item[0], item[1].in_flight))
        ordered: list[tuple[RunnerView, UnloadReason, str]] = [
            *((v, UnloadReason.ROOM, "") for v in idle_free),
            *((v, UnloadReason.ROOM, "") for v in busy_free),
            *((v, UnloadReason.OUTRANKED, d) for _, v, d in paying),
        ]
        chosen: list[tuple[RunnerView, UnloadReason, str]] = []
        freed = 0
        for v, reason, detail in ordered:
            if room.free + freed >= need and (seat_free or chosen):
                break
            chosen.append((v, reason, detail))
            freed += v.size_bytes
        if not (room.free + freed >= need and (seat_free or chosen)):
            return [], 0, blocked
        return chosen, freed, blocked

    def dispatch(self) -> None:
        for v in self.runners:
            if v.state is not RunnerState.READY or (v.runner, v.backend) in self.leaving:
                continue
            d = self.demands.get(v.runner)
            if d is None or not any(b.name == v.backend for b in self.backends):
                continue
            ahead = self.settings.dispatch_ahead
            room = min(self.settings.max_concurrent_per_model, v.slots + ahead) - v.in_flight
            if room > 0:
                self.plan.actions.append(Dispatch(v.runner, v.backend, min(room, d.waiting)))


def _longest_first(jobs: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    return sorted(jobs, key=lambda j: -j[2])


def rollout(order: list[tuple[str, float, float]], seats: list[float], loader: float) -> float:
    """When the last of ``order`` would finish: each (name, load s, work s) loads on the
    one loader Ollama has, in turn, into the seat that frees first (``seats``: seconds
    until each frees), then works; ``loader`` is when the loader is free. Memory is left
    out: a quick estimate to choose which group to load next."""
    free = sorted(seats)
    end = 0.0
    for _, load, work in order:
        seat = free.pop(0)
        done = max(loader, seat) + load
        loader = done
        end = max(end, done + work)
        bisect.insort(free, done + work)
    return end


def plan(
    demands: Iterable[Demand],
    runners: Iterable[RunnerView],
    backends: Iterable[BackendView],
    facts: Mapping[str, RunnerFacts],
    settings: PlannerSettings,
    now: float,
) -> Plan:
    """Decide this pass's loads, unloads, drains, dispatches, failures and waits.

    ``facts`` has an entry for every runner with waiting jobs or held (see the scheduler);
    a waiting runner without one is skipped this pass.
    """
    state = _Pass(demands, runners, backends, facts, settings, now)
    if not state.backends:
        for d in state.demands.values():
            if d.runner not in state.held:
                state.plan.actions.append(Wait(d.runner, WaitReason.BACKEND_DOWN))
        return state.plan
    state.expire_idle()
    state.place_groups()
    state.dispatch()
    return state.plan


# ---------------------------------------------------------------- after an outcome


def backoff_delay(attempt: int, base: float, cap: float, draw: float) -> float:
    """Capped exponential backoff with full jitter: ``draw`` (uniform in [0, 1)) times
    ``min(cap, base * 2 ** (attempt - 1))``, in seconds."""
    return draw * min(cap, base * 2 ** max(0, attempt - 1))


def after_job_error(
    *,
    transient: bool,
    reached: bool,
    aborted: bool,
    out_of_memory: bool,
    attempts: int,
    max_attempts: int,
    delay: float,
) -> JobDecision:
    """Retry, fail, give the attempt back, or nothing (aborted on purpose).

    A request that never reached Ollama (connection refused) uses up no attempt; a
    transient error (:attr:`~modelmanager.errors.OllamaError.transient`) is retried after
    ``delay`` while attempts remain; anything else fails the job. An out-of-memory answer
    also raises the runner's estimate.
    """
    if aborted:
        return JobDecision(JobVerdict.ABORTED)
    if not reached:
        return JobDecision(JobVerdict.RELEASE)
    if transient and attempts < max_attempts:
        return JobDecision(JobVerdict.RETRY, delay, raise_estimate=out_of_memory)
    return JobDecision(JobVerdict.FAIL, raise_estimate=out_of_memory)


def after_load_failure(
    *,
    failures: int,
    max_attempts: int,
    not_found: bool,
    out_of_memory: bool,
    dropped: bool,
    delay: float,
) -> LoadDecision:
    """After a failed load (the ``failures``-th in a row): back off ``delay`` seconds; fail
    the runner's waiting jobs once the model is missing or the loads keep failing; raise
    the estimate when Ollama ran out of memory or dropped the model right after loading
    it (it evicted it again to fit another: the estimate was too low)."""
    return LoadDecision(
        backoff=delay,
        fail_jobs=not_found or failures >= max_attempts,
        raise_estimate=out_of_memory or dropped,
    )
