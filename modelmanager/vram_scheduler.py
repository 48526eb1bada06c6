"""The planner: a PURE function from (demand, model states, resources, estimates) to a Plan.

No I/O, no clock, no threads, no logging: every scheduling rule is a plain unit test.
Policy "demand_based" (DESIGN.md):

1. Dispatch first: each ready model with waiting jobs gets up to
   ``min(max_concurrent, slots) - in_flight`` more jobs, where ``slots`` is how many
   requests Ollama runs at once for it. More would only wait inside Ollama's runner,
   where there is no priority, and make a drained model take longer to go idle.
2. Rank waiting model groups: best effective priority (aging included), then the most
   overdue: the oldest job's submit time minus the group's estimated queued work, so
   within a burst (equal waits) the longest group starts first and no seat is left
   running a long group alone at the end; equal work falls back to oldest wait.
3. For the top groups whose model is not loaded: load if the estimate fits in
   ``free - safety margin - loads in progress`` (and Ollama's loaded-model cap allows).
   Otherwise evict idle models -- models with no demand first (least recently used
   first), then models whose demand the group strictly outranks and that have finished
   a job since they loaded or been resident ``min_residency`` -- never a model with jobs
   in flight. If idle models cannot make room, stop feeding just enough outranked models
   (drain) that they finish the jobs they have, go idle, and are evicted.
4. A model larger than the whole GPU fails its jobs at once.
5. A ready model idle longer than ``keep_alive`` is unloaded.

Memory is in bytes throughout.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .models import MIB, ResourceSnapshot
from .queue_manager import ModelDemand
from .runners import model_of

#: no slot count known: only ``max_concurrent_per_model`` limits dispatch
MAX_SLOTS = 1 << 30


class Residency(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"


@dataclass(frozen=True)
class ModelView:
    """The engine's view of one runner that Ollama holds (or is loading / unloading);
    ``name`` is its runner key (:mod:`modelmanager.runners`)."""

    name: str
    residency: Residency
    in_flight: int
    loaded_at: float  # when it became ready (load start while loading)
    last_used: float  # when its last job finished (or it became ready)
    size_bytes: int  # learned or estimated VRAM
    slots: int | None = None  # requests Ollama runs at once for it (None: unknown)
    jobs_done: int = 0  # jobs finished since it became ready
    keep_alive: float | None = None  # idle seconds its last job asked for (None: default)


@dataclass(frozen=True)
class PlannerSettings:
    safety_margin_bytes: int
    max_concurrent_per_model: int
    min_residency: float
    keep_alive: float
    max_loaded_models: int
    max_parallel_loads: int = 1


@dataclass
class Plan:
    dispatch: dict[str, int] = field(default_factory=dict)
    loads: list[str] = field(default_factory=list)
    unloads: list[tuple[str, str]] = field(default_factory=list)  # (model, reason)
    fail: list[tuple[str, str]] = field(default_factory=list)  # (model, reason)
    drain: set[str] = field(default_factory=set)
    waiting_for_memory: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.dispatch or self.loads or self.unloads or self.fail)


def _mb(n: int) -> str:
    return f"{n // MIB} MB"


def plan(
    demand: Iterable[ModelDemand],
    views: Mapping[str, ModelView],
    snapshot: ResourceSnapshot,
    estimates: Mapping[str, int | None],
    settings: PlannerSettings,
    now: float,
    work: Mapping[str, float] | None = None,
    evidence: Mapping[str, int] | None = None,
) -> Plan:
    """Decide what to dispatch, load, unload, drain and fail in this pass.

    Groups, views and estimates are keyed by runner key. ``work``: estimated seconds of
    queued work per waiting runner (missing: 0). ``evidence``: each estimate before
    failures raised it; a runner fails as too large only if that evidence exceeds the
    GPU (a raised estimate past it is planned as the whole GPU instead)."""
    result = Plan()
    if not snapshot.backend_up:
        return result  # Ollama unreachable: everything waits
    demands = {d.model: d for d in demand}

    # 1. dispatch to ready models
    for d in demands.values():
        v = views.get(d.model)
        if v is not None and v.residency is Residency.READY:
            room = min(settings.max_concurrent_per_model, v.slots or MAX_SLOTS) - v.in_flight
            if room > 0:
                result.dispatch[d.model] = min(room, d.waiting)

    # 5. idle expiry
    unloading = {name for name, v in views.items() if v.residency is Residency.UNLOADING}
    for v in views.values():
        idle = v.residency is Residency.READY and v.in_flight == 0 and v.name not in demands
        keep = settings.keep_alive if v.keep_alive is None else v.keep_alive
        if idle and keep >= 0 and now - v.last_used >= keep:
            result.unloads.append((v.name, f"idle for {now - v.last_used:.0f}s"))
            unloading.add(v.name)

    # 2-4. loads, evictions, drains
    margin = settings.safety_margin_bytes
    capacity = snapshot.total_bytes - margin
    loading = [v for v in views.values() if v.residency is Residency.LOADING]
    free = snapshot.free_bytes - margin - sum(v.size_bytes for v in loading)
    # memory that unloads already under way (or planned above) will give back
    incoming = sum(views[name].size_bytes for name in unloading)
    # Ollama counts a model until it is really gone, so unloading ones hold a slot too
    resident = len(views)
    load_slots = settings.max_parallel_loads - len(loading)
    overdue = work or {}
    waiting_groups = sorted(
        (d for d in demands.values() if d.model not in views),
        key=lambda d: (d.rank, d.oldest_submitted_at - overdue.get(d.model, 0.0)),
    )

    for group in waiting_groups:
        need = estimates.get(group.model)
        if need is None:
            continue  # size unknown until Ollama answers
        measured = (evidence or {}).get(group.model, need)
        if snapshot.total_bytes > 0 and need > capacity and measured <= capacity:
            need = max(capacity, 0)  # raised by failures past the GPU: try it alone
        if snapshot.total_bytes > 0 and need > capacity:
            result.fail.append(
                (
                    group.model,
                    f"model {group.model} needs about {_mb(need)} of VRAM but the GPU has "
                    f"{_mb(max(capacity, 0))} in all (after the {_mb(margin)} safety margin)",
                )
            )
            continue
        if _switch_runner(group, views, demands, unloading, settings, now, result):
            continue  # another runner of the same model must go first
        slot_free = resident < settings.max_loaded_models
        if need <= free and slot_free:
            if load_slots > 0:
                result.loads.append(group.model)
                load_slots -= 1
                resident += 1
            free -= need  # reserved for it even if it starts on a later pass
            continue
        if unloading and need <= free + incoming:
            incoming -= max(0, need - free)  # wait for the unloads under way
            free = 0
            result.waiting_for_memory.append(group.model)
            continue

        victims = _evictable(group, views, demands, unloading, settings, now)
        freed, chosen = 0, list[ModelView]()
        for v in victims:
            if free + freed >= need and (slot_free or chosen):
                break
            chosen.append(v)
            freed += v.size_bytes
        if chosen and free + freed >= need:
            for v in chosen:
                reason = (
                    f"to make room for {group.model} (needs {_mb(need)})"
                    if v.name not in demands
                    else f"outranked by {group.model} (needs {_mb(need)})"
                )
                result.unloads.append((v.name, reason))
                result.dispatch.pop(v.name, None)
                unloading.add(v.name)
            free = max(0, free - max(0, need - freed))  # this group takes what is free now
            result.waiting_for_memory.append(group.model)
            continue

        # not enough idle victims: stop feeding just enough outranked models so they drain
        draining: list[ModelView] = []
        # a model another group already drains is spoken for
        for v in _drainable(group, views, demands, unloading | result.drain):
            if free + freed >= need and (slot_free or chosen or draining):
                break
            draining.append(v)
            freed += v.size_bytes
        if draining and free + freed >= need:
            # the idle victims counted in `freed` must stay idle too, or they and the
            # drained models take turns being busy and the group waits for their queues
            for v in [*chosen, *draining]:
                result.drain.add(v.name)
                result.dispatch.pop(v.name, None)
            free = 0  # keep memory for this group while the drained models finish
        result.waiting_for_memory.append(group.model)
    return result


def _switch_runner(
    group: ModelDemand,
    views: Mapping[str, ModelView],
    demands: Mapping[str, ModelDemand],
    unloading: set[str],
    settings: PlannerSettings,
    now: float,
    result: Plan,
) -> bool:
    """Ollama holds one runner per model: before a runner with other options can load,
    the model's current runner must go. Unload it if it is idle and the group may
    displace it, drain it if it is busy; the group waits meanwhile. False if no other
    runner of the model is held."""
    model = model_of(group.model)
    rivals = [v for n, v in views.items() if n != group.model and model_of(n) == model]
    if not rivals:
        return False
    for v in rivals:
        if v.residency is not Residency.READY or v.name in unloading:
            continue
        own = demands.get(v.name)
        if not _outranks(group, own):
            continue  # its own jobs come first; once they are done it has no demand
        if v.in_flight == 0 and (
            own is None or v.jobs_done > 0 or now - v.loaded_at >= settings.min_residency
        ):
            result.unloads.append((v.name, f"runner options differ from {group.model}"))
            result.dispatch.pop(v.name, None)
            unloading.add(v.name)
        elif v.in_flight > 0:
            result.drain.add(v.name)
            result.dispatch.pop(v.name, None)
    result.waiting_for_memory.append(group.model)
    return True


def _outranks(group: ModelDemand, other: ModelDemand | None) -> bool:
    """A waiting group may displace a loaded model only with strictly better priority."""
    return other is None or group.rank < other.rank


def _evictable(
    group: ModelDemand,
    views: Mapping[str, ModelView],
    demands: Mapping[str, ModelDemand],
    unloading: set[str],
    settings: PlannerSettings,
    now: float,
) -> list[ModelView]:
    """Idle ready models the group may evict: no-demand first (LRU), then outranked."""
    no_demand: list[ModelView] = []
    outranked: list[tuple[tuple[int, float], ModelView]] = []
    for v in views.values():
        if v.residency is not Residency.READY or v.in_flight > 0 or v.name in unloading:
            continue
        own = demands.get(v.name)
        if own is None:
            no_demand.append(v)
        elif _outranks(group, own) and (
            v.jobs_done > 0 or now - v.loaded_at >= settings.min_residency
        ):
            outranked.append((_last_first(own), v))
    no_demand.sort(key=lambda v: v.last_used)
    outranked.sort(key=lambda item: item[0])
    return no_demand + [v for _, v in outranked]


def _drainable(
    group: ModelDemand,
    views: Mapping[str, ModelView],
    demands: Mapping[str, ModelDemand],
    unloading: set[str],
) -> list[ModelView]:
    """Busy ready models that go idle if we stop feeding them: those without demand,
    then the outranked ones, lowest ranked first. Draining lets a model finish the jobs
    it has (its batch), so it needs no ``min_residency``."""
    no_demand: list[ModelView] = []
    outranked: list[tuple[tuple[int, float, int], ModelView]] = []
    for v in views.values():
        if v.residency is not Residency.READY or v.in_flight == 0 or v.name in unloading:
            continue
        own = demands.get(v.name)
        if own is None:
            no_demand.append(v)
        elif _outranks(group, own):
            outranked.append(((*_last_first(own), v.in_flight), v))
    outranked.sort(key=lambda item: item[0])
    return no_demand + [v for _, v in outranked]


def _last_first(d: ModelDemand) -> tuple[int, float]:
    """Sort key putting the least urgent demand first: worst rank, then youngest."""
    return (-d.rank, -d.oldest_submitted_at)
