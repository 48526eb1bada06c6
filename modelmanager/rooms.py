"""Room on a backend as one planning pass sees it: memory per GPU, seats, load slots.

Ollama places a model that fits entirely on one GPU on the GPU with the most free
memory; one that fits on none is spread over all of the server's GPUs (OLLAMA_FACTS §2.9;
``pickBestFullFitByLibrary``), each GPU paying its own CUDA context. A :class:`Room` plans
the same way, so that a load the planner decides fits where Ollama will put it. Memory is
in bytes; every figure is after the safety margin, which each GPU keeps.

Also here: :func:`rollout`, the quick play-out the planner uses to choose which of several
equally urgent groups to load next.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from .plan import BackendView

#: What spreading a model over one more GPU costs there: Ollama's estimator reserves a
#: CUDA context and graph memory on each GPU it uses (≈ 457 MiB in v0.11's estimator).
SPREAD_OVERHEAD = 512 * 1024 * 1024


@dataclass
class Room:
    """One backend's room for this pass (mutated as loads are planned on it)."""

    view: BackendView
    free: list[int]  # per GPU: free now, minus the margin and loads in progress
    capacity: list[int]  # per GPU: total minus the margin
    incoming: int = 0  # memory that unloads under way give back
    seats: int = 0  # runners held (in any state) + models others loaded
    load_slots: int = 1
    leaving: set[str] = field(default_factory=set)  # runners unloading or drained here

    @classmethod
    def of(cls, view: BackendView, margin: int, loading: list[int]) -> Room:
        """A backend's room: its GPUs (or its budget as one), the margin taken from each,
        and the memory of ``loading`` runners (not yet visible in free memory) reserved."""
        gpus = list(view.devices) or [(view.total_bytes, view.free_bytes)]
        room = cls(
            view=view,
            free=[free - margin for _, free in gpus],
            capacity=[total - margin for total, _ in gpus],
        )
        for size in loading:
            room.reserve(size)
        return room

    @property
    def name(self) -> str:
        return self.view.name

    @property
    def seat_free(self) -> bool:
        return self.seats < self.view.max_loaded

    def spread_free(self) -> int:
        """What a model spread over every GPU could use now."""
        usable = [f for f in self.free if f > 0]
        return sum(usable) - SPREAD_OVERHEAD * max(0, len(usable) - 1)

    def fits(self, need: int) -> bool:
        """Whether a model of ``need`` bytes fits now, on one GPU or spread over all."""
        if not self.free:
            return False
        return max(self.free) >= need or (len(self.free) > 1 and self.spread_free() >= need)

    def largest(self) -> int:
        """The largest model this backend could ever hold (every GPU empty)."""
        if not self.capacity:
            return 0
        spread = sum(self.capacity) - SPREAD_OVERHEAD * (len(self.capacity) - 1)
        return max(max(self.capacity), spread if len(self.capacity) > 1 else 0)

    def reserve(self, need: int) -> None:
        """Take ``need`` bytes where Ollama would put them: the single GPU with the most
        free memory if it fits there, else spread in proportion to what each has free."""
        if not self.free:
            return
        best = max(range(len(self.free)), key=lambda i: self.free[i])
        if self.free[best] >= need or len(self.free) == 1:
            self.free[best] -= need
            return
        usable = [max(0, f) for f in self.free]
        total = sum(usable) or 1
        for i, f in enumerate(usable):
            self.free[i] -= need * f // total + (SPREAD_OVERHEAD if f else 0)

    def total_free(self) -> int:
        return sum(max(0, f) for f in self.free)

    def claim_all(self) -> None:
        """Keep what is free for a group that waits while its victims go."""
        self.free = [min(f, 0) for f in self.free]


def rollout(
    order: list[tuple[str, float, float]],
    seats: list[tuple[float, str]],
    loaders: dict[str, float],
) -> float:
    """When the last of ``order`` would finish: each (name, load s, work s) loads, in
    turn, into the seat where it can start soonest (``seats``: (seconds until it frees,
    backend)), once that backend's one loader is free (``loaders``: seconds until each
    is), then works. Memory is left out: a quick estimate to choose what to load next."""
    free = sorted(seats)
    loader = dict(loaders)
    end = 0.0
    for _, load, work in order:
        if not free:
            break
        pick = min(range(len(free)), key=lambda i: max(free[i][0], loader.get(free[i][1], 0.0)))
        seat_free, backend = free.pop(pick)
        done = max(seat_free, loader.get(backend, 0.0)) + load
        loader[backend] = done
        end = max(end, done + work)
        bisect.insort(free, (done + work, backend))
    return end
