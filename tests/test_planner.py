"""The planner: every scheduling rule as a pure function call.

Each test builds demand, runner views, a backend and facts by hand and reads the Plan.
Memory is in GiB for readability; the planner itself works in bytes.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Mapping

import pytest

from modelmanager.models import GIB, MIB
from modelmanager.plan import (
    BackendView,
    Demand,
    Dispatch,
    Drain,
    Fail,
    FailCode,
    JobVerdict,
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
from modelmanager.planner import demand_weight, plan
from modelmanager.rooms import rollout
from modelmanager.verdicts import after_job_error, after_load_failure, backoff_delay

NOW = 10_000.0
READY, LOADING, UNLOADING = RunnerState.READY, RunnerState.LOADING, RunnerState.UNLOADING
HIGH, NORMAL, LOW = 0, 1, 2
B = "gpu0"


def want(
    runner: str,
    waiting: int = 1,
    rank: int = NORMAL,
    oldest: float = NOW - 1,
    counts: tuple[int, int, int] | None = None,
) -> Demand:
    """Demand of ``waiting`` jobs, all of priority ``rank`` unless ``counts`` says."""
    if counts is None:
        priority = min(max(rank, 0), 2)
        counts = tuple(waiting if i == priority else 0 for i in range(3))  # type: ignore[assignment]
        ranks = tuple(rank if i == priority else None for i in range(3))
    else:
        waiting = sum(counts)
        ranks = tuple(i if n else None for i, n in enumerate(counts))
        rank = min(r for r in ranks if r is not None)
    return Demand(runner, waiting, rank, oldest, counts, ranks)  # type: ignore[arg-type]


def view(
    runner: str,
    state: RunnerState = READY,
    *,
    in_flight: int = 0,
    size_gb: float = 4,
    loaded_ago: float = 3600,
    used_ago: float = 1,
    slots: int = 1,
    jobs_done: int = 0,
    keep_alive: float | None = None,
) -> RunnerView:
    return RunnerView(
        runner=runner,
        backend=B,
        state=state,
        in_flight=in_flight,
        loaded_at=NOW - loaded_ago,
        last_used=NOW - used_ago,
        size_bytes=int(size_gb * GIB),
        slots=slots,
        jobs_done=jobs_done,
        keep_alive=keep_alive,
    )


def gb(n: float) -> int:
    return int(n * GIB)


def backend(
    total_gb: float = 16,
    free_gb: float | None = None,
    views: Iterable[RunnerView] = (),
    *,
    up: bool = True,
    max_loaded: int = 3,
    loads: int = 1,
    foreign: int = 0,
) -> BackendView:
    """A backend; by default free = total - what the ready/unloading views hold."""
    if free_gb is None:
        held = sum(v.size_bytes for v in views if v.state is not LOADING)
        free = gb(total_gb) - held
    else:
        free = gb(free_gb)
    return BackendView(B, up, gb(total_gb), free, max_loaded, loads, foreign)


def settings(**kw: float) -> PlannerSettings:
    base: dict[str, float] = {
        "safety_margin_bytes": 1 * GIB,
        "max_concurrent_per_model": 4,
        "min_residency": 10.0,
        "keep_alive": 300.0,
    }
    base.update(kw)
    return PlannerSettings(**base)  # type: ignore[arg-type]


def facts(
    estimates: Mapping[str, float | None] | None = None, **per: RunnerFacts
) -> dict[str, RunnerFacts]:
    """Facts from GiB estimates (None: unknown size); ``per`` overrides whole entries."""
    out = {
        name: RunnerFacts(estimate_bytes=None if size is None else gb(size))
        for name, size in (estimates or {}).items()
    }
    out.update(per)
    return out


def run(
    demand: list[Demand],
    views: list[RunnerView],
    estimates: Mapping[str, float | None] | None = None,
    *,
    total: float = 16,
    free: float | None = None,
    config: PlannerSettings | None = None,
    known: dict[str, RunnerFacts] | None = None,
    **backend_kw: object,
) -> Plan:
    """Plan with one backend; facts default to a 4 GiB estimate for held runners."""
    f = {v.runner: RunnerFacts(estimate_bytes=v.size_bytes) for v in views}
    f.update(facts(estimates))
    f.update(known or {})
    b = backend(total, free, views, **backend_kw)  # type: ignore[arg-type]
    return plan(demand, views, [b], f, config or settings(), NOW)


def waits(result: Plan) -> dict[str, WaitReason]:
    return result.waits


# ------------------------------------------------------------------------------ dispatch


@pytest.mark.parametrize(
    ("waiting", "in_flight", "expected"),
    [
        (10, 0, 4),  # capped by max_concurrent
        (10, 3, 1),  # only the room left
        (2, 0, 2),  # only what waits
        (10, 4, None),  # full: nothing
        (10, 6, None),  # over-full (e.g. the setting was lowered): nothing
    ],
)
def test_plan_dispatch_fills_up_to_max_concurrent_minus_in_flight(
    waiting: int, in_flight: int, expected: int | None
) -> None:
    result = run([want("a", waiting)], [view("a", in_flight=in_flight, slots=8)])
    assert result.dispatch.get("a") == expected


@pytest.mark.parametrize(
    ("slots", "in_flight", "expected"), [(1, 0, 1), (1, 1, None), (2, 1, 1), (8, 0, 4)]
)
def test_plan_dispatch_sends_no_more_than_ollama_runs_at_once(
    slots: int, in_flight: int, expected: int | None
) -> None:
    # the rest wait in our queue, where priorities apply, not inside Ollama's runner
    result = run([want("a", 10)], [view("a", in_flight=in_flight, slots=slots)])
    assert result.dispatch.get("a") == expected


@pytest.mark.parametrize("state", [LOADING, UNLOADING])
def test_plan_dispatch_only_to_ready_runners(state: RunnerState) -> None:
    result = run([want("a", 3), want("b", 3)], [view("a", state), view("b", slots=4)])
    assert result.dispatch == {"b": 3}
    assert "a" not in result.loads


def test_plan_when_the_backend_is_down_everything_waits() -> None:
    result = run(
        [want("ready", 5), want("new")],
        [view("ready"), view("stale", used_ago=10_000)],
        {"new": 1},
        up=False,
    )
    assert result.dispatch == {} and result.loads == [] and result.unloads == {}
    assert result.waits == {"new": WaitReason.BACKEND_DOWN}


# --------------------------------------------------------------------------------- loads


@pytest.mark.parametrize(
    ("free_gb", "need_gb", "loads"),
    [
        (16, 15, ["m"]),  # exactly free - margin
        (16, 15.001, []),  # one byte-ish over
        (8, 2, ["m"]),
        (1, 0.5, []),  # the margin itself is never used
    ],
)
def test_plan_loads_only_when_the_estimate_fits_free_minus_margin(
    free_gb: float, need_gb: float, loads: list[str]
) -> None:
    result = run([want("m")], [], {"m": need_gb}, total=32, free=free_gb)
    assert result.loads == loads
    assert (result.waits.get("m") is WaitReason.MEMORY) == (not loads)
    assert not result.fails


@pytest.mark.parametrize(("need_gb", "loads"), [(3, ["m"]), (3.5, [])])
def test_plan_loading_runners_reserve_their_memory(need_gb: float, loads: list[str]) -> None:
    # "b" is loading: NVML does not show it yet, so its 6 GiB must be reserved by hand
    result = run(
        [want("m")], [view("b", LOADING, size_gb=6)], {"m": need_gb}, total=10, free=10, loads=2
    )
    assert result.loads == loads


@pytest.mark.parametrize(
    ("max_parallel", "already_loading", "expected"),
    [(1, 0, ["a"]), (2, 0, ["a", "b"]), (3, 0, ["a", "b", "c"]), (2, 1, ["a"]), (1, 1, [])],
)
def test_plan_loads_at_most_max_parallel_loads_at_once(
    max_parallel: int, already_loading: int, expected: list[str]
) -> None:
    views = [view(f"busy{i}", LOADING, size_gb=1) for i in range(already_loading)]
    demand = [want("a", oldest=1), want("b", oldest=2), want("c", oldest=3)]
    result = run(
        demand, views, {"a": 1, "b": 1, "c": 1}, total=64, loads=max_parallel, max_loaded=10
    )
    assert result.loads == expected
    queued = {d.runner for d in demand} - set(expected)
    assert all(result.waits[r] is WaitReason.LOAD_SLOT for r in queued)


@pytest.mark.parametrize(
    ("demand", "expected"),
    [
        # higher priority first, whatever the wait
        ([want("low", rank=LOW, oldest=1), want("high", rank=HIGH, oldest=900)], ["high", "low"]),
        # same priority: oldest wait first
        ([want("new", oldest=500), want("old", oldest=100)], ["old", "new"]),
        # aged rank (negative) beats a fresh high
        ([want("fresh", rank=HIGH, oldest=1), want("aged", rank=-1, oldest=2)], ["aged", "fresh"]),
        (
            [want("c", rank=LOW, oldest=1), want("b", oldest=5), want("a", oldest=3)],
            ["a", "b", "c"],
        ),
    ],
)
def test_plan_loads_in_rank_order(demand: list[Demand], expected: list[str]) -> None:
    estimates = {d.runner: 1.0 for d in demand}
    assert run(demand, [], estimates, total=64, loads=10, max_loaded=10).loads == expected
    # with one load at a time only the top group loads
    assert run(demand, [], estimates, total=64, loads=1, max_loaded=10).loads == expected[:1]


def test_plan_equally_urgent_groups_load_in_the_order_that_finishes_them_soonest() -> None:
    """Eight models, all with high jobs, about three fit: the first load is the one after
    which all of them finish soonest (loads go one at a time, each model then works
    through its queue in a seat); the rest follow, longest queue first."""
    figures = {  # load seconds, job seconds (30 jobs each): the simulator's small models
        "phi3": (2.35, 0.181),
        "gemma": (1.56, 0.109),
        "smollm17": (1.23, 0.091),
        "llama": (1.19, 0.091),
        "qwen15": (1.16, 0.091),
        "tiny": (0.85, 0.072),
        "qwen05": (0.92, 0.054),
        "smollm360": (0.67, 0.054),
    }
    known = {
        n: RunnerFacts(estimate_bytes=gb(1), load_seconds=load, job_seconds=job)
        for n, (load, job) in figures.items()
    }
    demand = [want(n, 30, rank=HIGH) for n in figures]
    first = run(demand, [], known=known, total=64, loads=1).loads
    groups = [(n, load, 30 * job) for n, (load, job) in figures.items()]

    def finish(name: str) -> float:
        rest = sorted((g for g in groups if g[0] != name), key=lambda g: -g[2])
        return rollout([next(g for g in groups if g[0] == name), *rest], [(0.0, B)] * 3, {B: 0.0})

    assert first == [min(figures, key=finish)]
    longest_first = finish("phi3")
    assert finish(first[0]) < longest_first  # better than starting with the longest queue
    # priority still comes first
    urgent = [
        want("tiny", 30, rank=HIGH),
        *(want(n, 30, rank=NORMAL) for n in figures if n != "tiny"),
    ]
    assert run(urgent, [], known=known, total=64, loads=1).loads == ["tiny"]


def test_rollout_loads_one_at_a_time_into_the_seat_that_frees_first() -> None:
    # two seats: a frees at 1 s, b at 5 s; the loader is busy until 2 s
    order = [("x", 1.0, 4.0), ("y", 0.5, 1.0), ("z", 2.0, 3.0)]
    # x: loads 2-3 in seat a, works to 7; y: loads 3-3.5 in seat b (free at 5)... waits:
    # seat b frees at 5, so y loads 5-5.5, works to 6.5; z takes the next free seat (6.5),
    # loads 6.5-8.5, works to 11.5
    assert rollout(order, [(1.0, B), (5.0, B)], {B: 2.0}) == 11.5


def test_plan_higher_ranked_group_keeps_memory_from_lower_ones() -> None:
    # 10 GiB usable: "top" (8) loads, "next" (4) no longer fits, "small" (2) does
    demand = [want("top", rank=HIGH), want("next"), want("small", rank=LOW)]
    result = run(demand, [], {"top": 8, "next": 4, "small": 2}, total=11, loads=3)
    assert result.loads == ["top", "small"]
    assert result.waits["next"] is WaitReason.MEMORY


def test_plan_respects_ollamas_loaded_model_cap() -> None:
    # three busy runners fill Ollama's seats; plenty of memory is free
    views = [view(n, in_flight=1, size_gb=1) for n in ("a", "b", "c")]
    demand = [want(n) for n in ("a", "b", "c")] + [want("d")]
    result = run(demand, views, {"d": 1}, total=64)
    assert result.loads == []
    assert result.waits["d"] is WaitReason.BUSY_SEATS
    assert not result.unloads


def test_plan_models_ollama_holds_for_others_take_seats_too() -> None:
    """A model loaded by another program counts under Ollama's cap: loading past it
    would make Ollama evict a model of its own choosing."""
    result = run([want("d")], [view("a", in_flight=1, size_gb=1)], {"d": 1}, total=64, foreign=2)
    assert result.loads == []
    assert result.waits["d"] is WaitReason.MODEL_CAP
    assert run([want("d")], [], {"d": 1}, total=64, foreign=2).loads == ["d"]


def test_plan_an_unloading_runner_still_holds_its_seat_until_ollama_drops_it() -> None:
    views = [view("a", in_flight=1), view("b", in_flight=1), view("gone", UNLOADING)]
    result = run([want("a"), want("b"), want("d")], views, {"d": 1}, total=64)
    assert result.loads == []
    assert result.unloads == {}
    assert result.waits == {"d": WaitReason.UNLOADING}


def test_plan_loads_when_a_seat_is_free() -> None:
    views = [view("a", in_flight=1), view("b", in_flight=1)]
    assert run([want("a"), want("b"), want("d")], views, {"d": 1}, total=64).loads == ["d"]


def test_plan_full_seats_evict_an_idle_runner_even_when_memory_is_free() -> None:
    views = [view("a", in_flight=1), view("idle1", used_ago=50), view("idle2", used_ago=100)]
    result = run([want("a"), want("d")], views, {"d": 1}, total=64)
    assert result.unloads == {"idle2": UnloadReason.ROOM}  # one seat is enough: the LRU one
    assert result.loads == []
    assert result.waits["d"] is WaitReason.MODEL_CAP


# ------------------------------------------------------------------------------ eviction


@pytest.mark.parametrize(("need_gb", "victims"), [(4, ["lru"]), (8, ["lru", "recent"])])
def test_plan_evicts_idle_runners_without_demand_least_recently_used_first(
    need_gb: float, victims: list[str]
) -> None:
    # 16 GiB, margin 1, three 5 GiB runners resident: 1 GiB left after margin
    views = [
        view("outranked", size_gb=5, used_ago=500),  # has one low job: not worth a reload
        view("recent", size_gb=5, used_ago=10),
        view("lru", size_gb=5, used_ago=200),
    ]
    demand = [want("outranked", rank=LOW), want("g", rank=HIGH)]
    result = run(demand, views, {"g": need_gb}, free=1)
    assert list(result.unloads) == victims
    assert set(result.unloads.values()) == {UnloadReason.ROOM}
    assert result.loads == []  # memory comes back only once the unloads finish
    assert result.waits["g"] is WaitReason.MEMORY


def test_plan_eviction_names_the_group_it_makes_room_for() -> None:
    result = run([want("g")], [view("old", size_gb=8)], {"g": 6}, total=10, free=2)
    [unload] = result.of(Unload)
    assert (unload.runner, unload.reason, unload.for_runner) == ("old", UnloadReason.ROOM, "g")


def test_plan_never_evicts_a_runner_with_jobs_in_flight_it_drains_it() -> None:
    views = [view("busy", in_flight=1, size_gb=12)]  # no waiting jobs of its own
    result = run([want("g", rank=HIGH)], views, {"g": 8})
    assert result.unloads == {}
    assert result.drains == {"busy": UnloadReason.ROOM}
    assert result.loads == []
    assert result.waits["g"] is WaitReason.MEMORY


@pytest.mark.parametrize("own_rank", [HIGH, NORMAL, -1])
def test_plan_never_displaces_a_runner_whose_demand_is_equal_or_better(own_rank: int) -> None:
    views = [view("loaded", size_gb=12, jobs_done=5)]
    demand = [want("loaded", 500, rank=own_rank), want("g", 50, rank=NORMAL, oldest=0)]
    result = run(demand, views, {"g": 8})
    assert result.unloads == {} and result.drains == {}
    assert "loaded" in result.dispatch
    assert result.waits["g"] is WaitReason.BUSY_SEATS


# ------------------------------------------------------------- the switch must pay


def slow(job_seconds: float, load_seconds: float = 1.0, size_gb: float = 12) -> RunnerFacts:
    return RunnerFacts(
        estimate_bytes=gb(size_gb), job_seconds=job_seconds, load_seconds=load_seconds
    )


@pytest.mark.parametrize(
    ("backlog", "job_seconds", "evicted"),
    [
        (1, 0.1, False),  # one short low job: finishing it beats a reload
        (10, 0.1, False),  # a second of low work: done before a reload would be
        (200, 0.1, True),  # a 20 s low backlog: the high job goes first
        (20, 1.0, True),  # likewise with longer jobs
    ],
)
def test_plan_a_high_job_overtakes_a_low_backlog_only_when_the_switch_pays(
    backlog: int, job_seconds: float, evicted: bool
) -> None:
    views = [view("loaded", size_gb=12, jobs_done=3)]
    demand = [want("loaded", backlog, rank=LOW), want("g", 1, rank=HIGH)]
    result = run(demand, views, {"g": 8}, known={"loaded": slow(job_seconds)})
    assert (result.unloads == {"loaded": UnloadReason.OUTRANKED}) is evicted
    assert ("loaded" in result.dispatch) is not evicted
    if evicted:
        [unload] = result.of(Unload)
        assert "gain" in unload.detail and "cost" in unload.detail


@pytest.mark.parametrize(
    ("arrival_rate", "evicted"),
    [
        (0.0, False),  # a short backlog and nothing more coming: finish it
        (5.0, False),  # half its capacity: the backlog still drains soon
        (10.0, True),  # fed as fast as it serves: it would never go idle
        (12.5, True),  # fed past its capacity: a backlog that only grows
    ],
)
def test_plan_a_runner_fed_as_fast_as_it_serves_never_goes_idle(
    arrival_rate: float, evicted: bool
) -> None:
    """A low-priority stream keeps its runner busy for ever: a high-priority job for
    another model must not wait for it to go idle, however short its queue looks."""
    loaded = RunnerView("loaded", B, READY, 1, NOW - 60, NOW, gb(12), 1, 50, None, arrival_rate)
    demand = [want("loaded", 3, rank=LOW), want("g", rank=HIGH)]
    result = run(demand, [loaded], {"g": 8}, known={"loaded": slow(0.1)})
    assert (result.drains == {"loaded": UnloadReason.OUTRANKED}) is evicted
    if evicted:
        assert "fed as fast" in result.of(Drain)[0].detail


def test_plan_in_a_mixed_priority_burst_a_loaded_runner_keeps_its_queue() -> None:
    """Every model has high, normal and low jobs; a loaded runner whose high jobs are done
    still has normal and low ones. Another model's high jobs outrank them, but evicting
    it would cost its jobs a reload and delay every model still waiting for a load: it
    finishes its queue (its normal and low jobs ride along)."""
    views = [view(n, size_gb=2, jobs_done=6) for n in ("a", "b", "c")]  # one slot each
    mixed = (6, 18, 6)
    demand = [want(n, counts=(0, 18, 6)) for n in ("a", "b", "c")]
    demand += [want(n, counts=mixed, oldest=NOW - 5) for n in ("d", "e", "f", "g", "h")]
    known = {n: slow(0.09, 1.2, size_gb=2) for n in "abcdefgh"}
    result = run(demand, views, {n: 2 for n in "defgh"}, total=8, free=1, known=known)
    assert result.unloads == {} and result.drains == {}
    assert result.dispatch == {"a": 1, "b": 1, "c": 1}
    assert all(result.waits[n] is WaitReason.BUSY_SEATS for n in "defgh")


def test_plan_the_reload_cost_counts_every_group_still_waiting_for_a_load() -> None:
    views = [view("loaded", size_gb=12, jobs_done=3)]
    base = [want("loaded", 40, rank=LOW), want("g", 1, rank=HIGH)]
    known = {"loaded": slow(0.1)}  # 4 s of low work
    assert run(base, views, {"g": 8}, known=known).unloads  # alone, the switch pays
    crowd = [*base, *(want(f"w{i}", 30, rank=NORMAL) for i in range(3))]
    estimates = {"g": 8, **{f"w{i}": 8 for i in range(3)}}
    assert run(crowd, views, estimates, known=known).unloads == {}  # others would wait


@pytest.mark.parametrize(
    ("loaded_ago", "jobs_done", "evicted"),
    [(5, 0, False), (9.99, 0, False), (10, 0, True), (5, 1, True)],
)
def test_plan_a_runner_with_demand_is_displaced_only_after_min_residency_or_a_finished_job(
    loaded_ago: float, jobs_done: int, evicted: bool
) -> None:
    views = [view("loaded", size_gb=12, loaded_ago=loaded_ago, jobs_done=jobs_done)]
    demand = [want("loaded", 200, rank=LOW), want("g", rank=HIGH)]
    result = run(demand, views, {"g": 8}, known={"loaded": slow(0.2)})
    assert (result.unloads == {"loaded": UnloadReason.OUTRANKED}) is evicted
    assert ("loaded" in result.dispatch) is not evicted


def test_plan_evicts_the_least_urgent_paying_runner_first() -> None:
    views = [view("normal", size_gb=7, jobs_done=1), view("low", size_gb=7, jobs_done=1)]
    demand = [want("normal", 300, rank=NORMAL), want("low", 300, rank=LOW), want("g", rank=HIGH)]
    known = {"normal": slow(0.5), "low": slow(0.5)}
    result = run(demand, views, {"g": 6}, known=known)
    assert result.unloads == {"low": UnloadReason.OUTRANKED}
    assert result.dispatch == {"normal": 1}


# -------------------------------------------------------------------------------- drains


def test_plan_drains_a_busy_paying_runner_instead_of_evicting_it() -> None:
    views = [view("busy", in_flight=2, size_gb=12, jobs_done=1)]
    demand = [want("busy", 200, rank=LOW), want("g", rank=HIGH)]
    result = run(demand, views, {"g": 8}, known={"busy": slow(0.2)})
    assert result.drains == {"busy": UnloadReason.OUTRANKED}
    assert "busy" not in result.dispatch  # stop feeding it so it goes idle
    assert result.unloads == {}
    assert result.waits["g"] is WaitReason.MEMORY


def test_plan_a_drained_runner_is_evicted_once_idle() -> None:
    demand = [want("busy", 200, rank=LOW), want("g", rank=HIGH)]
    known = {"busy": slow(0.2)}
    first = [view("busy", in_flight=2, size_gb=12, jobs_done=1)]
    assert run(demand, first, {"g": 8}, known=known).drains
    later = [view("busy", in_flight=0, size_gb=12, jobs_done=3)]  # its last jobs finished
    result = run(demand, later, {"g": 8}, known=known)
    assert result.unloads == {"busy": UnloadReason.OUTRANKED}
    assert "busy" not in result.dispatch


def test_plan_drains_just_enough_runners_least_urgent_first() -> None:
    # "g" needs one of the three seats: draining one runner is enough, the least urgent
    names = ("normal", "low_a", "low_b")
    views = [view(n, in_flight=1, size_gb=3, jobs_done=1, slots=2) for n in names]
    demand = [
        want("normal", 300, rank=NORMAL),
        want("low_a", 300, rank=LOW),
        want("low_b", 300, rank=LOW),
        want("g", rank=HIGH),
    ]
    known = {n: slow(0.5) for n in ("normal", "low_a", "low_b")}
    result = run(demand, views, {"g": 3}, known=known)
    assert len(result.drains) == 1 and set(result.drains) <= {"low_a", "low_b"}
    assert "normal" in result.dispatch


def test_plan_waits_for_memory_from_unloads_under_way() -> None:
    # 8 GiB are on their way back; an idle runner and a busy one are left alone
    views = [
        view("leaving", UNLOADING, size_gb=8),
        view("idle", size_gb=3),
        view("busy", in_flight=1, size_gb=3, slots=2),
    ]
    demand = [want("busy", 4, rank=LOW), want("g", rank=HIGH)]
    result = run(demand, views, {"g": 8}, free=1, max_loaded=5)
    assert result.loads == [] and result.unloads == {} and result.drains == {}
    assert result.dispatch == {"busy": 1}
    assert result.waits == {"g": WaitReason.UNLOADING}


def test_plan_unloads_planned_this_pass_count_as_memory_under_way() -> None:
    # "stale" expires this pass; "g" then waits for it rather than evicting "recent"
    views = [view("stale", size_gb=6, used_ago=400), view("recent", size_gb=6)]
    result = run([want("g")], views, {"g": 5}, total=13, free=1)
    assert result.unloads == {"stale": UnloadReason.IDLE}
    assert result.waits == {"g": WaitReason.UNLOADING}


# -------------------------------------------------------------------- runner options


def test_plan_another_runner_of_the_same_model_goes_first() -> None:
    """Ollama keeps one runner per model: jobs with num_ctx 16384 wait while the
    num_ctx 2048 runner is unloaded (it has nothing left to do)."""
    small, big = 'm|{"num_ctx":2048}', 'm|{"num_ctx":16384}'
    result = run([want(big)], [view(small, size_gb=1)], {big: 2}, total=64)
    assert result.unloads == {small: UnloadReason.RUNNER_OPTIONS}
    assert result.loads == []
    assert result.waits == {big: WaitReason.RUNNER_SWITCH}


def test_plan_a_runner_switch_waits_while_the_current_runner_has_its_own_work() -> None:
    small, big = 'm|{"num_ctx":2048}', 'm|{"num_ctx":16384}'
    views = [view(small, size_gb=1, jobs_done=2, slots=4)]
    result = run([want(small, 3), want(big)], views, {big: 2}, total=64)
    assert result.unloads == {} and result.dispatch == {small: 3}
    assert result.waits == {big: WaitReason.RUNNER_SWITCH}


# ------------------------------------------------------------------------ too large, other


def test_plan_fails_a_model_measured_larger_than_the_gpu_naming_the_sizes() -> None:
    huge = RunnerFacts(estimate_bytes=gb(10), evidence_bytes=gb(10), measured=True)
    result = run([want("huge"), want("ok")], [], {"ok": 1}, total=8, known=facts(huge=huge))
    [fail] = result.of(Fail)
    assert (fail.runner, fail.code) == ("huge", FailCode.MODEL_TOO_LARGE)
    assert "10240 MB" in fail.message  # what it needs
    assert "7168 MB" in fail.message  # what the GPU has after the margin
    assert "1024 MB" in fail.message  # the margin
    assert result.loads == ["ok"]
    assert "huge" not in result.waits


@pytest.mark.parametrize("size", [7.5, 10, 40])  # just over the room; over the GPU; far over
def test_plan_tries_a_model_estimated_larger_than_the_gpu_alone(size: float) -> None:
    """An estimate from the disk size is not a measurement: the model may fit after all,
    and Ollama runs a model larger than the GPU partly on the CPU, so it is loaded with
    the GPU to itself (the idle runner goes first), never failed unmeasured."""
    views = [view("idle", size_gb=2, used_ago=5)]
    result = run([want("big")], views, {"big": size}, total=8)
    assert not result.of(Fail)
    assert list(result.unloads) == ["idle"]  # room made: the GPU for it alone
    after = run([want("big")], [], {"big": size}, total=8)
    assert after.loads == ["big"]


@pytest.mark.parametrize(("need_gb", "failed"), [(7, False), (8, False), (8 + 1 / 1024, True)])
def test_plan_too_large_boundary_is_the_whole_gpu_for_a_measured_size(
    need_gb: float, failed: bool
) -> None:
    """A size measured at a load fails the model only beyond the whole GPU: within the
    safety margin it loaded before, so it is tried alone."""
    measured = RunnerFacts(estimate_bytes=gb(need_gb), evidence_bytes=gb(need_gb), measured=True)
    result = run([want("m")], [], total=8, free=2, known={"m": measured})
    assert bool(result.fails) is failed
    assert result.loads == []


def test_plan_a_raised_estimate_never_makes_a_model_impossible() -> None:
    """Failures may raise an estimate past the GPU; only the measured size can fail it.
    Raised past the GPU, it is planned as the whole GPU: everything else must go."""
    raised = RunnerFacts(estimate_bytes=gb(20), evidence_bytes=gb(2))
    result = run([want("m")], [view("other", size_gb=3)], known={"m": raised}, total=8)
    assert result.fails == {}
    assert result.unloads == {"other": UnloadReason.ROOM}


def test_plan_does_not_fail_models_when_the_gpu_size_is_unknown() -> None:
    # no NVML and no budget: total 0 -- loads wait, nothing fails
    result = run([want("m")], [], {"m": 1}, total=0)
    assert result.fails == {} and result.loads == []


def test_plan_respects_memory_held_by_another_program() -> None:
    # nothing of ours is loaded, yet NVML shows only 4 GiB free
    result = run([want("m")], [], {"m": 5}, total=16, free=4)
    assert result.loads == [] and result.fails == {} and result.unloads == {}
    assert result.waits == {"m": WaitReason.MEMORY}


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (RunnerFacts(estimate_bytes=None), WaitReason.SIZE_UNKNOWN),
        (RunnerFacts(estimate_bytes=gb(1), pulling=True), WaitReason.PULLING),
        (RunnerFacts(estimate_bytes=gb(1), blocked_until=NOW + 5), WaitReason.BACKOFF),
    ],
)
def test_plan_a_group_that_cannot_load_yet_waits_with_its_reason(
    entry: RunnerFacts, reason: WaitReason
) -> None:
    result = run([want("m")], [view("idle", size_gb=10)], known={"m": entry})
    assert result.loads == [] and result.fails == {} and result.unloads == {}
    assert result.waits == {"m": reason}


@pytest.mark.parametrize(("auto_pull", "action"), [(False, Fail), (True, Pull)])
def test_plan_a_model_ollama_lacks_fails_or_is_pulled(auto_pull: bool, action: type) -> None:
    missing = RunnerFacts(estimate_bytes=None, installed=False)
    result = run([want("m")], [], known={"m": missing}, config=settings(auto_pull=auto_pull))
    [decided] = [a for a in result.actions if isinstance(a, Fail | Pull)]
    assert isinstance(decided, action)
    if isinstance(decided, Fail):
        assert decided.code is FailCode.MODEL_NOT_FOUND


@pytest.mark.parametrize(
    ("used_ago", "in_flight", "has_demand", "state", "keep_alive", "expired"),
    [
        (300, 0, False, READY, None, True),
        (1000, 0, False, READY, None, True),
        (299, 0, False, READY, None, False),
        (1000, 1, False, READY, None, False),  # jobs in flight
        (1000, 0, True, READY, None, False),  # jobs waiting for it
        (1000, 0, False, LOADING, None, False),
        (1000, 0, False, UNLOADING, None, False),  # already leaving
        (5, 0, False, READY, 5.0, True),  # the last job's keep_alive: 5 s
        (4, 0, False, READY, 5.0, False),
        (0, 0, False, READY, 0.0, True),  # keep_alive 0: unload once idle
        (10**6, 0, False, READY, -1.0, False),  # negative: never for idleness
    ],
)
def test_plan_unloads_idle_runners_past_their_keep_alive(
    used_ago: float,
    in_flight: int,
    has_demand: bool,
    state: RunnerState,
    keep_alive: float | None,
    expired: bool,
) -> None:
    views = [view("m", state, in_flight=in_flight, used_ago=used_ago, keep_alive=keep_alive)]
    result = run([want("m")] if has_demand else [], views, total=64)
    assert (result.unloads == {"m": UnloadReason.IDLE}) is expired


def test_plan_with_nothing_to_do_is_empty() -> None:
    assert run([], [view("m", used_ago=5)]).actions == []
    assert run([], []).actions == []


# ----------------------------------------------------------------------- weights


def test_demand_weight_counts_each_priority_at_its_oldest_jobs_rank() -> None:
    d = want("m", counts=(2, 3, 4))
    assert demand_weight(d, 10.0) == 2 * 100 + 3 * 10 + 4 * 1
    assert demand_weight(d, 10.0, below=NORMAL) == 200  # only what outranks normal
    aged = Demand("m", 4, 0, NOW, (0, 0, 4), (None, None, 0))  # low jobs aged to high
    assert demand_weight(aged, 10.0) == 400


# ---------------------------------------------------------------- verdicts on outcomes


@pytest.mark.parametrize(
    ("kw", "verdict"),
    [
        ({"aborted": True}, JobVerdict.ABORTED),
        ({"reached": False}, JobVerdict.RELEASE),
        ({"attempts": 1}, JobVerdict.RETRY),
        ({"attempts": 3}, JobVerdict.FAIL),
        ({"transient": False}, JobVerdict.FAIL),
    ],
)
def test_after_job_error_retries_fails_or_gives_the_attempt_back(
    kw: dict[str, object], verdict: JobVerdict
) -> None:
    args: dict[str, object] = {
        "transient": True,
        "reached": True,
        "aborted": False,
        "out_of_memory": False,
        "attempts": 1,
        "max_attempts": 3,
        "delay": 2.0,
    }
    args.update(kw)
    decision = after_job_error(**args)  # type: ignore[arg-type]
    assert decision.verdict is verdict
    assert decision.delay == (2.0 if verdict is JobVerdict.RETRY else 0.0)


def test_after_job_error_out_of_memory_raises_the_estimate() -> None:
    decision = after_job_error(
        transient=True,
        reached=True,
        aborted=False,
        out_of_memory=True,
        attempts=1,
        max_attempts=3,
        delay=0.5,
    )
    assert decision.raise_estimate and decision.verdict is JobVerdict.RETRY


@pytest.mark.parametrize(
    ("failures", "not_found", "oom", "dropped", "fail_jobs", "raise_estimate"),
    [
        (1, False, False, False, False, False),
        (3, False, False, False, True, False),  # out of attempts
        (1, True, False, False, True, False),  # the model is missing: no point waiting
        (1, False, True, False, False, True),
        (0, False, False, True, False, True),  # loaded, then dropped at once by Ollama
    ],
)
def test_after_load_failure(
    failures: int,
    not_found: bool,
    oom: bool,
    dropped: bool,
    fail_jobs: bool,
    raise_estimate: bool,
) -> None:
    decision = after_load_failure(
        failures=failures,
        max_attempts=3,
        not_found=not_found,
        out_of_memory=oom,
        dropped=dropped,
        delay=1.5,
    )
    assert (decision.fail_jobs, decision.raise_estimate, decision.backoff) == (
        fail_jobs,
        raise_estimate,
        1.5,
    )


@pytest.mark.parametrize(
    ("attempt", "draw", "expected"), [(1, 1.0, 1.0), (3, 1.0, 4.0), (10, 1.0, 60.0), (3, 0.5, 2.0)]
)
def test_backoff_is_capped_exponential_with_full_jitter(
    attempt: int, draw: float, expected: float
) -> None:
    assert backoff_delay(attempt, 1.0, 60.0, draw) == expected


# -------------------------------------------------------------------- random invariants


def _random_scenario(
    rng: random.Random,
) -> tuple[list[Demand], list[RunnerView], BackendView, dict[str, RunnerFacts], PlannerSettings]:
    names = [f"m{i}" for i in range(8)]
    views = []
    for name in rng.sample(names, rng.randint(0, 5)):
        state = rng.choice([READY, READY, READY, LOADING, UNLOADING])
        views.append(
            RunnerView(
                runner=name,
                backend=B,
                state=state,
                in_flight=rng.randint(0, 5) if state is READY else 0,
                loaded_at=NOW - rng.uniform(0, 60),
                last_used=NOW - rng.uniform(0, 600),
                size_bytes=rng.randint(1, 8 * 1024) * MIB,
                slots=rng.randint(1, 4),
                jobs_done=rng.randint(0, 3),
            )
        )
    demand = []
    for name in rng.sample(names, rng.randint(0, len(names))):
        counts = (rng.randint(0, 9), rng.randint(0, 9), rng.randint(1, 9))
        ranks = tuple(None if not n else i - rng.randint(0, 2) for i, n in enumerate(counts))
        best = min(r for r in ranks if r is not None)
        oldest = NOW - rng.uniform(0, 300)
        demand.append(Demand(name, sum(counts), best, oldest, counts, ranks))  # type: ignore[arg-type]
    known = {
        name: RunnerFacts(
            estimate_bytes=rng.choice([None, rng.randint(1, 20 * 1024) * MIB]),
            job_seconds=rng.uniform(0.01, 2.0),
            load_seconds=rng.uniform(0.2, 5.0),
        )
        for name in names
    }
    total = rng.randint(0, 24 * 1024) * MIB
    b = BackendView(
        B,
        rng.random() > 0.05,
        total,
        rng.randint(0, total // MIB) * MIB,
        rng.randint(1, 5),
        rng.randint(1, 3),
        rng.randint(0, 1),
    )
    config = PlannerSettings(
        safety_margin_bytes=rng.choice([0, 512, 1024]) * MIB,
        max_concurrent_per_model=rng.randint(1, 8),
        min_residency=rng.choice([0.0, 10.0, 30.0]),
        keep_alive=rng.choice([0.0, 60.0, 300.0]),
    )
    return demand, views, b, known, config


def test_plan_invariants_hold_in_random_scenarios() -> None:
    rng = random.Random(20240601)
    for _ in range(3000):
        demand, views, b, known, config = _random_scenario(rng)
        result = plan(demand, views, [b], known, config, NOW)
        context = (demand, views, b, known, config, result.actions)
        waiting = {d.runner: d for d in demand}
        held = {v.runner: v for v in views}
        if not b.up:
            assert all(isinstance(a, Wait) for a in result.actions), context
            continue
        loading = [v for v in views if v.state is LOADING]
        budget = b.free_bytes - config.safety_margin_bytes - sum(v.size_bytes for v in loading)
        loads = result.loads
        # loads fit in free - margin - reservations, and respect every cap
        if loads:
            assert sum(known[m].estimate_bytes or 0 for m in loads) <= budget, context
            assert len(views) + b.foreign + len(loads) <= b.max_loaded, context
        assert all(known[m].estimate_bytes is not None and m not in held for m in loads), context
        assert len(loads) <= max(0, b.max_parallel_loads - len(loading)), context
        # never unload a runner with jobs in flight, nor one that is not ready
        leaving = {**result.unloads, **result.drains}
        for a in result.of(Unload):
            v = held[a.runner]
            assert v.state is READY and v.in_flight == 0, context
        for a in result.of(Drain):
            assert held[a.runner].state is READY and held[a.runner].in_flight > 0, context
        for name, reason in leaving.items():
            if reason is UnloadReason.OUTRANKED:  # a runner with waiting jobs: it pays
                assert name in waiting, context
                v = held[name]
                assert v.jobs_done > 0 or NOW - v.loaded_at >= config.min_residency, context
        # dispatch only to ready runners, within the room they have and what waits
        for a in result.of(Dispatch):
            v = held[a.runner]
            assert v.state is READY, context
            room = min(config.max_concurrent_per_model, v.slots) - v.in_flight
            assert 0 < a.count <= min(room, waiting[a.runner].waiting), context
            assert a.runner not in leaving, context
        # only runners that can never fit are failed
        for a in result.of(Fail):
            need = known[a.runner].estimate_bytes
            assert need is not None and need > b.total_bytes - config.safety_margin_bytes
            assert a.runner not in loads, context
        # every waiting runner not held gets exactly one decision
        for name in waiting:
            if name in held:
                continue
            decided = [a for a in result.actions if getattr(a, "runner", None) == name]
            decided = [a for a in decided if isinstance(a, Load | Wait | Fail | Pull)]
            assert len(decided) == 1, context


# ------------------------------------------------------------------ several backends


def on(node: str, v: RunnerView) -> RunnerView:
    return dataclasses.replace(v, backend=node)


def two_backends(views: list[RunnerView], **kw: object) -> list[BackendView]:
    """gpu0 and gpu1, 16 GiB each, free = total - what their views hold."""
    out = []
    for name in ("gpu0", "gpu1"):
        mine = [v for v in views if v.backend == name]
        b = backend(16, None, mine, **kw)  # type: ignore[arg-type]
        out.append(dataclasses.replace(b, name=name))
    return out


def hot(job_seconds: float = 1.0, load_seconds: float = 1.0) -> RunnerFacts:
    return RunnerFacts(estimate_bytes=gb(4), job_seconds=job_seconds, load_seconds=load_seconds)


def test_plan_a_long_queue_gets_a_second_copy_on_a_backend_with_a_free_seat() -> None:
    views = [on("gpu0", view("a"))]
    result = plan([want("a", 40)], views, two_backends(views), {"a": hot()}, settings(), NOW)
    assert Load("a", "gpu1") in result.actions


def test_plan_a_short_queue_gets_no_second_copy() -> None:
    views = [on("gpu0", view("a"))]
    result = plan([want("a", 2)], views, two_backends(views), {"a": hot()}, settings(), NOW)
    assert not result.of(Load)


def test_plan_idle_runners_nobody_waits_for_give_their_seats_to_a_second_copy() -> None:
    """gpu1's three seats hold idle runners without jobs: the least used go so that the
    long queue of ``a`` gets a copy there; the copy loads once they are gone."""
    views = [on("gpu0", view("a"))] + [
        on("gpu1", view(name, used_ago=ago)) for name, ago in (("x", 5), ("y", 50), ("z", 9))
    ]
    known = {"a": hot(), **{n: hot() for n in "xyz"}}
    result = plan([want("a", 40)], views, two_backends(views), known, settings(), NOW)
    assert result.unloads == {"y": UnloadReason.ROOM}
    assert not result.of(Load)
    # next pass: y is unloading; nothing more goes, nothing loads yet
    views = [v if v.runner != "y" else dataclasses.replace(v, state=UNLOADING) for v in views]
    result = plan([want("a", 38)], views, two_backends(views), known, settings(), NOW + 1)
    assert not result.unloads and not result.of(Load)
    # then y is gone: the copy loads
    views = [v for v in views if v.runner != "y"]
    result = plan([want("a", 36)], views, two_backends(views), known, settings(), NOW + 2)
    assert Load("a", "gpu1") in result.actions


def test_plan_runners_that_still_get_jobs_are_not_evicted_for_a_second_copy() -> None:
    """Idle runners with jobs lately count as warm until the queue has waited as long as
    their reload; runners with waiting jobs or in flight are never taken for a copy."""
    views = [
        on("gpu0", view("a")),
        on("gpu1", dataclasses.replace(view("x"), arrivals=3)),
        on("gpu1", view("y", in_flight=1)),
        on("gpu1", view("z")),
    ]
    known = {"a": hot(), **{n: hot() for n in "xyz"}}
    demand = [want("a", 40, oldest=NOW - 0.5), want("z", 1)]
    result = plan(demand, views, two_backends(views), known, settings(), NOW)
    assert not result.unloads and not result.drains
    assert Load("a", "gpu1") not in result.actions


@pytest.mark.parametrize(
    ("b_waiting", "first"),
    [
        (4, "a"),  # a's 40 s queue outlasts everything else: its copy loads first
        (400, "b"),  # b's own work is longer: b loads first, a's copy after
    ],
)
def test_plan_a_copy_of_the_runner_that_would_finish_last_loads_before_a_new_group(
    b_waiting: int, first: str
) -> None:
    views = [on("gpu0", view("a", in_flight=1)), on("gpu0", view("c")), on("gpu0", view("d"))]
    known = {"a": hot(), "b": hot(), "c": hot(), "d": hot()}
    demand = [want("a", 40), want("b", b_waiting)]
    result = plan(demand, views, two_backends(views), known, settings(), NOW)
    assert [(a.runner, a.backend) for a in result.of(Load)] == [(first, "gpu1")]


# ------------------------------------------------------------- downloads, pinned models


def test_plan_jobs_for_a_model_being_downloaded_wait_though_ollama_lacks_it() -> None:
    downloading = RunnerFacts(estimate_bytes=None, installed=False, pulling=True)
    for auto_pull in (False, True):
        result = run(
            [want("m")], [], known={"m": downloading}, config=settings(auto_pull=auto_pull)
        )
        assert result.waits == {"m": WaitReason.PULLING}
        assert not result.fails and not result.of(Pull)


def pinning(*runners: str, **kw: float) -> PlannerSettings:
    return dataclasses.replace(settings(**kw), pinned=frozenset(runners))


def test_plan_a_pinned_model_is_loaded_when_nothing_waits() -> None:
    result = run([], [], {"p": 2}, config=pinning("p"))
    assert result.loads == ["p"]


def test_plan_a_pinned_model_takes_only_free_memory_and_a_free_seat() -> None:
    # 16 GiB, an idle model holds 12: the pinned 4 GiB does not fit beside it (margin)
    result = run([], [view("x", size_gb=12, used_ago=10)], {"p": 4}, config=pinning("p"))
    assert result.loads == [] and result.unloads == {}
    # memory enough, but every seat under Ollama's cap is taken
    seats = [view(n, size_gb=1, used_ago=10) for n in "xyz"]
    result = run([], seats, {"p": 1}, config=pinning("p"))
    assert result.loads == [] and result.unloads == {}


def test_plan_a_waiting_group_is_placed_before_a_pinned_model() -> None:
    result = run([want("m")], [], {"m": 10, "p": 6}, config=pinning("p"))
    assert result.loads == ["m"]
    # once m no longer needs the room, p loads beside it
    result = run([], [view("m", size_gb=10)], {"p": 4}, config=pinning("p"))
    assert result.loads == ["p"]


@pytest.mark.parametrize(
    "entry",
    [
        RunnerFacts(estimate_bytes=gb(1), installed=False),
        RunnerFacts(estimate_bytes=gb(1), installed=None),
        RunnerFacts(estimate_bytes=gb(1), pulling=True),
        RunnerFacts(estimate_bytes=None),
        RunnerFacts(estimate_bytes=gb(1), blocked_until=NOW + 5),
    ],
)
def test_plan_a_pinned_model_not_on_disk_or_unknown_or_backing_off_is_not_loaded(
    entry: RunnerFacts,
) -> None:
    result = run([], [], known={"p": entry}, config=pinning("p"))
    assert result.actions == []


def test_plan_a_pinned_model_never_expires_idle() -> None:
    views = [view("p", used_ago=100_000), view("x", used_ago=100_000)]
    result = run([], views, config=pinning("p"))
    assert result.unloads == {"x": UnloadReason.IDLE}


@pytest.mark.parametrize(
    ("rank", "evicted"),
    [
        (HIGH, True),  # a higher-priority need
        (-1, True),  # normal work aged past high
        (NORMAL, False),
        (LOW, False),
    ],
)
def test_plan_a_pinned_model_is_evicted_only_for_a_higher_priority_need(
    rank: int, evicted: bool
) -> None:
    views = [view("p", size_gb=8)]
    result = run([want("m", rank=rank)], views, {"m": 10}, config=pinning("p"))
    if evicted:
        [unload] = result.of(Unload)
        assert unload == Unload("p", B, UnloadReason.PINNED, "m")
        assert result.waits == {"m": WaitReason.MEMORY}
    else:
        assert result.unloads == {} and result.drains == {}
        assert "m" in result.waits and result.loads == []


def test_plan_an_idle_unpinned_model_goes_before_a_pinned_one() -> None:
    views = [view("x", size_gb=6, used_ago=5), view("p", size_gb=6, used_ago=500)]
    result = run([want("m", rank=HIGH)], views, {"m": 8}, config=pinning("p"))
    assert result.unloads == {"x": UnloadReason.ROOM}


def test_plan_a_pinned_model_with_waiting_jobs_is_not_switched_out_for_normal_work() -> None:
    slow = RunnerFacts(estimate_bytes=gb(8), job_seconds=1.0, load_seconds=1.0)
    fast = RunnerFacts(estimate_bytes=gb(10), job_seconds=0.1, load_seconds=1.0)
    demand = [want("p", 200, rank=LOW), want("m", 50, rank=NORMAL)]
    views = [view("p", size_gb=8, jobs_done=5)]
    known = {"p": slow, "m": fast}
    # unpinned, the switch pays: p goes for m
    assert run(demand, views, known=known).unloads == {"p": UnloadReason.OUTRANKED}
    result = run(demand, views, known=known, config=pinning("p"))
    assert result.unloads == {} and result.drains == {}
    assert result.dispatch == {"p": 1}
