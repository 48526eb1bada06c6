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
   ``AUTO_PULL``); one whose measured size exceeds every backend fails; one whose model a
   backend holds with other runner options waits there for that runner to go. Otherwise
   it loads on the backend where its estimate fits now (``free - safety margin - loads in
   progress`` on one GPU, or spread over all of the backend's GPUs, as Ollama places it;
   :mod:`modelmanager.rooms`) under Ollama's loaded-model cap and one load at a time,
   the one with the most room first. If it fits nowhere, room is made on the backend
   where that is cheapest, from, in
   order: idle runners without waiting jobs (fewest new jobs lately, then least recently
   used, first), busy ones
   without waiting jobs (drained: they finish their jobs, then go), and runners that still
   have waiting jobs, **only where the switch pays** (below). A runner without waiting
   jobs that still gets new ones (a stream) is spared until the group has waited as long
   as reloading it would take: evicting it would most likely mean reloading it soon.
4. **Replicas**: a runner whose queue would take longer than twice its load time gets a
   second copy on another backend that has room to spare once every waiting group is
   placed (the same reasoning as a switch: the copy pays when the time it saves the
   queue exceeds the load it costs), and both are fed.
5. **Dispatch**: every ready runner (each copy) that is not being drained gets up to
   ``min(MAX_CONCURRENT_PER_MODEL, its slots + DISPATCH_AHEAD) - in flight`` more jobs:
   as many as Ollama runs at once, plus a few waiting in its runner so that a slot never
   idles between two jobs (a newer, more urgent job for the same model waits for at
   most those few).

**Pinned models** (PINNED_MODELS) count as always in demand, as if normal-priority work
waited for them (:data:`PIN_RANK`): one copy of each is loaded, after the waiting groups
are placed, wherever it fits in memory and a seat left free (nothing is evicted for it);
it never expires idle; and only a group that outranks that (high priority, or normal
work aged to high) evicts it, reason ``pinned``. A pinned model that also has waiting
jobs is kept on those terms as well as by the switch rule below.

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

import math
from collections.abc import Iterable, Mapping

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
from .rooms import Room, rollout
from .runners import model_of

MIB = 1024 * 1024
PIN_RANK = 1  # a pinned model is kept as if normal-priority work waited for it
ROLLOUT_GROUPS = 12  # at most this many equally urgent groups are compared for the next load
REPLICA_FACTOR = 2.0  # a copy pays when the queue takes longer than this many loads

_Victims = list[tuple[RunnerView, UnloadReason, str]]


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
        self.rooms: dict[str, Room] = {}
        for b in self.backends:
            mine = [v for v in self.runners if v.backend == b.name]
            loading = [v.size_bytes for v in mine if v.state is RunnerState.LOADING]
            room = Room.of(b, margin, loading)
            room.incoming = sum(v.size_bytes for v in mine if v.state is RunnerState.UNLOADING)
            room.seats = len(mine) + b.foreign
            room.load_slots = b.max_parallel_loads - len(loading)
            self.rooms[b.name] = room
            self.leaving.update(
                (v.runner, b.name) for v in mine if v.state is RunnerState.UNLOADING
            )
        self.usable = [r for r in self.rooms.values() if not r.view.draining]
        self.held = {v.runner for v in self.runners}
        self.blocked_rooms: set[str] = set()  # rooms a waiting group could not get into

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

    def is_pinned(self, v: RunnerView) -> bool:
        return v.runner in self.settings.pinned

    def copies(self, runner: str) -> list[RunnerView]:
        return [v for v in self.runners if v.runner == runner]

    def time_to_idle(self, v: RunnerView, own: Demand, f: RunnerFacts) -> float:
        """Seconds ``v`` needs to finish its queue on its own (shared with its other
        copies). New jobs arriving at a share ``rho`` of what it can serve stretch that
        by ``1 / (1 - rho)``; fed at or past its capacity, it never goes idle."""
        slots = sum(max(1, c.slots) for c in self.copies(v.runner)) or max(1, v.slots)
        in_flight = sum(c.in_flight for c in self.copies(v.runner))
        work = (own.waiting + in_flight) * f.job_seconds / slots
        rho = v.arrival_rate * f.job_seconds / slots
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
            room = self.rooms.get(v.backend)
            keep = self.settings.keep_alive if v.keep_alive is None else v.keep_alive
            if v.runner in self.settings.pinned:
                keep = -1.0  # pinned: never idle
            if room is not None and room.view.draining:
                keep = 0.0  # a backend being removed gives its models back once idle
            if keep >= 0 and self.now - v.last_used >= keep:
                idle = f"idle for {self.now - v.last_used:.0f}s"
                self.leave(v, UnloadReason.IDLE, None, idle)

    def place_groups(self) -> None:
        waiting = [d for d in self.demands.values() if d.runner not in self.held]
        waiting.sort(key=lambda d: (d.rank, d.oldest_submitted_at - self.work(d)))
        if self.usable and len(waiting) > 1:
            waiting = self.soonest_first(waiting)
        total_waiting = self.waiting_weight()
        base = self.settings.weight_base
        for group in waiting:
            others = total_waiting - demand_weight(group, base)
            self.place(group, others)

    def soonest_first(self, waiting: list[Demand]) -> list[Demand]:
        """Of the most urgent groups (same best rank), put first the one whose load now
        lets all of them finish soonest (:func:`~modelmanager.rooms.rollout`); the rest
        keep their order."""
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
        seats: list[tuple[float, str]] = []
        loaders: dict[str, float] = {}
        for room in self.usable:
            name = room.name
            seats += [(0.0, name)] * max(0, room.view.max_loaded - room.seats)
            loaders[name] = 0.0
            for v in self.runners:
                if v.backend != name:
                    continue
                f = self.facts.get(v.runner) or RunnerFacts(estimate_bytes=v.size_bytes)
                own = self.demands.get(v.runner)
                if v.state is RunnerState.LOADING:
                    ready = max(0.0, f.load_seconds - (self.now - v.loaded_at))
                    loaders[name] = max(loaders[name], ready)
                    work = self.work(own) if own is not None else 0.0
                    seats.append((ready + work + unload, name))
                elif v.state is RunnerState.UNLOADING:
                    seats.append((unload, name))
                else:
                    busy = v.in_flight * f.job_seconds / max(1, v.slots)
                    if own is not None:
                        busy = min(self.time_to_idle(v, own, f), 1e6)
                    seats.append((busy + unload, name))
        if not seats:
            return waiting

        def finish(i: int) -> tuple[float, int]:
            rest = sorted(jobs[:i] + jobs[i + 1 :], key=lambda j: -j[2])
            return rollout([jobs[i], *rest], seats, loaders), i

        best = min(range(len(jobs)), key=finish)
        first = next(d for d in waiting if d.runner == jobs[best][0])
        return [first, *(d for d in waiting if d is not first)]

    def installed_on_usable(self, f: RunnerFacts) -> bool:
        """Whether Ollama lists the model on a node that takes work now: a download of it
        elsewhere (or an update there) then holds back none of its jobs."""
        return f.backends is not None and any(r.name in f.backends for r in self.usable)

    def place(self, group: Demand, others: float) -> None:
        runner = group.runner
        f = self.facts.get(runner)
        wait = self.plan.actions.append
        if f is not None and f.pulling and not self.installed_on_usable(f):
            wait(Wait(runner, WaitReason.PULLING))  # being downloaded: its jobs wait for it
            return
        if f is not None and f.installed is False:
            self.missing(group)
            return
        if f is None or f.estimate_bytes is None:
            wait(Wait(runner, WaitReason.SIZE_UNKNOWN))
            return
        if not self.usable:
            wait(Wait(runner, WaitReason.BACKEND_DOWN))
            return
        if f.blocked_until > self.now:
            wait(Wait(runner, WaitReason.BACKOFF, f"{f.blocked_until - self.now:.1f}s left"))
            return
        margin = self.settings.safety_margin_bytes
        capacity = max(room.largest() for room in self.usable)
        need = f.estimate_bytes
        measured = f.evidence_bytes if f.evidence_bytes is not None else need
        known = any(room.view.total_bytes > 0 for room in self.usable)
        # Only a size measured at a load can rule a model out: an estimate from the disk
        # size is rough (it may fit after all), and Ollama runs a model larger than the
        # GPU partly on the CPU when nothing else is loaded (server/sched.go), so such a
        # model is tried alone. A measured size within the margin of the GPU loaded
        # before, so it is tried alone too.
        if known and f.measured and measured > capacity + margin:
            self.plan.actions.append(
                Fail(
                    runner,
                    FailCode.MODEL_TOO_LARGE,
                    f"needs about {_mb(measured)} of VRAM but the largest GPU (or GPUs) has "
                    f"{_mb(max(capacity, 0))} (after the {_mb(margin)} safety margin)",
                )
            )
            return
        if known and need > capacity:
            need = max(capacity, 0)  # estimated or raised past the GPU: try it alone
        self.fit(group, need, others)

    def missing(self, group: Demand) -> None:
        if self.settings.auto_pull and self.usable:
            self.plan.actions.append(Pull(group.runner, self.usable[0].name))
        else:
            self.plan.actions.append(
                Fail(group.runner, FailCode.MODEL_NOT_FOUND, "not installed in Ollama")
            )

    def rivals(self, runner: str, room: Room) -> list[RunnerView]:
        """Runners of the same model with other runner options on ``room``'s backend:
        Ollama holds one runner per model, so they must go before ``runner`` loads."""
        model = model_of(runner)
        return [
            v
            for v in self.runners
            if v.backend == room.name and v.runner != runner and model_of(v.runner) == model
        ]

    def switch_runner(self, group: Demand, room: Room, others: float) -> None:
        """Make the model's other runner on ``room`` go, if the group may displace it."""
        for v in self.rivals(group.runner, room):
            if v.state is not RunnerState.READY or (v.runner, v.backend) in self.leaving:
                continue
            if self.is_pinned(v) and not group.rank < PIN_RANK:
                continue  # a pinned model yields only to a higher-priority need
            if v.runner not in self.demands:
                reason = UnloadReason.PINNED if self.is_pinned(v) else UnloadReason.RUNNER_OPTIONS
                self.leave(v, reason, group.runner, "")
                continue
            pays, detail = self.switch(group, v, others)
            if pays:
                self.leave(v, UnloadReason.RUNNER_OPTIONS, group.runner, detail)
        self.plan.actions.append(Wait(group.runner, WaitReason.RUNNER_SWITCH))

    def fit(self, group: Demand, need: int, others: float) -> None:
        runner = group.runner
        having = self.facts[runner].backends
        usable = [r for r in self.usable if having is None or r.name in having] or self.usable
        candidates = [r for r in usable if not self.rivals(runner, r)]
        if not candidates:  # the model is held everywhere with other options
            self.switch_runner(group, usable[0], others)
            return
        fitting = [r for r in candidates if r.fits(need) and r.seat_free]
        if fitting:
            room = max(fitting, key=lambda r: (r.load_slots > 0, r.total_free()))
            if room.load_slots > 0:
                self.plan.actions.append(Load(runner, room.name))
                room.load_slots -= 1
            else:
                self.plan.actions.append(Wait(runner, WaitReason.LOAD_SLOT))
            room.reserve(need)  # reserved for it even if it starts on a later pass
            room.seats += 1
            return
        for room in candidates:
            leaving_here = any(b == room.name for _, b in self.leaving)
            if leaving_here and need <= room.total_free() + room.incoming:
                room.incoming -= max(0, need - room.total_free())
                room.claim_all()
                self.plan.actions.append(Wait(runner, WaitReason.UNLOADING))
                return
        options = []
        any_blocked = False
        for room in candidates:
            chosen, blocked = self.victims(group, need, room, others)
            any_blocked = any_blocked or blocked
            if chosen:
                outranked = sum(1 for _, reason, _ in chosen if reason is UnloadReason.OUTRANKED)
                options.append(((outranked, len(chosen), -room.total_free()), room, chosen))
        if options:
            _, room, chosen = min(options, key=lambda o: o[0])
            why = WaitReason.MEMORY if not room.fits(need) else WaitReason.MODEL_CAP
            for v, reason, detail in chosen:
                self.leave(v, reason, runner, detail)
            room.claim_all()  # keep memory for this group while its victims go
            self.blocked_rooms.add(room.name)
            self.plan.actions.append(Wait(runner, why, f"needs {_mb(need)}"))
            return
        self.blocked_rooms.update(r.name for r in candidates)
        best = max(candidates, key=lambda r: r.total_free())
        if any_blocked:
            wait = WaitReason.BUSY_SEATS
        elif best.fits(need):
            wait = WaitReason.MODEL_CAP
        else:
            wait = WaitReason.MEMORY
        detail = f"needs {_mb(need)}, {_mb(best.total_free())} free"
        self.plan.actions.append(Wait(runner, wait, detail))

    def victims(self, group: Demand, need: int, room: Room, others: float) -> tuple[_Victims, bool]:
        """Runners on ``room``'s backend whose going makes room for ``group``:
        (runner, reason, detail) in the order they are taken, and whether runners that
        may not be displaced stood in the way. Empty if even all of them would not make
        room."""
        idle_free: list[RunnerView] = []
        busy_free: list[RunnerView] = []
        pinned: list[RunnerView] = []
        paying: list[tuple[float, RunnerView, str]] = []
        blocked = False
        for v in self.runners:
            if v.backend != room.name or v.state is not RunnerState.READY:
                continue
            if (v.runner, v.backend) in self.leaving:
                continue
            if self.is_pinned(v):
                if not group.rank < PIN_RANK:
                    blocked = True  # kept: only a higher-priority need evicts it
                    continue
                if v.runner not in self.demands:
                    pinned.append(v)
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
        pinned.sort(key=lambda v: (v.in_flight, v.last_used))
        ordered: _Victims = [
            *((v, UnloadReason.ROOM, "") for v in idle_free),
            *((v, UnloadReason.ROOM, "") for v in busy_free),
            *((v, UnloadReason.PINNED, "") for v in pinned),
            *((v, UnloadReason.OUTRANKED, d) for _, v, d in paying),
        ]
        chosen: _Victims = []
        freed = 0
        for v, reason, detail in ordered:
            if room.total_free() + freed >= need and (room.seat_free or chosen):
                break
            chosen.append((v, reason, detail))
            freed += v.size_bytes
        if not (room.total_free() + freed >= need and (room.seat_free or chosen)):
            return [], blocked
        return chosen, blocked

    def horizon(self) -> float:
        """Seconds the fleet needs for all waiting work if it were shared evenly over
        every seat of every usable backend."""
        seats = sum(r.view.max_loaded for r in self.usable)
        return sum(self.work(d) for d in self.demands.values()) / max(1, seats)

    def replicate(self, critical: bool = False) -> None:
        """A second copy for a runner whose queue would take longer than REPLICA_FACTOR
        of its loads, on another backend with room to spare after the waiting groups, or
        with room that idle runners nobody waits for give back (they are unloaded first;
        the copy loads on a later pass).

        ``critical``: before the waiting groups are placed, only the most urgent runners
        whose queue outlasts the :meth:`horizon` by more than a load: the last job of the
        whole burst would be theirs, so their copy goes before groups that finish sooner
        anyway."""
        horizon = self.horizon() if critical else 0.0
        best = min((d.rank for d in self.demands.values()), default=0)
        for d in sorted(self.demands.values(), key=lambda d: (d.rank, -self.work(d))):
            if critical and d.rank > best:  # never ahead of a more urgent group
                break
            copies = [v for v in self.copies(d.runner) if (v.runner, v.backend) not in self.leaving]
            if not copies or any(v.state is RunnerState.LOADING for v in copies):
                continue
            f = self.facts.get(d.runner)
            if f is None or f.estimate_bytes is None:
                continue
            queue = self.time_to_idle(copies[0], d, f)
            cost = f.load_seconds + self.settings.unload_seconds
            if queue <= REPLICA_FACTOR * cost or (critical and queue <= horizon + cost):
                continue
            here = {v.backend for v in copies}
            spare = [
                r
                for r in self.usable
                if r.name not in here
                and (f.backends is None or r.name in f.backends)
                and r.name not in self.blocked_rooms
                and not self.rivals(d.runner, r)
                and r.load_slots > 0
            ]
            ready = [r for r in spare if r.seat_free and r.fits(f.estimate_bytes)]
            if ready:
                room = max(ready, key=lambda r: r.total_free())
                self.plan.actions.append(Load(d.runner, room.name))
                room.load_slots -= 1
                room.reserve(f.estimate_bytes)
                room.seats += 1
                continue
            for room in sorted(spare, key=lambda r: -r.total_free()):
                chosen = self.idle_victims(d, f.estimate_bytes, room)
                if chosen is None:
                    continue
                for v in chosen:  # none: the room is being made already
                    self.leave(v, UnloadReason.ROOM, d.runner, "for a second copy")
                room.claim_all()
                self.blocked_rooms.add(room.name)
                break

    def idle_victims(self, group: Demand, need: int, room: Room) -> list[RunnerView] | None:
        """Idle runners on ``room``'s backend that no job waits for and that no longer
        count as warm for ``group``, least needed first, whose going makes room for
        ``need`` bytes and a seat: ``[]`` when unloads under way make it already, None
        when even all of them would not."""
        seats = (
            room.view.max_loaded - room.seats + sum(1 for _, b in self.leaving if b == room.name)
        )
        have = room.total_free() + room.incoming
        if have >= need and seats > 0:
            return [] if room.incoming > 0 else None  # else it does not fit as placed
        idle = [
            v
            for v in self.runners
            if v.backend == room.name
            and v.state is RunnerState.READY
            and v.in_flight == 0
            and v.runner not in self.demands
            and (v.runner, v.backend) not in self.leaving
            and not self.warm(v, group)
            and not self.is_pinned(v)
        ]
        idle.sort(key=lambda v: (v.arrivals, v.last_used))
        chosen: list[RunnerView] = []
        for v in idle:
            if have >= need and seats > 0:
                break
            chosen.append(v)
            have += v.size_bytes
            seats += 1
        return chosen if have >= need and seats > 0 else None

    def keep_pinned(self) -> None:
        """Load each pinned model that no backend holds where it fits now, in memory and
        a seat nobody waits for, the backend with the most room first (nothing is evicted
        for it); a model Ollama lacks, is downloading, or whose size is unknown waits."""
        for runner in sorted(self.settings.pinned):
            if runner in self.held or runner in self.demands:
                continue  # held, or placed with its waiting jobs
            f = self.facts.get(runner)
            if f is None or f.estimate_bytes is None or f.installed is not True:
                continue
            if f.pulling and not self.installed_on_usable(f):
                continue
            if f.blocked_until > self.now:
                continue
            need = f.estimate_bytes
            having = [r for r in self.usable if f.backends is None or r.name in f.backends]
            rooms = [
                r
                for r in having or self.usable  # as fit(): where Ollama lists it, if known
                if r.name not in self.blocked_rooms
                and not self.rivals(runner, r)
                and r.load_slots > 0
                and r.seat_free
                and r.fits(need)
            ]
            if not rooms:
                continue
            room = max(rooms, key=lambda r: r.total_free())
            self.plan.actions.append(Load(runner, room.name))
            room.load_slots -= 1
            room.reserve(need)
            room.seats += 1

    def dispatch(self) -> None:
        ahead = self.settings.dispatch_ahead
        left = {r: d.waiting for r, d in self.demands.items()}
        for v in sorted(self.runners, key=lambda v: v.in_flight):
            if v.state is not RunnerState.READY or (v.runner, v.backend) in self.leaving:
                continue
            if left.get(v.runner, 0) <= 0 or v.backend not in self.rooms:
                continue
            if self.rooms[v.backend].view.draining:
                continue
            room = min(self.settings.max_concurrent_per_model, v.slots + ahead) - v.in_flight
            if room > 0:
                n = min(room, left[v.runner])
                left[v.runner] -= n
                self.plan.actions.append(Dispatch(v.runner, v.backend, n))


def plan(
    demands: Iterable[Demand],
    runners: Iterable[RunnerView],
    backends: Iterable[BackendView],
    facts: Mapping[str, RunnerFacts],
    settings: PlannerSettings,
    now: float,
) -> Plan:
    """Decide this pass's loads, unloads, drains, dispatches, failures and waits.

    ``facts`` has an entry for every runner with waiting jobs or held (see the scheduler),
    and for each pinned one; a waiting runner without one is skipped this pass.
    """
    state = _Pass(demands, runners, backends, facts, settings, now)
    if not state.backends:
        for d in state.demands.values():
            if d.runner not in state.held:
                state.plan.actions.append(Wait(d.runner, WaitReason.BACKEND_DOWN))
        return state.plan
    state.expire_idle()
    state.replicate(critical=True)
    state.place_groups()
    state.keep_pinned()
    state.replicate()
    state.dispatch()
    return state.plan
