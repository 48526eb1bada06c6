"""The scheduler's ``tick(now)``, driven directly: no threads, no sleeps, no Ollama.

A recording fake stands in for the residency and job-runner workers (they record what
they were asked to do; the test then posts the event a worker would post), and a fake
backend returns the resource snapshots the test sets. The store is a real SQLite file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from config import Config
from modelmanager.errors import ModelNotFound, OutOfMemory, ServerBusy
from modelmanager.events import JobEnded, JobOutcome, LoadEnded, PullEnded, UnloadEnded
from modelmanager.model_registry import ModelRegistry
from modelmanager.models import GIB, Job, JobKind, JobStatus, LoadedModel, Priority
from modelmanager.models import ResourceSnapshot as Snap
from modelmanager.pending import PendingIndex
from modelmanager.plan import RunnerState
from modelmanager.runners import runner_key
from modelmanager.scheduler import Scheduler
from modelmanager.store import Store

T0 = 1_000_000.0
SMALL = "qwen2.5:0.5b"  # catalog: about 0.5 GiB
MID = "llama3.2:1b"  # about 1.6 GiB
BIG = "phi3:mini"  # about 2.7 GiB
K = runner_key


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeBackend:
    """Stands in for :class:`modelmanager.backend.Backend`: ``snap`` is what it reads."""

    name: str = "default"
    url: str = "http://ollama.test"
    max_loaded: int = 3
    num_parallel: int = 1
    source: str = "nvml"
    total: int = 8 * GIB
    other: int = 0  # memory another program holds
    loaded: list[LoadedModel] = field(default_factory=list)
    up: bool = True
    reads: int = 0
    clock: Clock | None = None

    def snapshot(self) -> Snap:
        self.reads += 1
        used = self.other + sum(m.vram_bytes for m in self.loaded)
        return Snap(
            taken_at=self.clock() if self.clock else T0,
            source=self.source,
            total_bytes=self.total,
            used_bytes=used,
            free_bytes=max(0, self.total - used),
            loaded=tuple(self.loaded) if self.up else (),
            backend_up=self.up,
            backend_error=None if self.up else "connection refused",
        )

    def hold(self, model: str, gib: float) -> None:
        self.loaded.append(
            LoadedModel(name=model, size_bytes=int(gib * GIB), vram_bytes=int(gib * GIB))
        )

    def drop(self, model: str) -> None:
        self.loaded = [m for m in self.loaded if m.name != model]


class Recorder:
    """The residency and job-runner ports: records every request."""

    def __init__(self) -> None:
        self.loads: list[tuple[str, str, dict[str, Any]]] = []
        self.keep_alives: list[float | None] = []
        self.unloads: list[str] = []
        self.pulls: list[str] = []
        self.downloading: set[str] = set()
        self.started: list[Job] = []
        self.aborted: list[str] = []
        self.released: list[str] = []
        self.expected = 0

    # residency
    def load(
        self,
        backend: Any,
        runner: str,
        label: str,
        name: str,
        options: Any,
        kind: str,
        estimate: int,
        *,
        keep_alive: float | None = None,
    ) -> None:
        self.loads.append((runner, name, dict(options)))
        self.keep_alives.append(keep_alive)

    def unload(self, backend: Any, runner: str, label: str, name: str) -> None:
        self.unloads.append(runner)

    # job runner
    def start(self, job: Job, backend: Any, label: str) -> None:
        self.started.append(job)
        self.expected = max(0, self.expected - 1)

    def expect(self, n: int) -> None:
        self.expected = max(0, self.expected + n)

    def in_flight(self) -> int:
        return len(self.started) + self.expected

    def abort(self, job_ids: list[str] | None = None) -> int:
        self.aborted.extend(job_ids or [])
        return len(job_ids or [])

    def release(self, node: str) -> int:
        self.released.append(node)
        return 0

    def in_flight_on(self, node: str) -> int:
        return 0


class Downloads:
    """The download port (AUTO_PULL): records each download in ``ports.pulls`` and
    counts it under way until the test takes it out of ``ports.downloading``."""

    def __init__(self, ports: Recorder) -> None:
        self.ports = ports

    def start(self, name: str, node: str, *, reason: str) -> None:
        self.ports.pulls.append(K(name))
        self.ports.downloading.add(K(name))

    def active(self, model: str) -> bool:
        return model in self.ports.downloading


@dataclass
class World:
    scheduler: Scheduler
    store: Store
    pending: PendingIndex
    backend: FakeBackend
    ports: Recorder
    clock: Clock
    tags: list[dict[str, Any]]
    seq: int = 0

    def submit(
        self, model: str, n: int = 1, priority: Priority = Priority.NORMAL, **payload: Any
    ) -> list[str]:
        jobs = []
        for _ in range(n):
            self.seq += 1
            jobs.append(
                Job(
                    id=f"j{self.seq}",
                    model=model,
                    kind=JobKind.GENERATE,
                    priority=priority,
                    payload={"prompt": "p", **payload},
                    submitted_at=self.clock.now,
                )
            )
        for job, _ in self.store.insert_jobs(jobs):
            self.pending.add(
                job.id, job.runner, job.priority, job.seq, job.submitted_at, name=job.model
            )
        return [j.id for j in jobs]

    def tick(self, advance: float = 0.0) -> Any:
        self.clock.now += advance
        return self.scheduler.tick(self.clock.now)

    def loaded(self, runner: str, gib: float, name: str | None = None) -> None:
        """The load of ``runner`` ended: Ollama lists it; the residency posts LoadEnded."""
        self.backend.hold(name or runner, gib)
        self.scheduler.post(LoadEnded(runner, self.backend.name, 1.0, int(gib * GIB)))

    def job_ended(self, job: Job, outcome: JobOutcome = JobOutcome.COMPLETE, **kw: Any) -> None:
        if outcome is JobOutcome.COMPLETE:
            self.store.complete(job.id, job.attempts, {"text": "ok"}, {}, self.clock.now)
        self.scheduler.post(JobEnded(job, self.backend.name, outcome, **kw))

    def state(self, runner: str) -> str | None:
        held = {r.runner: r for r in self.scheduler.snapshot().runners}
        return held[runner].state if runner in held else None


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock = Clock()
    store = Store(tmp_path / "jobs.db")
    tags: list[dict[str, Any]] = [
        {"name": SMALL, "size": 397_821_319},
        {"name": MID, "size": 1_321_098_329},
        {"name": BIG, "size": 2_176_178_913},
        {"name": "Big-Model:Q4", "size": 1_000_000_000},
    ]
    registry = ModelRegistry(store, multiplier=1.3, tags=lambda: list(tags), clock=clock)
    config = Config.load(
        environ={},
        overrides={"VRAM_SAFETY_MARGIN_MB": 512, "MIN_RESIDENCY": 0.0, "RETRY_BASE_SECONDS": 1.0},
    )
    pending = PendingIndex(config.AGING_SECONDS)
    backend = FakeBackend(clock=clock)
    ports = Recorder()
    scheduler = Scheduler(
        config,
        store=store,
        pending=pending,
        registry=registry,
        backends=[backend],  # type: ignore[list-item]
        residency=ports,  # type: ignore[arg-type]
        jobs=ports,  # type: ignore[arg-type]
        clock=clock,
        downloads=Downloads(ports),
    )
    yield World(scheduler, store, pending, backend, ports, clock, tags)
    store.close()


# ------------------------------------------------------------------ load, then dispatch


def test_tick_loads_a_waiting_runner_then_dispatches_once_it_is_ready(world: World) -> None:
    ids = world.submit(SMALL, 3)
    world.tick()
    assert [r for r, _, _ in world.ports.loads] == [K(SMALL)]
    assert world.state(K(SMALL)) == "loading"
    assert {world.store.get(i).status for i in ids} == {JobStatus.QUEUED}  # type: ignore[union-attr]
    world.tick()
    assert world.ports.started == []  # nothing runs before the load ends
    world.loaded(K(SMALL), 0.9, SMALL)
    world.tick()
    # one slot (OLLAMA_NUM_PARALLEL) and one job waiting in Ollama (DISPATCH_AHEAD)
    assert [j.id for j in world.ports.started] == ids[:2]
    world.job_ended(world.ports.started[0])
    world.tick()
    assert [j.id for j in world.ports.started] == ids[:3]


def test_tick_sends_the_runner_options_with_the_load(world: World) -> None:
    world.submit(SMALL, options={"num_ctx": 16384, "temperature": 0.1})
    world.tick()
    assert world.ports.loads == [(K(SMALL, {"num_ctx": 16384}), SMALL, {"num_ctx": 16384})]


def test_tick_loads_one_model_at_a_time(world: World) -> None:
    world.submit(SMALL)
    world.submit(MID)
    world.tick()
    assert len(world.ports.loads) == 1
    world.tick()
    assert len(world.ports.loads) == 1  # the second waits for the first load to end
    world.loaded(world.ports.loads[0][0], 1.0)
    world.tick()
    assert len(world.ports.loads) == 2


# -------------------------------------------------------- unloads finish when Ollama says


@pytest.mark.parametrize("source", ["nvml", "budget"])
def test_an_unload_is_finished_only_when_ollama_no_longer_lists_it(
    world: World, source: str
) -> None:
    """Ollama's cap is 3: with three models held and one unloading, a fourth waits until
    the unload ended (Ollama no longer lists it), whatever the memory source says."""
    world.backend.source = source
    world.backend.total = 64 * GIB
    for model in (SMALL, MID, BIG):
        world.submit(model)
        world.tick()
        world.loaded(K(model), 1.0, model)
        world.tick()
        world.job_ended(world.ports.started[-1])
        world.tick()
    world.scheduler.config.MODEL_KEEP_ALIVE = 0.0
    world.scheduler.settings = type(world.scheduler.settings)(
        **{**world.scheduler.settings.__dict__, "keep_alive": 0.0}
    )
    world.tick(1.0)
    assert len(world.ports.unloads) == 3  # idle: all three go
    world.tags.append({"name": "gemma:2b", "size": 1_678_456_656})
    world.submit("gemma:2b")
    world.scheduler.settings = type(world.scheduler.settings)(
        **{**world.scheduler.settings.__dict__, "keep_alive": 300.0}
    )
    world.tick()
    assert K("gemma:2b") not in [r for r, _, _ in world.ports.loads]
    # Ollama still lists them: the seats are still taken
    world.scheduler.post(UnloadEnded(K(SMALL), "default", gone=True))
    world.backend.drop(SMALL)
    world.tick()
    assert [r for r, _, _ in world.ports.loads][-1] == K("gemma:2b")


def test_models_ollama_holds_for_others_count_under_its_cap(world: World) -> None:
    world.backend.total = 64 * GIB
    for name in ("someone/else:1", "another:2", "third:3"):
        world.backend.hold(name, 1.0)  # loaded by another program, not by us
    world.scheduler._gone_at.update(
        {K(n): T0 + 10 for n in ("someone/else:1", "another:2", "third:3")}
    )
    world.submit(SMALL)
    world.tick()
    assert world.ports.loads == []
    assert world.scheduler.snapshot().waits == {SMALL: "model_cap"}


# --------------------------------------------------------------------- what Ollama says


def test_a_model_ollama_dropped_behind_our_back_is_forgotten_and_one_it_holds_is_managed(
    world: World,
) -> None:
    world.submit(SMALL)
    world.tick()
    world.loaded(K(SMALL), 0.9, SMALL)
    world.tick()
    world.clock.now += 1
    world.backend.drop(SMALL)
    world.backend.hold("LLAMA3.2:1b", 1.5)  # loaded by someone else, spelled differently
    world.scheduler._stale = True
    world.tick()
    assert world.state(K(SMALL)) is None
    assert world.state(K(MID)) == "ready"


def test_a_model_listed_under_another_spelling_is_the_same_runner(world: World) -> None:
    world.submit("Big-Model:q4")
    world.tick()
    assert world.ports.loads[0][1] == "Big-Model:Q4"  # the name as Ollama stores it
    world.loaded(K("big-model:Q4"), 1.3, "Big-Model:Q4")
    world.tick(1)
    world.scheduler._stale = True
    world.tick(1)
    assert world.state(K("BIG-MODEL:Q4")) == "ready"
    assert len(world.ports.started) == 1


# ------------------------------------------------------------------------- failures


def test_a_model_ollama_lacks_fails_its_jobs(world: World) -> None:
    [job] = world.submit("nope:1b")
    world.tick()
    stored = world.store.get(job)
    assert stored is not None and stored.status is JobStatus.FAILED
    assert stored.error_code == "MODEL_NOT_FOUND" and "ollama pull nope:1b" in (stored.error or "")


def test_a_model_measured_bigger_than_the_gpu_fails_at_once(world: World) -> None:
    world.tags.append({"name": "huge:70b", "size": 40 * GIB})
    world.scheduler.registry.learn_load(
        K("huge:70b"), ps_vram_bytes=40 * GIB, nvml_delta_bytes=None, load_seconds=9.0
    )  # measured at a load elsewhere (a bigger GPU, a smaller safety margin)
    [job] = world.submit("huge:70b")
    world.tick()
    stored = world.store.get(job)
    assert stored is not None and stored.error_code == "MODEL_TOO_LARGE"
    assert world.ports.loads == []


def test_a_model_estimated_bigger_than_the_gpu_is_loaded_alone(world: World) -> None:
    """Its disk size says it does not fit, but only a load can tell (Ollama would put
    part of it on the CPU): it is loaded, not failed unmeasured."""
    world.tags.append({"name": "huge:70b", "size": 40 * GIB})
    [job] = world.submit("huge:70b")
    world.tick()
    stored = world.store.get(job)
    assert stored is not None and stored.status is not JobStatus.FAILED
    assert [r for r, _, _ in world.ports.loads] == [K("huge:70b")]


def test_with_auto_pull_a_missing_model_is_pulled_and_its_jobs_wait(world: World) -> None:
    world.scheduler.settings = type(world.scheduler.settings)(
        **{**world.scheduler.settings.__dict__, "auto_pull": True}
    )
    [job] = world.submit("qwen2.5:3b")
    world.tick()
    assert world.ports.pulls == [K("qwen2.5:3b")]
    world.tick()
    assert world.ports.pulls == [K("qwen2.5:3b")]  # pulled once
    world.tags.append({"name": "qwen2.5:3b", "size": 1_929_912_432})
    world.ports.downloading.clear()
    world.scheduler.post(PullEnded(K("qwen2.5:3b"), "default"))
    world.tick()
    assert world.ports.loads[-1][0] == K("qwen2.5:3b")
    assert world.store.get(job).status is JobStatus.QUEUED  # type: ignore[union-attr]


def test_a_failed_load_backs_off_then_fails_the_jobs_after_max_attempts(world: World) -> None:
    [job] = world.submit(SMALL)
    for attempt in range(1, 4):
        world.tick(61)  # past any backoff
        assert len(world.ports.loads) == attempt
        error = OutOfMemory("CUDA error: out of memory")
        world.scheduler.post(LoadEnded(K(SMALL), "default", 0.3, error=error))
        world.tick()
        assert len(world.ports.loads) == attempt  # backing off
    stored = world.store.get(job)
    assert stored is not None and stored.status is JobStatus.FAILED
    assert stored.error_code == "OUT_OF_MEMORY"
    assert world.scheduler.snapshot().counters["ooms"] == 3


def test_a_load_of_a_model_ollama_no_longer_has_fails_at_once(world: World) -> None:
    [job] = world.submit(SMALL)
    world.tick()
    world.scheduler.post(LoadEnded(K(SMALL), "default", 0.1, error=ModelNotFound("gone")))
    world.tick()
    assert world.store.get(job).status is JobStatus.FAILED  # type: ignore[union-attr]


def test_a_model_ollama_drops_right_after_loading_gets_a_higher_estimate(world: World) -> None:
    world.submit(SMALL)
    world.tick()
    before = world.scheduler.registry.estimate(K(SMALL))
    world.scheduler.post(LoadEnded(K(SMALL), "default", 0.5, int(0.4 * GIB), dropped=True))
    world.tick()
    after = world.scheduler.registry.estimate(K(SMALL))
    assert before is not None and after is not None and after > before


# ---------------------------------------------------------------------------- jobs


def test_a_retried_job_comes_back_after_its_backoff(world: World) -> None:
    world.submit(SMALL)
    world.tick()
    world.loaded(K(SMALL), 0.9, SMALL)
    world.tick()
    [job] = world.ports.started
    world.store.requeue(job.id, job.attempts, "busy", "BACKEND_BUSY", T0 + 5)
    world.job_ended(job, JobOutcome.RETRY, not_before=T0 + 5)
    world.tick()
    assert len(world.ports.started) == 1  # not before its backoff ends
    world.tick(5)
    assert len(world.ports.started) == 2 and world.ports.started[1].id == job.id
    assert world.scheduler.snapshot().counters["retries"] == 1


def test_a_job_that_never_reached_ollama_waits_again_without_an_attempt(world: World) -> None:
    world.submit(SMALL)
    world.tick()
    world.loaded(K(SMALL), 0.9, SMALL)
    world.tick()
    [job] = world.ports.started
    world.store.release([job.id])
    world.job_ended(job, JobOutcome.RELEASED)
    world.tick()
    assert world.ports.started[-1].id == job.id and world.ports.started[-1].attempts == 1


def test_the_last_jobs_keep_alive_decides_how_long_the_idle_model_stays(world: World) -> None:
    world.submit(SMALL, keep_alive=2.0)
    world.tick()
    world.loaded(K(SMALL), 0.9, SMALL)
    world.tick()
    world.job_ended(world.ports.started[0])
    world.tick()  # the job's end is applied: idle from now
    world.tick(1.0)
    assert world.ports.unloads == []
    world.tick(1.5)
    assert world.ports.unloads == [K(SMALL)]


# -------------------------------------------------------------------- what the log says


def test_each_wait_is_logged_once_with_its_real_reason(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modelmanager.SCHEDULER")
    world.submit(SMALL)
    world.submit(MID)
    for _ in range(5):
        world.tick()
    first = world.ports.loads[0][1]
    second = SMALL if first == MID else MID
    lines = [r.getMessage() for r in caplog.records if "waits" in r.getMessage()]
    assert lines == [f"{second} waits for the load under way (Ollama loads one model at a time)"]
    world.backend.other = 7 * GIB  # another program takes the memory
    world.loaded(K(first), 0.5, first)
    world.scheduler._stale = True
    world.tick()
    world.tick()
    lines = [r.getMessage() for r in caplog.records if "waits" in r.getMessage()]
    assert len(lines) == 1  # a new reason soon after: not logged again yet
    world.scheduler._stale = True
    world.tick(6.0)  # still waiting, for another reason, 6 s later: one more line
    lines = [r.getMessage() for r in caplog.records if "waits" in r.getMessage()]
    assert len(lines) == 2 and lines[1].startswith(f"{second} waits for VRAM (needs")


def test_an_eviction_is_logged_with_its_reason(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modelmanager.SCHEDULER")
    world.backend.total = 4 * GIB
    world.submit(BIG)
    world.tick()
    world.loaded(K(BIG), 2.9, BIG)
    world.tick()
    world.job_ended(world.ports.started[0])
    world.tick()
    world.submit(MID)
    world.tick()
    assert world.ports.unloads == [K(BIG)]
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evicting")]
    assert line == f"evicting (no waiting jobs) {BIG}: room for {MID}"


def test_reads_see_the_published_snapshot_without_talking_to_ollama(world: World) -> None:
    world.submit(SMALL)
    world.tick()
    reads = world.backend.reads
    for _ in range(20):
        snap = world.scheduler.snapshot()
    assert world.backend.reads == reads
    assert [r.state for r in snap.runners] == [RunnerState.LOADING.value]


def test_a_backend_that_is_down_makes_groups_wait(world: World) -> None:
    world.backend.up = False
    world.submit(SMALL)
    world.tick()
    assert world.ports.loads == []
    assert world.scheduler.snapshot().waits == {SMALL: "backend_down"}
    assert not world.scheduler.snapshot().backend_up()


def test_server_busy_answers_are_transient(world: World) -> None:
    # the job runner decides with the planner's verdict; the scheduler only requeues
    assert ServerBusy("busy").transient


# ------------------------------------------------------------------------ pinned models


def test_a_pinned_model_is_loaded_with_no_job_and_ollama_told_to_keep_it(world: World) -> None:
    world.scheduler.settings = type(world.scheduler.settings)(
        **{**world.scheduler.settings.__dict__, "pinned": frozenset({K(MID)})}
    )
    world.submit(SMALL)
    world.tick()
    world.tick()
    assert [r for r, _, _ in world.ports.loads] == [K(SMALL)]  # waiting work goes first
    world.loaded(K(SMALL), 0.9, SMALL)
    world.tick()
    assert [r for r, _, _ in world.ports.loads] == [K(SMALL), K(MID)]
    assert world.ports.keep_alives == [None, -1]
    world.loaded(K(MID), 1.6, MID)
    world.tick(10_000)  # long past MODEL_KEEP_ALIVE
    assert K(MID) not in world.ports.unloads and world.state(K(MID)) == "ready"


def test_a_batch_that_came_at_once_is_a_backlog_not_a_stream(world: World) -> None:
    """Jobs submitted in one batch after their model loaded, then nothing: once no job
    has come for ARRIVAL_QUIET seconds the runner has no arrival rate, so the planner
    sees a finite queue to finish, not one fed for ever (which any higher-priority job
    would outrank at any cost)."""
    world.submit(SMALL, 1, Priority.LOW)
    world.tick()
    world.loaded(K(SMALL), 0.5, SMALL)
    world.tick(0.1)
    [held] = world.scheduler._held.values()
    world.clock.now += 0.1
    world.submit(SMALL, 50, Priority.LOW)  # one batch, after the load
    world.tick(1.95)  # ready for ARRIVAL_MIN_WINDOW, the batch still recent
    rate, count = world.scheduler._arrivals(held, world.clock.now)
    assert count == 50 and rate > 10
    world.tick(1.0)  # nothing new for ARRIVAL_QUIET
    rate, count = world.scheduler._arrivals(held, world.clock.now)
    assert count == 50 and rate == 0.0
    world.submit(SMALL, 1, Priority.LOW)  # a stream goes on: a rate again
    world.tick(0.1)
    rate, _ = world.scheduler._arrivals(held, world.clock.now)
    assert rate > 10


# ------------------------------------------------------------------ runner option keys


@pytest.mark.parametrize(
    ("options", "defaults", "expected"),
    [
        ({"main_gpu": 0}, None, {}),
        ({"num_gpu": -1, "num_batch": 512, "num_thread": 0}, None, {}),
        ({"use_mlock": False, "numa": False, "low_vram": False}, None, {}),
        ({"num_ctx": 4096}, None, {"num_ctx": 4096}),  # unknown model: kept
        ({"num_ctx": 4096}, {"num_ctx": 4096}, {}),
        ({"num_ctx": 4096.0, "main_gpu": 1}, {"num_ctx": 4096}, {"main_gpu": 1}),
        ({"num_ctx": 4096}, {"num_ctx": 8192}, {"num_ctx": 4096}),
        ({"num_batch": 512}, {"num_ctx": 4096, "num_batch": 1024}, {"num_batch": 512}),
        ({"use_mmap": True}, {"num_ctx": 4096}, {"use_mmap": True}),  # Ollama's is unset
        ({"use_mlock": 0}, None, {"use_mlock": 0}),  # not a bool: not the default
        ({"temperature": 0.1, "num_gpu": 99}, None, {"num_gpu": 99}),
    ],
)
def test_effective_options_drop_what_ollama_uses_anyway(
    options: dict[str, Any], defaults: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    from modelmanager.runners import effective_options

    assert effective_options(options, defaults) == expected


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        (None, {"num_ctx": 4096}),
        ('stop                           "<|end|>"', {"num_ctx": 4096}),
        ("num_ctx 2048", {"num_ctx": 2048}),
        ("num_ctx                        8192\ntemperature 0.7", {"num_ctx": 8192}),
        (
            "num_batch 1024\nuse_mmap false\nnum_thread x",
            {"num_ctx": 4096, "num_batch": 1024, "use_mmap": False},
        ),
    ],
)
def test_model_runner_defaults_read_the_modelfile_parameters(
    parameters: str | None, expected: dict[str, Any]
) -> None:
    from modelmanager.runners import model_runner_defaults

    assert model_runner_defaults(parameters, 4096) == expected
    # the server's default context unknown: num_ctx only where the Modelfile sets it
    unknown = {
        k: v for k, v in expected.items() if k != "num_ctx" or "num_ctx" in (parameters or "")
    }
    assert model_runner_defaults(parameters, None) == unknown
