"""The simulated GPUs and where Ollama puts a runner on them (OLLAMA_FACTS §2.9).

Placement follows Ollama up to v0.11.4 (``pickBestFullFitByLibrary``): a runner that
fits entirely on one GPU goes on the single GPU with the most free memory; otherwise it is
spread over every GPU with room, its VRAM split in proportion to each GPU's free memory
less the CUDA context it needs there; if it fits nowhere the caller evicts, or (nothing
loaded) spills part of it to the CPU with :func:`spill`. "Free" is what Ollama's fit check
sees: each GPU's size less its own runners' memory; other programs are invisible to it.

The functions here are pure: bytes in, a placement out. A placement is a tuple of
``(gpu, bytes)``: the local GPU index (as ``CUDA_VISIBLE_DEVICES`` numbers them) and the
part of the runner's ``size_vram`` on it; each GPU in it also holds one CUDA context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Placement = tuple[tuple[int, int], ...]

#: A first model that does not fit may fill a GPU to this share (numerator, denominator)
#: before the rest goes to the CPU.
SPILL_FILL = (19, 20)


@dataclass
class Gpu:
    """One simulated GPU. ``index`` is its number inside this Ollama, ``nvml_index`` its
    device number in NVML (they differ for an Ollama pinned to a later GPU). Sizes in
    MiB. Guarded by the simulator's condition variable."""

    index: int
    nvml_index: int
    total_mb: int
    other_mb: int = 0
    peak_mb: int = 0


def parse_sizes(vram_mb: int | Sequence[int], gpus: int | None) -> tuple[int, ...]:
    """Per-GPU sizes in MiB from ``vram_mb`` (one size for every GPU, or one per GPU) and
    ``gpus`` (None: one, or as many as sizes given). Raises ``ValueError``."""
    if isinstance(vram_mb, bool):
        raise ValueError(f"vram_mb must be a size in MiB or a list of them, got {vram_mb!r}")
    if isinstance(vram_mb, int | float):
        count = 1 if gpus is None else gpus
        if count < 1:
            raise ValueError(f"gpus must be >= 1, got {count}")
        sizes = (int(vram_mb),) * count
    else:
        sizes = tuple(int(mb) for mb in vram_mb)
        if not sizes:
            raise ValueError("vram_mb must list at least one GPU size")
        if gpus is not None and gpus != len(sizes):
            raise ValueError(f"gpus={gpus} but vram_mb lists {len(sizes)} sizes: {list(sizes)}")
    for mb in sizes:
        if mb <= 0:
            raise ValueError(f"vram_mb must be positive, got {mb}")
    return sizes


def split(vram: int, rooms: dict[int, int]) -> Placement:
    """``vram`` bytes split over the GPUs in ``rooms`` (GPU -> bytes it can take) in
    proportion to their room, never more than a GPU's room when ``vram`` <= the sum."""
    total = sum(rooms.values())
    if vram <= 0 or total <= 0:
        return ()
    parts = {i: vram * room // total for i, room in rooms.items()}
    left = vram - sum(parts.values())
    for i in sorted(rooms, key=lambda i: -rooms[i]):  # rounding leftovers: roomiest first
        extra = min(left, max(0, rooms[i] - parts[i]))
        parts[i] += extra
        left -= extra
    if left:  # only when vram > total: the rest goes to the roomiest GPU
        parts[max(rooms, key=lambda i: rooms[i])] += left
    return tuple((i, b) for i, b in sorted(parts.items()) if b > 0)


def place(vram: int, free: Sequence[int], context: int) -> Placement | None:
    """Where a runner with ``vram`` bytes of ``size_vram`` goes, given each GPU's free
    bytes as Ollama sees them and the CUDA context each GPU it uses needs; None if it does
    not fit. A runner with no VRAM (``num_gpu: 0``) needs room for a context anywhere."""
    if vram <= 0:
        return () if free and max(free) >= context else None
    by_free = sorted(range(len(free)), key=lambda i: -free[i])  # ties: lower index first
    for i in by_free:
        if vram + context <= free[i]:
            return ((i, vram),)
    rooms = {i: f - context for i, f in enumerate(free) if f > context}
    if len(rooms) > 1 and vram <= sum(rooms.values()):
        return split(vram, rooms)
    return None


def spill(vram: int, free: Sequence[int], context: int) -> Placement:
    """A model that fits nowhere with nothing else loaded: as much of ``vram`` as fills
    each GPU to :data:`SPILL_FILL`, split over them; the rest runs on the CPU."""
    num, den = SPILL_FILL
    rooms = {i: f * num // den - context for i, f in enumerate(free)}
    rooms = {i: room for i, room in rooms.items() if room > 0}
    return split(min(vram, sum(rooms.values())), rooms)
