"""The planner: every scheduling rule of DESIGN.md as a pure function call.

Each test builds demand, model views and a resource snapshot by hand and reads the Plan.
Memory is in GiB for readability; the planner itself works in bytes.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from modelmanager.models import GIB, MIB, ResourceSnapshot
from modelmanager.queue_manager import ModelDemand
from modelmanager.vram_scheduler import ModelView, PlannerSettings, Residency, plan

NOW = 10_000.0
READY, LOADING, UNLOADING = Residency.READY, Residency.LOADING, Residency.UNLOADING
HIGH, NORMAL, LOW = 0, 1, 2


def want(model: str, waiting: int = 1, rank: int = NORMAL, oldest: float = NOW - 1) -> ModelDemand:
    return ModelDemand(model=model, waiting=waiting, rank=rank, oldest_submitted_at=oldest)


def view(
    name: str,
    residency: Residency = READY,
    *,
    in_flight: int = 0,
    size_gb: float = 4,
    loaded_ago: float = 3600,
    used_ago: float = 1,
    slots: int | None = None,
    jobs_done: int = 0,
) -> ModelView:
    return ModelView(
        name=name,
        residency=residency,
        in_flight=in_flight,
        loaded_at=NOW - loaded_ago,
        last_used=NOW - used_ago,
        size_bytes=int(size_gb * GIB),
        slots=slots,
        jobs_done=jobs_done,
    )


def views_of(*vs: ModelView) -> dict[str, ModelView]:
    return {v.name: v for v in vs}


def snap(
    total_gb: float = 16,
    free_gb: float | None = None,
    views: Iterable[ModelView] = (),
    *,
    backend_up: bool = True,
) -> ResourceSnapshot:
    """A snapshot; by default free = total - what the READY/UNLOADING views hold."""
    total = int(total_gb * GIB)
    if free_gb is None:
        held = sum(v.size_bytes for v in views if v.residency is not LOADING)
        free = total - held
    else:
        free = int(free_gb * GIB)
    return ResourceSnapshot(
        taken_at=NOW,
        source="nvml",
        total_bytes=total,
        used_bytes=total - free,
        free_bytes=free,
        backend_up=backend_up,
    )


def settings(**kw: float) -> PlannerSettings:
    base: dict[str, float] = {
        "safety_margin_bytes": 1 * GIB,
        "max_concurrent_per_model": 4,
        "min_residency": 10.0,
        "keep_alive": 300.0,
        "max_loaded_models": 3,
        "max_parallel_loads": 1,
    }
    base.update(kw)
    return PlannerSettings(**base)  # type: ignore[arg-type]


def gb(n: float) -> int:
    return int(n * GIB)


def unloaded(result_unloads: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in result_unloads]


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
    vs = views_of(view("a", in_flight=in_flight))
    result = plan([want("a", waiting)], vs, snap(views=vs.values()), {}, settings(), NOW)
    assert result.dispatch.get("a") == expected


@pytest.mark.parametrize(
    ("slots", "in_flight", "expected"), [(1, 0, 1), (1, 1, None), (2, 1, 1), (8, 0, 4)]
)
def test_plan_dispatch_sends_no_more_than_ollama_runs_at_once(
    slots: int, in_flight: int, expected: int | None
) -> None:
    # the rest wait in our queue, where priorities apply, not inside Ollama's runner
    vs = views_of(view("a", in_flight=in_flight, slots=slots))
    result = plan([want("a", 10)], vs, snap(views=vs.values()), {}, settings(), NOW)
    assert result.dispatch.get("a") == expected


@pytest.mark.parametrize("residency", [LOADING, UNLOADING])
def test_plan_dispatch_only_to_ready_models(residency: Residency) -> None:
    vs = views_of(view("a", residency), view("b"))
    result = plan([want("a", 3), want("b", 3)], vs, snap(views=vs.values()), {}, settings(), NOW)
    assert result.dispatch == {"b": 3}
    assert "a" not in result.loads


def test_plan_does_nothing_when_backend_down() -> None:
    vs = views_of(view("ready"), view("stale", used_ago=10_000))
    result = plan(
        [want("ready", 5), want("new")],
        vs,
        snap(views=vs.values(), backend_up=False),
        {"new": gb(1)},
        settings(),
        NOW,
    )
    assert result.is_empty()
    assert not result.drain and not result.waiting_for_memory


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
def test_plan_loads_model_only_when_estimate_fits_free_minus_margin(
    free_gb: float, need_gb: float, loads: list[str]
) -> None:
    result = plan([want("m")], {}, snap(32, free_gb), {"m": gb(need_gb)}, settings(), NOW)
    assert result.loads == loads
    assert ("m" in result.waiting_for_memory) == (not loads)
    assert not result.fail


@pytest.mark.parametrize(("need_gb", "loads"), [(3, ["m"]), (3.5, [])])
def test_plan_loading_models_reserve_their_memory(need_gb: float, loads: list[str]) -> None:
    # "b" is loading: NVML does not show it yet, so its 6 GiB must be reserved by hand
    vs = views_of(view("b", LOADING, size_gb=6))
    result = plan(
        [want("m")], vs, snap(10, 10), {"m": gb(need_gb)}, settings(max_parallel_loads=2), NOW
    )
    assert result.loads == loads


@pytest.mark.parametrize(
    ("max_parallel", "already_loading", "expected"),
    [(1, 0, ["a"]), (2, 0, ["a", "b"]), (3, 0, ["a", "b", "c"]), (2, 1, ["a"]), (1, 1, [])],
)
def test_plan_loads_at_most_max_parallel_loads_at_once(
    max_parallel: int, already_loading: int, expected: list[str]
) -> None:
    vs = views_of(*(view(f"busy{i}", LOADING, size_gb=1) for i in range(already_loading)))
    demand = [want("a", oldest=1), want("b", oldest=2), want("c", oldest=3)]
    estimates = {"a": gb(1), "b": gb(1), "c": gb(1)}
    result = plan(
        demand,
        vs,
        snap(64),
        estimates,
        settings(max_parallel_loads=max_parallel, max_loaded_models=10),
        NOW,
    )
    assert result.loads == expected


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
def test_plan_loads_in_rank_order(demand: list[ModelDemand], expected: list[str]) -> None:
    estimates = {d.model: gb(1) for d in demand}
    wide = settings(max_parallel_loads=10, max_loaded_models=10)
    assert plan(demand, {}, snap(64), estimates, wide, NOW).loads == expected
    # with one load at a time only the top group loads
    one = settings(max_parallel_loads=1, max_loaded_models=10)
    assert plan(demand, {}, snap(64), estimates, one, NOW).loads == expected[:1]


@pytest.mark.parametrize(
    ("work", "expected"),
    [
        # a burst (same wait): the group with the most queued work starts first, so no
        # long group is left running alone at the end
        ({"small": 5.0, "big": 60.0}, ["big", "small"]),
        # equal work: oldest wait first
        ({"small": 5.0, "big": 5.0}, ["small", "big"]),
        # a wait longer than the difference in work wins
        ({"small": 5.0, "big": 40.0}, ["small", "big"]),
    ],
)
def test_plan_same_priority_ranks_by_oldest_wait_plus_queued_work(
    work: dict[str, float], expected: list[str]
) -> None:
    demand = [want("small", oldest=NOW - 40), want("big", oldest=NOW - 1)]
    estimates = {d.model: gb(1) for d in demand}
    wide = settings(max_parallel_loads=10, max_loaded_models=10)
    assert plan(demand, {}, snap(64), estimates, wide, NOW, work).loads == expected
    # priority still comes first
    urgent = [want("small", rank=HIGH, oldest=NOW), want("big", oldest=NOW - 1)]
    assert plan(urgent, {}, snap(64), estimates, wide, NOW, work).loads == ["small", "big"]


def test_plan_higher_ranked_group_keeps_memory_from_lower_ones() -> None:
    # 10 GiB usable: "top" (8) loads, "next" (4) no longer fits, "small" (2) does
    demand = [want("top", rank=HIGH), want("next"), want("small", rank=LOW)]
    estimates = {"top": gb(8), "next": gb(4), "small": gb(2)}
    result = plan(demand, {}, snap(11), estimates, settings(max_parallel_loads=3), NOW)
    assert result.loads == ["top", "small"]
    assert "next" in result.waiting_for_memory


def test_plan_respects_ollama_max_loaded_models() -> None:
    # three busy models fill Ollama's slots; plenty of memory is free
    vs = views_of(*(view(n, in_flight=1, size_gb=1) for n in ("a", "b", "c")))
    demand = [want(n) for n in ("a", "b", "c")] + [want("d")]
    result = plan(demand, vs, snap(64, views=vs.values()), {"d": gb(1)}, settings(), NOW)
    assert result.loads == []
    assert "d" in result.waiting_for_memory
    assert not result.unloads


def test_plan_unloading_model_still_holds_an_ollama_slot() -> None:
    vs = views_of(view("a", in_flight=1), view("b", in_flight=1), view("gone", UNLOADING))
    demand = [want("a"), want("b"), want("d")]
    result = plan(demand, vs, snap(64, views=vs.values()), {"d": gb(1)}, settings(), NOW)
    assert result.loads == []
    assert result.unloads == []
    assert result.waiting_for_memory == ["d"]


def test_plan_loads_when_a_slot_is_free() -> None:
    vs = views_of(view("a", in_flight=1), view("b", in_flight=1))
    demand = [want("a"), want("b"), want("d")]
    result = plan(demand, vs, snap(64, views=vs.values()), {"d": gb(1)}, settings(), NOW)
    assert result.loads == ["d"]


def test_plan_full_slots_evict_an_idle_model_even_when_memory_is_free() -> None:
    vs = views_of(view("a", in_flight=1), view("idle1", used_ago=50), view("idle2", used_ago=100))
    result = plan(
        [want("a"), want("d")], vs, snap(64, views=vs.values()), {"d": gb(1)}, settings(), NOW
    )
    assert unloaded(result.unloads) == ["idle2"]  # one slot is enough: the LRU one
    assert result.loads == []
    assert "d" in result.waiting_for_memory


# ------------------------------------------------------------------------------ eviction


@pytest.mark.parametrize(
    ("need_gb", "victims"),
    [
        (4, ["lru"]),
        (8, ["lru", "recent"]),
        (12, ["lru", "recent", "outranked"]),
    ],
)
def test_plan_evicts_idle_no_demand_models_first_least_recently_used_first(
    need_gb: float, victims: list[str]
) -> None:
    # 16 GiB, margin 1, three 5 GiB models resident: 1 GiB left after margin -> none usable
    vs = views_of(
        view("outranked", size_gb=5, used_ago=500),  # has low demand
        view("recent", size_gb=5, used_ago=10),
        view("lru", size_gb=5, used_ago=200),
    )
    demand = [want("outranked", rank=LOW), want("g", rank=HIGH)]
    result = plan(demand, vs, snap(16, 1, views=vs.values()), {"g": gb(need_gb)}, settings(), NOW)
    assert unloaded(result.unloads) == victims
    assert result.loads == []  # memory comes back only once the unloads finish
    assert "g" in result.waiting_for_memory
    if "outranked" in victims:
        assert "outranked" not in result.dispatch


def test_plan_eviction_reason_names_the_waiting_model() -> None:
    vs = views_of(view("old", size_gb=8))
    result = plan([want("g")], vs, snap(10, 2, views=vs.values()), {"g": gb(6)}, settings(), NOW)
    [(name, reason)] = result.unloads
    assert name == "old"
    assert "g" in reason


def test_plan_never_evicts_a_model_with_jobs_in_flight() -> None:
    vs = views_of(view("busy", in_flight=1, size_gb=12))  # no demand of its own
    result = plan(
        [want("g", rank=HIGH)], vs, snap(16, views=vs.values()), {"g": gb(8)}, settings(), NOW
    )
    assert result.unloads == []
    assert result.loads == []
    assert result.waiting_for_memory == ["g"]


@pytest.mark.parametrize(
    ("own_rank", "evicted"),
    [(HIGH, False), (NORMAL, False), (LOW, True), (-1, False)],
)
def test_plan_never_evicts_a_model_whose_demand_is_equal_or_better(
    own_rank: int, evicted: bool
) -> None:
    vs = views_of(view("loaded", size_gb=12))
    demand = [want("loaded", rank=own_rank), want("g", rank=NORMAL, oldest=0)]
    result = plan(demand, vs, snap(16, views=vs.values()), {"g": gb(8)}, settings(), NOW)
    assert (unloaded(result.unloads) == ["loaded"]) is evicted
    assert ("loaded" in result.dispatch) is not evicted


@pytest.mark.parametrize(
    ("loaded_ago", "jobs_done", "evicted"),
    [(5, 0, False), (9.99, 0, False), (10, 0, True), (5, 1, True)],
)
def test_plan_outranked_model_with_demand_evicted_after_min_residency_or_a_finished_job(
    loaded_ago: float, jobs_done: int, evicted: bool
) -> None:
    vs = views_of(view("loaded", size_gb=12, loaded_ago=loaded_ago, jobs_done=jobs_done))
    demand = [want("loaded", rank=LOW), want("g", rank=HIGH)]
    result = plan(demand, vs, snap(16, views=vs.values()), {"g": gb(8)}, settings(), NOW)
    assert (unloaded(result.unloads) == ["loaded"]) is evicted
    assert ("loaded" in result.dispatch) is not evicted


def test_plan_evicts_lowest_ranked_outranked_model_first() -> None:
    vs = views_of(view("normal", size_gb=7), view("low", size_gb=7))
    demand = [want("normal", rank=NORMAL), want("low", rank=LOW), want("g", rank=HIGH)]
    result = plan(demand, vs, snap(16, views=vs.values()), {"g": gb(6)}, settings(), NOW)
    assert unloaded(result.unloads) == ["low"]
    assert result.dispatch == {"normal": 1}


# -------------------------------------------------------------------------------- drains


def test_plan_drains_outranked_busy_model_instead_of_evicting_it() -> None:
    vs = views_of(view("busy", in_flight=2, size_gb=12))
    demand = [want("busy", 10, rank=LOW), want("g", rank=HIGH)]
    result = plan(demand, vs, snap(16, views=vs.values()), {"g": gb(8)}, settings(), NOW)
    assert result.drain == {"busy"}
    assert "busy" not in result.dispatch  # stop feeding it so it goes idle
    assert result.unloads == []
    assert result.waiting_for_memory == ["g"]


@pytest.mark.parametrize("own_rank", [HIGH, NORMAL])
def test_plan_does_not_drain_a_model_it_does_not_outrank(own_rank: int) -> None:
    vs = views_of(view("busy", in_flight=2, size_gb=12))
    demand = [want("busy", 10, rank=own_rank), want("g", rank=NORMAL)]
    result = plan(demand, vs, snap(16, views=vs.values()), {"g": gb(8)}, settings(), NOW)
    assert result.drain == set()
    assert result.dispatch == {"busy": 2}


def test_plan_drain_needs_no_min_residency_the_model_finishes_its_batch() -> None:
    # loaded 1 s ago and running its first jobs: a higher-priority group may stop feeding
    # it at once; it is evicted when those jobs are done, not MIN_RESIDENCY later
    vs = views_of(view("busy", in_flight=2, size_gb=12, loaded_ago=1))
    demand = [want("busy", 10, rank=LOW), want("g", rank=HIGH)]
    result = plan(demand, vs, snap(16, views=vs.values()), {"g": gb(8)}, settings(), NOW)
    assert result.drain == {"busy"}
    done = views_of(view("busy", size_gb=12, loaded_ago=2, jobs_done=2))
    result = plan(demand, done, snap(16, views=done.values()), {"g": gb(8)}, settings(), NOW)
    assert unloaded(result.unloads) == ["busy"]


def test_plan_drains_just_enough_models_lowest_ranked_first() -> None:
    # "g" needs one of the three seats: draining one model is enough, the least urgent
    vs = views_of(
        view("normal", in_flight=1, size_gb=3),
        view("low_old", in_flight=1, size_gb=3),
        view("low_new", in_flight=1, size_gb=3),
    )
    demand = [
        want("normal", 5, rank=NORMAL),
        want("low_old", 5, rank=LOW, oldest=NOW - 50),
        want("low_new", 5, rank=LOW, oldest=NOW - 5),
        want("g", rank=HIGH),
    ]
    result = plan(demand, vs, snap(16, views=vs.values()), {"g": gb(3)}, settings(), NOW)
    assert result.drain == {"low_new"}
    assert result.dispatch == {"normal": 3, "low_old": 3}


def test_plan_drained_model_is_evicted_once_idle() -> None:
    demand = [want("busy", 10, rank=LOW), want("g", rank=HIGH)]
    first = views_of(view("busy", in_flight=2, size_gb=12))
    assert plan(demand, first, snap(16, views=first.values()), {"g": gb(8)}, settings(), NOW).drain
    # next pass: its last jobs finished
    later = views_of(view("busy", in_flight=0, size_gb=12))
    result = plan(demand, later, snap(16, views=later.values()), {"g": gb(8)}, settings(), NOW)
    assert unloaded(result.unloads) == ["busy"]
    assert "busy" not in result.dispatch


def test_plan_drain_also_stops_feeding_idle_outranked_models_it_counts_on() -> None:
    # "g" needs both 6 GiB models gone: "idle" could go now, "busy" first has to drain.
    # Feeding "idle" again would make it busy by the time "busy" is idle: the two would
    # take turns and "g" would wait until their queues ran dry.
    vs = views_of(view("idle", size_gb=6), view("busy", in_flight=1, size_gb=6))
    demand = [want("idle", 5, rank=LOW), want("busy", 5, rank=LOW), want("g", rank=HIGH)]
    result = plan(demand, vs, snap(13, 1, views=vs.values()), {"g": gb(11)}, settings(), NOW)
    assert "busy" in result.drain
    assert "idle" not in result.dispatch
    assert "busy" not in result.dispatch


def test_plan_waits_for_memory_from_unloads_under_way() -> None:
    # 8 GiB are on their way back; an idle model and a drainable one must be left alone
    vs = views_of(
        view("leaving", UNLOADING, size_gb=8),
        view("idle", size_gb=3),
        view("busy", in_flight=1, size_gb=3),
    )
    demand = [want("busy", 4, rank=LOW), want("g", rank=HIGH)]
    result = plan(
        demand,
        vs,
        snap(16, 1, views=vs.values()),
        {"g": gb(8)},
        settings(max_loaded_models=5),
        NOW,
    )
    assert result.loads == []
    assert result.unloads == []
    assert result.drain == set()
    assert result.dispatch == {"busy": 3}
    assert result.waiting_for_memory == ["g"]


def test_plan_unloads_planned_this_pass_count_as_memory_under_way() -> None:
    # "stale" expires this pass; "g" then waits for it rather than evicting "recent"
    vs = views_of(view("stale", size_gb=6, used_ago=400), view("recent", size_gb=6))
    result = plan([want("g")], vs, snap(13, 1, views=vs.values()), {"g": gb(5)}, settings(), NOW)
    assert unloaded(result.unloads) == ["stale"]
    assert result.waiting_for_memory == ["g"]


# ------------------------------------------------------------------------ too large, other


def test_plan_fails_a_model_larger_than_the_gpu_naming_the_sizes() -> None:
    result = plan(
        [want("huge"), want("ok")], {}, snap(8), {"huge": gb(10), "ok": gb(1)}, settings(), NOW
    )
    [(model, reason)] = result.fail
    assert model == "huge"
    assert "huge" in reason
    assert "10240 MB" in reason  # what it needs
    assert "7168 MB" in reason  # what the GPU has after the margin
    assert "1024 MB" in reason  # the margin
    assert result.loads == ["ok"]
    assert "huge" not in result.waiting_for_memory


@pytest.mark.parametrize(("need_gb", "failed"), [(7, False), (7 + 1 / 1024, True)])
def test_plan_too_large_boundary_is_total_minus_margin(need_gb: float, failed: bool) -> None:
    result = plan([want("m")], {}, snap(8, 2), {"m": gb(need_gb)}, settings(), NOW)
    assert bool(result.fail) is failed
    assert result.loads == []


def test_plan_does_not_fail_models_when_gpu_size_is_unknown() -> None:
    # no NVML and no budget: total 0 -- loads wait, nothing fails
    result = plan([want("m")], {}, snap(0), {"m": gb(1)}, settings(), NOW)
    assert result.fail == []
    assert result.loads == []


def test_plan_respects_memory_held_by_another_program() -> None:
    # nothing of ours is loaded, yet NVML shows only 4 GiB free
    result = plan([want("m")], {}, snap(16, 4), {"m": gb(5)}, settings(), NOW)
    assert result.loads == []
    assert result.fail == []
    assert result.unloads == []
    assert result.waiting_for_memory == ["m"]


@pytest.mark.parametrize("estimates", [{"m": None}, {}])
def test_plan_unknown_estimate_does_not_load(estimates: dict[str, int | None]) -> None:
    vs = views_of(view("idle", size_gb=10))
    result = plan([want("m")], vs, snap(16, views=vs.values()), estimates, settings(), NOW)
    assert result.loads == []
    assert result.fail == []
    assert result.unloads == []


@pytest.mark.parametrize(
    ("used_ago", "in_flight", "has_demand", "residency", "expired"),
    [
        (300, 0, False, READY, True),
        (1000, 0, False, READY, True),
        (299, 0, False, READY, False),
        (1000, 1, False, READY, False),  # jobs in flight
        (1000, 0, True, READY, False),  # jobs waiting for it
        (1000, 0, False, LOADING, False),
        (1000, 0, False, UNLOADING, False),  # already leaving
    ],
)
def test_plan_unloads_idle_models_past_keep_alive(
    used_ago: float, in_flight: int, has_demand: bool, residency: Residency, expired: bool
) -> None:
    vs = views_of(view("m", residency, in_flight=in_flight, used_ago=used_ago))
    demand = [want("m")] if has_demand else []
    result = plan(demand, vs, snap(64, views=vs.values()), {}, settings(), NOW)
    assert (unloaded(result.unloads) == ["m"]) is expired
    if expired:
        assert "idle" in result.unloads[0][1]


def test_plan_with_nothing_to_do_is_empty() -> None:
    vs = views_of(view("m", used_ago=5))
    assert plan([], vs, snap(16, views=vs.values()), {}, settings(), NOW).is_empty()
    assert plan([], {}, snap(16), {}, settings(), NOW).is_empty()


# -------------------------------------------------------------------- random invariants


def _random_scenario(
    rng: random.Random,
) -> tuple[
    list[ModelDemand],
    dict[str, ModelView],
    ResourceSnapshot,
    dict[str, int | None],
    PlannerSettings,
]:
    names = [f"m{i}" for i in range(8)]
    vs: dict[str, ModelView] = {}
    for name in rng.sample(names, rng.randint(0, 5)):
        residency = rng.choice([READY, READY, READY, LOADING, UNLOADING])
        vs[name] = ModelView(
            name=name,
            residency=residency,
            in_flight=rng.randint(0, 5) if residency is READY else 0,
            loaded_at=NOW - rng.uniform(0, 60),
            last_used=NOW - rng.uniform(0, 600),
            size_bytes=rng.randint(1, 8 * 1024) * MIB,
        )
    demand = [
        ModelDemand(
            model=name,
            waiting=rng.randint(1, 30),
            rank=rng.randint(-2, 2),
            oldest_submitted_at=NOW - rng.uniform(0, 300),
        )
        for name in rng.sample(names, rng.randint(0, len(names)))
    ]
    estimates: dict[str, int | None] = {
        name: rng.choice([None, rng.randint(1, 20 * 1024) * MIB]) for name in names
    }
    total = rng.randint(0, 24 * 1024) * MIB
    snapshot = ResourceSnapshot(
        taken_at=NOW,
        source="nvml",
        total_bytes=total,
        used_bytes=0,
        free_bytes=rng.randint(0, total // MIB) * MIB,
        backend_up=rng.random() > 0.05,
    )
    config = PlannerSettings(
        safety_margin_bytes=rng.choice([0, 512, 1024]) * MIB,
        max_concurrent_per_model=rng.randint(1, 8),
        min_residency=rng.choice([0.0, 10.0, 30.0]),
        keep_alive=rng.choice([0.0, 60.0, 300.0]),
        max_loaded_models=rng.randint(1, 5),
        max_parallel_loads=rng.randint(1, 3),
    )
    return demand, vs, snapshot, estimates, config


def test_plan_invariants_hold_in_random_scenarios() -> None:
    rng = random.Random(20240601)
    for _ in range(3000):
        demand, vs, snapshot, estimates, config = _random_scenario(rng)
        result = plan(demand, vs, snapshot, estimates, config, NOW)
        context = (demand, vs, snapshot, estimates, config, result)
        waiting = {d.model: d.waiting for d in demand}
        if not snapshot.backend_up:
            assert result.is_empty(), context
            continue
        loading = [v for v in vs.values() if v.residency is LOADING]
        budget = (
            snapshot.free_bytes - config.safety_margin_bytes - sum(v.size_bytes for v in loading)
        )
        # loads fit in free - margin - reservations, and respect every cap
        if result.loads:
            assert sum(estimates[m] or 0 for m in result.loads) <= budget, context
        assert all(estimates[m] is not None and m not in vs for m in result.loads), context
        assert len(result.loads) <= max(0, config.max_parallel_loads - len(loading)), context
        if result.loads:
            assert len(vs) + len(result.loads) <= config.max_loaded_models, context
        # never unload a model with jobs in flight, nor one that is not ready
        for name, _ in result.unloads:
            assert vs[name].residency is READY and vs[name].in_flight == 0, context
            if name in waiting:
                assert NOW - vs[name].loaded_at >= config.min_residency, context
        assert len({n for n, _ in result.unloads}) == len(result.unloads), context
        # dispatch only to ready models, within the room they have and what waits
        for name, n in result.dispatch.items():
            v = vs[name]
            assert v.residency is READY, context
            assert 0 < n <= min(config.max_concurrent_per_model - v.in_flight, waiting[name])
            assert name not in result.drain, context
            assert name not in {u for u, _ in result.unloads}, context
        # only models that can never fit are failed
        for name, _ in result.fail:
            need = estimates[name]
            assert need is not None and need > snapshot.total_bytes - config.safety_margin_bytes
            assert name not in result.loads, context
