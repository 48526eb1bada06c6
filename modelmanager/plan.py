"""What the planner reads and what it decides: plain, immutable data. No I/O here.

The planner (:mod:`modelmanager.planner`) is a pure function from these inputs to a
:class:`Plan` of typed actions; the scheduler (:mod:`modelmanager.scheduler`) carries the
actions out. Every reason is an enum, so nothing downstream parses prose.

Keys: ``runner`` is a runner key (:mod:`modelmanager.runners`), ``backend`` a backend's
name. Memory is in **bytes**, times in **seconds** (``now`` and timestamps since the
epoch).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

# ------------------------------------------------------------------------------ inputs


class RunnerState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"


@dataclass(frozen=True)
class RunnerView:
    """One runner the manager holds on a backend (loading, ready or unloading)."""

    runner: str
    backend: str
    state: RunnerState
    in_flight: int
    loaded_at: float  # when it became ready (when its load started, while loading)
    last_used: float  # when its last job finished (or it became ready)
    size_bytes: int  # learned or estimated VRAM
    slots: int = 1  # requests Ollama runs at once for it
    jobs_done: int = 0  # jobs finished since it became ready
    keep_alive: float | None = None  # idle seconds its last job asked for (None: default)
    arrival_rate: float = 0.0  # new jobs per second for it lately (0: none, or too soon)
    arrivals: int = 0  # new jobs for it since it loaded, in the last ARRIVAL_WINDOW seconds


@dataclass(frozen=True)
class Demand:
    """What waits for one runner (from the pending-job index).

    ``counts`` are waiting jobs by priority (high, normal, low); ``ranks`` the effective
    rank (aging included; lower is more urgent) of the oldest job of each priority, None
    where none waits. ``rank`` is the best of them.
    """

    runner: str
    waiting: int
    rank: int
    oldest_submitted_at: float
    counts: tuple[int, int, int] = (0, 0, 0)
    ranks: tuple[int | None, int | None, int | None] = (None, None, None)


@dataclass(frozen=True)
class RunnerFacts:
    """What is known of a runner that waits to be loaded, or is held."""

    estimate_bytes: int | None  # None: size unknown until Ollama answers
    evidence_bytes: int | None = None  # the estimate before failures raised it
    measured: bool = False  # evidence_bytes was measured at a load (not from the disk size)
    load_seconds: float = 1.0  # learned, else a prior
    job_seconds: float = 0.1  # one job on one slot
    slots: int = 1
    installed: bool | None = True  # None: Ollama has not answered yet
    pulling: bool = False
    blocked_until: float = 0.0  # the last load failed: no new try before this
    backends: frozenset[str] | None = None  # where Ollama has the model (None: anywhere)


@dataclass(frozen=True)
class BackendView:
    """One Ollama server as the planner sees it.

    ``free_bytes`` is free memory now (NVML, which sees other programs, or a budget minus
    ``/api/ps``); memory of runners still loading is *not* yet in it. ``foreign`` counts
    models Ollama lists in ``/api/ps`` that the manager holds no runner for (they take a
    seat under Ollama's cap and their memory is in ``free_bytes``). ``devices`` are its
    GPUs' (total, free) bytes, so that loads are planned where Ollama places them
    (:mod:`modelmanager.rooms`).
    """

    name: str
    up: bool
    total_bytes: int
    free_bytes: int
    max_loaded: int
    max_parallel_loads: int = 1
    foreign: int = 0
    devices: tuple[tuple[int, int], ...] = ()  # (total, free) per GPU; () plans the totals
    draining: bool = False  # being removed: no new loads, no new jobs


@dataclass(frozen=True)
class PlannerSettings:
    safety_margin_bytes: int
    max_concurrent_per_model: int
    min_residency: float
    keep_alive: float
    unload_seconds: float = 0.5  # an unload plus the VRAM release after it
    weight_base: float = 10.0  # each priority level weighs this many times the next
    auto_pull: bool = False  # pull a model Ollama lacks instead of failing its jobs
    dispatch_ahead: int = 0  # jobs sent beyond a runner's slots, queued in Ollama
    pinned: frozenset[str] = frozenset()  # runner keys kept loaded (PINNED_MODELS)


# ----------------------------------------------------------------------------- actions


class UnloadReason(enum.StrEnum):
    IDLE = "idle"  # no job for its keep-alive
    ROOM = "room"  # no waiting jobs; another runner needs its memory or seat
    OUTRANKED = "outranked"  # has waiting jobs, but a more urgent group's switch pays
    RUNNER_OPTIONS = "runner_options"  # the same model is wanted with other runner options
    PINNED = "pinned"  # a pinned model, outranked by a higher-priority need


class WaitReason(enum.StrEnum):
    MEMORY = "memory"  # not enough free VRAM yet
    MODEL_CAP = "model_cap"  # Ollama's loaded-model cap (OLLAMA_MAX_LOADED_MODELS)
    LOAD_SLOT = "load_slot"  # Ollama loads one model at a time
    UNLOADING = "unloading"  # memory comes back once unloads under way finish
    RUNNER_SWITCH = "runner_switch"  # another runner of the same model must go first
    BUSY_SEATS = "busy_seats"  # seats hold work that is cheaper to finish than to move
    BACKOFF = "backoff"  # the last load failed; waiting out the retry delay
    SIZE_UNKNOWN = "size_unknown"  # no size yet (Ollama not answered)
    PULLING = "pulling"  # the model is being downloaded
    BACKEND_DOWN = "backend_down"  # Ollama cannot be reached


class FailCode(enum.StrEnum):
    MODEL_TOO_LARGE = "MODEL_TOO_LARGE"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"


@dataclass(frozen=True)
class Dispatch:
    runner: str
    backend: str
    count: int


@dataclass(frozen=True)
class Load:
    runner: str
    backend: str


@dataclass(frozen=True)
class Unload:
    runner: str
    backend: str
    reason: UnloadReason
    for_runner: str | None = None  # the group it makes room for
    detail: str = ""  # figures for the log (sizes, the switch's gain and cost)


@dataclass(frozen=True)
class Drain:
    """Stop feeding a busy runner; once its jobs in flight end it is unloaded."""

    runner: str
    backend: str
    reason: UnloadReason
    for_runner: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class Fail:
    runner: str
    code: FailCode
    message: str


@dataclass(frozen=True)
class Pull:
    runner: str
    backend: str


@dataclass(frozen=True)
class Wait:
    runner: str
    reason: WaitReason
    detail: str = ""


Action = Dispatch | Load | Unload | Drain | Fail | Pull | Wait


@dataclass
class Plan:
    """The actions of one pass, in the order they should be carried out."""

    actions: list[Action] = field(default_factory=list)

    def of(self, kind: type) -> list[Action]:
        return [a for a in self.actions if isinstance(a, kind)]

    @property
    def dispatch(self) -> dict[str, int]:
        return {a.runner: a.count for a in self.actions if isinstance(a, Dispatch)}

    @property
    def loads(self) -> list[str]:
        return [a.runner for a in self.actions if isinstance(a, Load)]

    @property
    def unloads(self) -> dict[str, UnloadReason]:
        return {a.runner: a.reason for a in self.actions if isinstance(a, Unload)}

    @property
    def drains(self) -> dict[str, UnloadReason]:
        return {a.runner: a.reason for a in self.actions if isinstance(a, Drain)}

    @property
    def waits(self) -> dict[str, WaitReason]:
        return {a.runner: a.reason for a in self.actions if isinstance(a, Wait)}

    @property
    def fails(self) -> dict[str, FailCode]:
        return {a.runner: a.code for a in self.actions if isinstance(a, Fail)}


# ------------------------------------------------------------- verdicts after outcomes


class JobVerdict(enum.StrEnum):
    """What becomes of a job whose request to Ollama failed."""

    RETRY = "retry"  # transient: back to the queue after a backoff, attempt used
    FAIL = "fail"  # permanent, or out of attempts
    RELEASE = "release"  # never reached Ollama: back to the queue, attempt given back
    ABORTED = "aborted"  # aborted on purpose: the store already holds its fate


@dataclass(frozen=True)
class JobDecision:
    verdict: JobVerdict
    delay: float = 0.0  # seconds before a retry may run
    raise_estimate: bool = False  # the answer says the model needs more memory


@dataclass(frozen=True)
class LoadDecision:
    """What follows a failed load: wait ``backoff`` seconds before trying again, fail the
    runner's waiting jobs, and/or raise its VRAM estimate."""

    backoff: float
    fail_jobs: bool
    raise_estimate: bool
