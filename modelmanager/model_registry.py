"""Model catalog, VRAM estimates, and what loads taught us (persisted in the store).

Estimate of the VRAM a model takes once loaded, as NVML sees it, best source first:
1. learned: the NVML delta of a load no other load overlapped, else ``size_vram`` from
   ``/api/ps`` (both persisted, so they survive restarts); raised after an out-of-memory;
2. the built-in catalog (the seed's 10 small models);
3. the on-disk size Ollama reports in ``/api/tags`` x ``VRAM_ESTIMATION_MULTIPLIER``.

Seconds a job takes on a runner slot, per model (:meth:`job_seconds`), for ranking
groups by their queued work: a moving average of Ollama's own durations of finished jobs
(kept in memory only); before a model has one, its VRAM estimate at the seconds per GiB
the models that have one show (median), or ``PRIOR_SECONDS_PER_GIB``: bigger models are
slower per token.

Thread safety: one lock; ``refresh_tags`` does HTTP and is called off the request path.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import OllamaError
from .logger import get_logger
from .models import GIB, MIB
from .store import Store

log = get_logger("REGISTRY")

GB = 1_000_000_000


@dataclass(frozen=True)
class CatalogEntry:
    disk_bytes: int
    capabilities: tuple[str, ...]


# The seed's 10 small models (on-disk sizes as `ollama list` shows them).
CATALOG: dict[str, CatalogEntry] = {
    "smollm:360m": CatalogEntry(int(0.23 * GB), ("completion",)),
    "all-minilm:latest": CatalogEntry(int(0.046 * GB), ("embedding",)),
    "nomic-embed-text:latest": CatalogEntry(int(0.274 * GB), ("embedding",)),
    "qwen2.5:0.5b": CatalogEntry(int(0.397 * GB), ("completion",)),
    "tinyllama:1.1b": CatalogEntry(int(0.638 * GB), ("completion",)),
    "smollm:1.7b": CatalogEntry(int(0.99 * GB), ("completion",)),
    "llama3.2:1b": CatalogEntry(1_321_098_329, ("completion",)),
    "gemma:2b": CatalogEntry(int(1.7 * GB), ("completion",)),
    "qwen2.5:1.5b": CatalogEntry(int(0.986 * GB), ("completion",)),
    "phi3:mini": CatalogEntry(int(2.2 * GB), ("completion",)),
}

OOM_GROWTH = 1.25  # an out-of-memory answer raises the estimate by this factor
PRIOR_SECONDS_PER_GIB = 1.0  # job seconds per GiB of model before any job finished
JOB_SECONDS_WEIGHT = 0.2  # weight of the newest job in the moving average


def normalize(name: str) -> str:
    """``llama3.2`` -> ``llama3.2:latest``; lower-case, as Ollama matches names."""
    name = name.strip().lower()
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


CONTEXT_ALLOWANCE = 512 * MIB  # a runner's CUDA context: in NVML, not in size_vram


def plausible_footprint(ps_vram: int | None, nvml_delta: int | None) -> int | None:
    """What a loaded model takes as NVML sees it.

    The NVML delta of a load includes the runner's CUDA context, which ``size_vram`` lacks,
    but it is polluted by memory other programs take or free meanwhile and by an evicted
    model's memory that Ollama releases late. So it is trusted only within
    [size_vram, size_vram x 1.25 + a context]; otherwise ``size_vram`` is used.
    """
    if not ps_vram:
        return nvml_delta if nvml_delta and nvml_delta > 0 else None
    if nvml_delta and ps_vram <= nvml_delta <= ps_vram * 1.25 + CONTEXT_ALLOWANCE:
        return nvml_delta
    return ps_vram


@dataclass
class ModelInfo:
    name: str
    estimate_bytes: int | None  # None: unknown until Ollama tells us its size
    source: str  # learned | catalog | ollama | unknown
    installed: bool | None  # None: Ollama not reachable yet
    capabilities: tuple[str, ...]
    learned_vram_bytes: int | None
    learned_ps_vram_bytes: int | None
    learned_load_seconds: float | None
    loads: int

    @property
    def is_embedding(self) -> bool:
        return "embedding" in self.capabilities and "completion" not in self.capabilities


class ModelRegistry:
    def __init__(
        self,
        store: Store,
        *,
        multiplier: float,
        tags: Callable[[], list[dict[str, Any]]],
        clock: Callable[[], float] = time.time,
        tags_ttl: float = 10.0,
    ) -> None:
        self.store = store
        self.multiplier = multiplier
        self._tags = tags
        self._clock = clock
        self._tags_ttl = tags_ttl
        self._lock = threading.Lock()
        self._learned = store.load_model_stats()
        self._job_seconds: dict[str, float] = {}
        self._installed: dict[str, dict[str, Any]] | None = None
        self._tags_at = -1e18

    # ------------------------------------------------------------------ Ollama's list

    def refresh_tags(self, *, force: bool = False) -> bool:
        """Re-read ``/api/tags`` if stale (or forced). False if Ollama is unreachable."""
        now = self._clock()
        if not force and now - self._tags_at < self._tags_ttl and self._installed is not None:
            return True
        try:
            models = self._tags()
        except OllamaError as exc:
            log.debug("cannot list Ollama's models: %s", exc)
            return False
        installed = {normalize(str(m.get("name") or m.get("model"))): m for m in models}
        with self._lock:
            self._installed = installed
            self._tags_at = now
        return True

    def installed(self, model: str) -> bool | None:
        """True/False once Ollama answered; None while it never has."""
        with self._lock:
            if self._installed is None:
                return None
            return normalize(model) in self._installed

    # ---------------------------------------------------------------------- lookups

    def info(self, model: str) -> ModelInfo:
        name = normalize(model)
        with self._lock:
            learned = self._learned.get(name, {})
            tag = (self._installed or {}).get(name)
            installed = None if self._installed is None else tag is not None
        entry = CATALOG.get(name)
        capabilities: tuple[str, ...] = entry.capabilities if entry else ()
        if tag is not None and tag.get("capabilities"):
            capabilities = tuple(tag["capabilities"])
        if learned.get("vram_bytes"):
            estimate, source = int(learned["vram_bytes"]), "learned"
        elif entry is not None:
            estimate, source = int(entry.disk_bytes * self.multiplier), "catalog"
        elif tag is not None and tag.get("size"):
            estimate, source = int(int(tag["size"]) * self.multiplier), "ollama"
        else:
            estimate, source = None, "unknown"
        return ModelInfo(
            name=name,
            estimate_bytes=estimate,
            source=source,
            installed=installed,
            capabilities=capabilities,
            learned_vram_bytes=learned.get("vram_bytes"),
            learned_ps_vram_bytes=learned.get("ps_vram_bytes"),
            learned_load_seconds=learned.get("load_seconds"),
            loads=int(learned.get("loads") or 0),
        )

    def estimate(self, model: str) -> int | None:
        return self.info(model).estimate_bytes

    def known_models(self) -> list[str]:
        with self._lock:
            names = set(CATALOG) | set(self._learned) | set(self._installed or {})
        return sorted(names)

    # --------------------------------------------------------------------- learning

    def learn_load(
        self,
        model: str,
        *,
        ps_vram_bytes: int | None,
        nvml_delta_bytes: int | None,
        load_seconds: float,
    ) -> int | None:
        """Record a finished load. The NVML delta (when no other load overlapped) is what
        the planner compares with NVML free memory, so it wins over ``size_vram``."""
        name = normalize(model)
        vram = plausible_footprint(ps_vram_bytes, nvml_delta_bytes)
        with self._lock:
            entry = self._learned.setdefault(name, {"loads": 0})
            if vram:
                entry["vram_bytes"] = vram
            if ps_vram_bytes:
                entry["ps_vram_bytes"] = ps_vram_bytes
            entry["load_seconds"] = load_seconds
            entry["loads"] = int(entry.get("loads") or 0) + 1
        self.store.save_model_stats(
            name,
            vram_bytes=vram or None,
            ps_vram_bytes=ps_vram_bytes or None,
            load_seconds=load_seconds,
            now=self._clock(),
            count_load=True,
        )
        if vram:
            source = "nvml delta" if vram == nvml_delta_bytes else "api/ps"
            log.info(
                "learned %s: %d MB VRAM (%s), load %.2fs", name, vram // MIB, source, load_seconds
            )
        else:
            log.info("learned %s: load %.2fs (no VRAM figure to trust)", name, load_seconds)
        return vram

    def learn_job(self, model: str, seconds: float) -> None:
        """Record how long a finished job ran on its slot (load time excluded)."""
        if seconds <= 0:
            return
        name = normalize(model)
        with self._lock:
            old = self._job_seconds.get(name)
            self._job_seconds[name] = (
                seconds if old is None else old + JOB_SECONDS_WEIGHT * (seconds - old)
            )

    def job_seconds(self, model: str) -> float:
        """Expected seconds of one job of ``model`` on a runner slot (see the module doc)."""
        name = normalize(model)
        with self._lock:
            known = self._job_seconds.get(name)
            learned = dict(self._job_seconds)
        if known is not None:
            return known
        per_gib = [
            secs / (size / GIB)
            for other, secs in learned.items()
            if (size := self.estimate(other) or 0) > 0
        ]
        rate = statistics.median(per_gib) if per_gib else PRIOR_SECONDS_PER_GIB
        return rate * (self.estimate(name) or GIB) / GIB

    def raise_estimate(
        self, model: str, *, at_least: int | None = None, why: str = "out-of-memory"
    ) -> int | None:
        """After an out-of-memory answer: grow the estimate so the next plan frees more."""
        name = normalize(model)
        current = self.estimate(name)
        if current is None:
            return None
        grown = max(int(current * OOM_GROWTH), at_least or 0)
        with self._lock:
            self._learned.setdefault(name, {"loads": 0})["vram_bytes"] = grown
        self.store.save_model_stats(
            name,
            vram_bytes=grown,
            ps_vram_bytes=None,
            load_seconds=None,
            now=self._clock(),
            count_load=False,
        )
        log.info("raised VRAM estimate of %s to %d MB after %s", name, grown // MIB, why)
        return grown
