"""Runners (loaded models) and the requests waiting for one: the scheduler's data.

A :class:`Runner` is one loaded model as Ollama's ``runnerRef`` is: its load-time
options, slots, reference count and keep_alive. A :class:`Pending` request waits in the
FIFO queue until the scheduler thread attaches it to a runner or fails it. All mutable
fields are guarded by the simulator's condition variable.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .catalog import CUDA_CONTEXT_BYTES, DEFAULT_NUM_BATCH, DEFAULT_NUM_CTX, MIB, ModelSpec
from .wire import ApiError, go_quote

LOADING, READY, RELEASING, GONE, CRASHED = "loading", "ready", "releasing", "gone", "crashed"


class RunnerCrashed(Exception):
    """The runner serving this request died (out of memory caused by another program)."""


_INT_OPTIONS = frozenset(
    {"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep", "seed"}
    | {"num_predict", "top_k", "repeat_last_n"}
)
_FLOAT_OPTIONS = frozenset(
    {"temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty"}
    | {"frequency_penalty"}
)
_BOOL_OPTIONS = frozenset({"use_mmap", "use_mlock", "numa", "low_vram"})


@dataclass(frozen=True)
class RunnerOptions:
    """The load-time options; any difference from the loaded runner's forces a reload."""

    num_ctx: int = DEFAULT_NUM_CTX
    num_batch: int = DEFAULT_NUM_BATCH
    num_gpu: int = -1
    main_gpu: int = 0
    use_mmap: bool | None = None
    num_thread: int = 0

    def needs_reload(self, new: RunnerOptions) -> bool:
        """Ollama's ``needsReload`` on options (``server/sched.go``, v0.21): both sides
        have the defaults filled in (``api.DefaultOptions``), so a request that spells out
        a default value (``main_gpu`` 0, ``num_ctx`` 4096) matches the default runner; a
        negative ``num_gpu`` ("automatic", not only -1) in the request is ignored."""
        return (
            self.num_ctx != new.num_ctx
            or self.num_batch != new.num_batch
            or (new.num_gpu >= 0 and self.num_gpu != new.num_gpu)
            or self.main_gpu != new.main_gpu
            or self.use_mmap != new.use_mmap
            or self.num_thread != new.num_thread
        )


def parse_options(options: dict[str, Any] | None) -> tuple[RunnerOptions, dict[str, Any]]:
    """Runner options plus all options by name. A wrong type is a 500, as in Ollama
    (``Options.FromMap`` fails inside the scheduling path)."""
    values: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if value is None:
            continue
        if key in _INT_OPTIONS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ApiError(500, f"option {go_quote(key)} must be of type integer")
            values[key] = int(value)
        elif key in _FLOAT_OPTIONS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ApiError(500, f"option {go_quote(key)} must be of type float32")
            values[key] = float(value)
        elif key in _BOOL_OPTIONS:
            if not isinstance(value, bool):
                raise ApiError(500, f"option {go_quote(key)} must be of type boolean")
            values[key] = value
        else:
            values[key] = value  # unknown keys: logged and ignored by Ollama
    runner = RunnerOptions(
        num_ctx=values.get("num_ctx", DEFAULT_NUM_CTX),
        num_batch=values.get("num_batch", DEFAULT_NUM_BATCH),
        num_gpu=values.get("num_gpu", -1),
        main_gpu=values.get("main_gpu", 0),
        use_mmap=values.get("use_mmap"),
        num_thread=values.get("num_thread", 0),
    )
    return runner, values


@dataclass(eq=False)
class Runner:
    """One loaded model. All fields are guarded by the simulator's condition variable.

    ``name`` is the stored name of the model that loaded it (what /api/ps lists): Ollama
    keys runners by the model's weights file, so a copy of a loaded model uses this same
    runner. ``session`` is the keep_alive in seconds (unscaled; ``inf`` forever). ``size``
    and ``size_vram`` are bytes as /api/ps reports them (summed over GPUs); ``parts`` says
    where ``size_vram`` lies: ``(gpu, bytes)`` per GPU it uses (see :mod:`.gpu`), each of
    them also holding a CUDA context. ``counted`` means its memory is really allocated on
    the GPUs (false for a load doomed to run out of memory). ``generating`` counts the
    requests computing on it now.
    """

    spec: ModelSpec
    name: str
    opts: RunnerOptions
    parallel: int
    size: int
    size_vram: int
    session: float
    pid: int
    seq: int
    token_seconds: float
    state: str = LOADING
    counted: bool = False
    refcount: int = 0
    active: int = 0
    waiters: deque[object] = field(default_factory=deque)
    expiring: bool = False
    expire_reason: str = ""
    idle_deadline: float | None = None
    expires_wall: float | None = None
    release_at: float = 0.0
    parts: tuple[tuple[int, int], ...] = ()
    generating: int = 0

    def bytes_on(self, gpu: int) -> int:
        """Device memory the runner process holds on GPU ``gpu``: its part of
        ``size_vram`` there plus a CUDA context; 0 on a GPU it does not use."""
        return sum(part + CUDA_CONTEXT_BYTES for i, part in self.parts if i == gpu)

    def mb_on(self, gpu: int) -> int:
        """``bytes_on(gpu)`` rounded up to whole MiB, as NVML shows per process."""
        return -(-self.bytes_on(gpu) // MIB)

    @property
    def gpus(self) -> tuple[int, ...]:
        """The GPUs the runner uses."""
        return tuple(i for i, _ in self.parts)

    @property
    def gpu_bytes(self) -> int:
        """Device memory the runner process holds on all its GPUs."""
        return sum(self.bytes_on(i) for i in self.gpus)

    @property
    def gpu_mb(self) -> int:
        """MiB the runner holds on all its GPUs, each rounded up as NVML shows it."""
        return sum(self.mb_on(i) for i in self.gpus)

    @property
    def context_length(self) -> int:
        """The per-slot context /api/ps reports: ``num_ctx`` clamped to training."""
        return self.spec.effective_ctx(self.opts.num_ctx)


@dataclass(eq=False)
class Pending:
    """A request waiting in the scheduler's FIFO queue for a runner of ``spec``."""

    spec: ModelSpec
    name: str
    opts: RunnerOptions
    keep_alive: float | None
    runner: Runner | None = None
    error: ApiError | None = None
    cancelled: bool = False
