"""Model catalog, VRAM estimates per runner, and what loads taught us (persisted).

Identity: a model is its :func:`~modelmanager.names.model_key`; a runner is a model with
its runner options (:mod:`modelmanager.runners`). Sizes are learned and estimated per
runner, because the KV cache grows with ``num_ctx``.

Estimate of the VRAM a runner takes once loaded, as NVML sees it, best source first:

1. learned for this runner: the NVML delta of a load no other load overlapped, else
   ``size_vram`` from ``/api/ps`` (persisted, so they survive restarts);
2. the model's default-runner size (learned, else the built-in catalog of 10 small
   models, else Ollama's on-disk size x ``VRAM_ESTIMATION_MULTIPLIER``), plus the KV cache
   the runner's ``num_ctx`` adds or saves against Ollama's default context (KV bytes per
   token from ``/api/show``: ``2 x layers x kv_heads x head_dim x 2`` bytes, f16).

On top of that evidence, failures (an out-of-memory answer, a runner Ollama drops right
after loading it) *raise* the estimate, in memory only and at most to
:data:`RAISE_CAP` x the evidence, so that the next plan frees more room. A successful
load replaces the raise with what was measured, and a restart forgets it: a raise can
make a model wait, never make it permanently impossible.

Seconds a job takes on a runner slot, per model (:meth:`job_seconds`), for ranking
groups by their queued work: a moving average of Ollama's own durations of finished jobs
(kept in memory only); before a model has one, its VRAM estimate at the seconds per GiB
the models that have one show (median), or ``PRIOR_SECONDS_PER_GIB``.

Thread safety: one lock; ``refresh_tags`` and ``show`` do HTTP and are called off the
request path (the scheduler thread).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import OllamaError
from .logger import get_logger
from .models import GIB, MIB, LoadedModel
from .names import InvalidModelName, display_name, model_key
from .runners import canonical, describe, model_of, model_runner_defaults, options_of
from .store import Store

log = get_logger("REGISTRY")

GB = 1_000_000_000


@dataclass(frozen=True)
class CatalogEntry:
    disk_bytes: int
    capabilities: tuple[str, ...]


# Ten small models every setup knows before Ollama answers (on-disk sizes as `ollama
# list` shows them), by model identity.
CATALOG: dict[str, CatalogEntry] = {
    model_key(name): entry
    for name, entry in {
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
    }.items()
}

OOM_GROWTH = 1.25  # a failure raises the estimate by this factor
RAISE_CAP = 2.0  # failures never raise an estimate past this many times the evidence
PRIOR_SECONDS_PER_GIB = 1.0  # job seconds per GiB of model before any job finished
JOB_SECONDS_WEIGHT = 0.2  # weight of the newest job in the moving average
DEFAULT_NUM_CTX = 4096  # Ollama's default context (OLLAMA_CONTEXT_LENGTH)
FALLBACK_KV_PER_TOKEN = 128 * 1024  # bytes per token when /api/show does not tell
SHOW_RETRY_SECONDS = 60.0  # a failed /api/show is asked again after this long


def normalize(name: str) -> str:
    """The runner key of the default runner of ``name`` (its model identity); a name
    Ollama's grammar refuses is kept, lower-cased, so lookups never raise."""
    try:
        return model_key(name)
    except InvalidModelName:
        return name.strip().lower()


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
    """What the registry knows of one runner (``name`` is its runner key)."""

    name: str
    estimate_bytes: int | None  # None: unknown until Ollama tells us its size
    evidence_bytes: int | None  # the estimate without failure raises
    source: str  # learned | catalog | ollama | unknown
    installed: bool | None  # None: Ollama not reachable yet
    capabilities: tuple[str, ...]
    learned_vram_bytes: int | None
    learned_ps_vram_bytes: int | None
    learned_load_seconds: float | None
    loads: int
    stored_name: str | None = None  # the model's name as Ollama stores it

    @property
    def is_embedding(self) -> bool:
        return "embedding" in self.capabilities and "completion" not in self.capabilities


def _sane(entry: dict[str, Any]) -> dict[str, Any]:
    """A stored stats row, minus a VRAM figure that no load measured: older versions
    persisted failure raises, which must not outlive a restart."""
    vram, ps_vram = entry.get("vram_bytes"), entry.get("ps_vram_bytes")
    if vram and not ps_vram and not entry.get("loads"):
        entry = {**entry, "vram_bytes": None}
    elif vram and ps_vram and vram > ps_vram * 1.25 + CONTEXT_ALLOWANCE:
        entry = {**entry, "vram_bytes": ps_vram}
    return entry


class ModelRegistry:
    def __init__(
        self,
        store: Store,
        *,
        multiplier: float,
        tags: Callable[[], list[dict[str, Any]]] | None,
        show: Callable[[str], dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
        tags_ttl: float = 10.0,
    ) -> None:
        self.store = store
        self.multiplier = multiplier
        self._show = show
        self._clock = clock
        self._tags_ttl = tags_ttl
        self._lock = threading.Lock()
        self._learned: dict[str, dict[str, Any]] = {}
        for name, entry in store.load_model_stats().items():
            key = name if ("|" in name or "/" in name) else normalize(name)
            self._learned[key] = _sane(entry)
        self._raised: dict[str, int] = {}  # runner -> failure-raised estimate (memory only)
        self._job_seconds: dict[str, float] = {}
        self._installed: dict[str, dict[str, Any]] | None = None  # every backend's, merged
        self._sources: dict[str, Callable[[], list[dict[str, Any]]]] = {"": tags} if tags else {}
        self._per_backend: dict[str, dict[str, dict[str, Any]]] = {}
        self._tags_at = -1e18
        self._kv: dict[str, tuple[int, int]] = {}  # model -> (KV bytes per token, max ctx)
        self._show_cache: dict[str, dict[str, Any]] = {}  # model -> its /api/show
        self._default_ctx: dict[str, int] = {}  # model -> its default runner's context
        self._show_failed_at: dict[str, float] = {}

    # ------------------------------------------------------------------ Ollama's list

    def add_source(self, backend: str, tags: Callable[[], list[dict[str, Any]]]) -> None:
        """List ``backend``'s installed models too (its ``/api/tags``)."""
        with self._lock:
            self._sources[backend] = tags
            self._tags_at = -1e18

    def remove_source(self, backend: str) -> None:
        with self._lock:
            self._sources.pop(backend, None)
            self._per_backend.pop(backend, None)
            self._merge_locked()

    def refresh_tags(self, *, force: bool = False) -> bool:
        """Re-read every backend's ``/api/tags`` if stale (or forced). False if no backend
        answered."""
        now = self._clock()
        if not force and now - self._tags_at < self._tags_ttl and self._installed is not None:
            return True
        with self._lock:
            sources = dict(self._sources)
        answered = False
        for backend, tags in sources.items():
            try:
                models = tags()
            except OllamaError as exc:
                log.debug("cannot list the models of %s: %s", backend or "Ollama", exc)
                continue
            answered = True
            listed = {normalize(str(m.get("name") or m.get("model"))): m for m in models}
            with self._lock:
                self._per_backend[backend] = listed
        with self._lock:
            if answered:
                self._merge_locked()
                self._tags_at = now
        return answered

    def _merge_locked(self) -> None:
        merged: dict[str, dict[str, Any]] = {}
        for listed in self._per_backend.values():
            for key, tag in listed.items():
                merged.setdefault(key, tag)
        self._installed = merged if self._per_backend else None

    def installed(self, model: str) -> bool | None:
        """True/False once a backend answered; None while none ever has. ``model`` may be
        a name in any spelling or a runner key."""
        with self._lock:
            if self._installed is None:
                return None
            return model_of(normalize(model)) in self._installed

    def installed_on(self, model: str) -> frozenset[str]:
        """The backends whose ``/api/tags`` listed the model."""
        key = model_of(normalize(model))
        with self._lock:
            return frozenset(b for b, listed in self._per_backend.items() if key in listed)

    def stored_name(self, model: str) -> str | None:
        """The model's name as Ollama stores (and reports) it, if ``/api/tags`` listed it."""
        with self._lock:
            tag = (self._installed or {}).get(model_of(normalize(model)))
        if tag is None:
            return None
        name = tag.get("name") or tag.get("model")
        return str(name) if name else None

    def shown(self, runner: str) -> str:
        """How logs name a runner: the model as Ollama stores it (else its shortest
        spelling, ``qwen2.5:1.5b``), with the runner's options."""
        name = self.stored_name(runner)
        if not name:
            try:
                name = display_name(model_of(runner))
            except InvalidModelName:
                name = model_of(runner)
        return describe(name, runner)

    def digest(self, model: str) -> str | None:
        """The model's digest as ``/api/tags`` lists it (names that are copies of one
        another share it, and with it one runner in Ollama), if known."""
        with self._lock:
            tag = (self._installed or {}).get(model_of(normalize(model)))
        digest = tag.get("digest") if tag is not None else None
        return digest if isinstance(digest, str) and digest else None

    def holds(self, runner: str, loaded: LoadedModel) -> bool:
        """Whether ``loaded`` (an ``/api/ps`` entry) is the runner of ``runner``'s model:
        the same identity, or the same weights under another name (a copy: Ollama runs
        one runner per weights file and lists it under the name it was loaded with)."""
        if model_of(normalize(loaded.name)) == model_of(runner):
            return True
        digest = self.digest(runner)
        return bool(digest and loaded.digest and _same_digest(digest, loaded.digest))

    def identity(self, model: str, prefer: Iterable[str] = ()) -> str:
        """The identity of the weights ``model`` names: names Ollama resolves to one blob
        (the same digest in ``/api/tags``: ``ollama cp`` copies) are one runner in Ollama,
        whose scheduler keys runners by the model's blob path (``server/sched.go``
        ``schedulerModelKey``). Of the names sharing the digest, the first of ``prefer``
        (model identities: the runners already held, so a new copy never re-keys a
        loaded runner), else the smallest identity; ``model``'s own identity while its
        digest is unknown."""
        key = model_of(normalize(model))
        with self._lock:
            installed = self._installed or {}
            digest = _digest_of(installed.get(key))
            if digest is None:
                return key
            for other in prefer:
                if _same_digest(digest, _digest_of(installed.get(other)) or ""):
                    return other
            return self._weights_locked(key)

    def _weights_locked(self, key: str) -> str:
        """The smallest identity sharing ``key``'s digest (``key`` while unknown)."""
        installed = self._installed or {}
        digest = _digest_of(installed.get(key))
        if digest is None:
            return key
        twins = [k for k, tag in installed.items() if _same_digest(digest, _digest_of(tag) or "")]
        return min(twins, default=key)

    def canonical(self, runner: str, prefer: Iterable[str] = ()) -> str:
        """``runner`` (a runner key) as the runner Ollama would really use: the weights'
        :meth:`identity`, and runner options equal to the model's own or Ollama's
        defaults left out (:func:`modelmanager.runners.canonical`; the model's parameters
        are asked of ``/api/show`` once, only for a runner that sets options)."""
        identity = self.identity(model_of(runner), prefer)
        if not options_of(runner):
            return identity
        return canonical(runner, identity, self.model_defaults(identity))

    def model_defaults(self, model: str) -> dict[str, Any] | None:
        """The model's runner defaults: its Modelfile's runner options (from
        ``/api/show``) and ``num_ctx``, its own else the default context a default runner
        of it was seen with (:meth:`learn_default_context`; left out while unseen). None
        while ``/api/show`` is unknown."""
        key = model_of(normalize(model))
        shown = self._shown(key)
        if shown is None:
            return None
        parameters = shown.get("parameters")
        with self._lock:
            default_ctx = self._default_ctx.get(self._weights_locked(key))
        return model_runner_defaults(
            parameters if isinstance(parameters, str) else None, default_ctx
        )

    def learn_default_context(self, model: str, context_length: int) -> None:
        """``/api/ps`` listed a default runner of ``model`` (one loaded with no runner
        options) with this per-slot ``context_length``: the context Ollama gives the model
        when a request sets no ``num_ctx`` (OLLAMA_CONTEXT_LENGTH, the VRAM tier or the
        Modelfile's). Kept for the weights (any copy's name will do); in memory only.
        A context at the model's training context is not learned: Ollama may report it
        clamped there (HEAD ``effectiveContext``), so the default it came from is unknown."""
        key = model_of(normalize(model))
        if context_length >= self._kv_figures(key)[1]:
            return
        with self._lock:
            self._default_ctx[self._weights_locked(key)] = context_length

    # ---------------------------------------------------------------------- lookups

    def info(self, runner: str) -> ModelInfo:
        """What is known of ``runner`` (a runner key, or a model name in any spelling)."""
        runner = runner if "|" in runner else normalize(runner)
        model = model_of(runner)
        with self._lock:
            learned = self._learned.get(runner, {})
            default = self._learned.get(model, {})
            tag = (self._installed or {}).get(model)
            installed = None if self._installed is None else tag is not None
            raised = self._raised.get(runner)
        entry = CATALOG.get(model)
        capabilities: tuple[str, ...] = entry.capabilities if entry else ()
        if tag is not None and tag.get("capabilities"):
            capabilities = tuple(tag["capabilities"])
        evidence: int | None
        if learned.get("vram_bytes"):
            evidence, source = int(learned["vram_bytes"]), "learned"
        else:
            base, source = self._base(default, entry, tag)
            evidence = None if base is None else self._with_context(model, runner, base)
        estimate = evidence
        if evidence is not None and raised is not None:
            estimate = max(evidence, min(raised, int(evidence * RAISE_CAP)))
        stored = tag.get("name") or tag.get("model") if tag is not None else None
        return ModelInfo(
            name=runner,
            estimate_bytes=estimate,
            evidence_bytes=evidence,
            source=source,
            installed=installed,
            capabilities=capabilities,
            learned_vram_bytes=learned.get("vram_bytes"),
            learned_ps_vram_bytes=learned.get("ps_vram_bytes"),
            learned_load_seconds=learned.get("load_seconds"),
            loads=int(learned.get("loads") or 0),
            stored_name=str(stored) if stored else None,
        )

    def _base(
        self, default: dict[str, Any], entry: CatalogEntry | None, tag: dict[str, Any] | None
    ) -> tuple[int | None, str]:
        """The model's default-runner size and where it came from."""
        if default.get("vram_bytes"):
            return int(default["vram_bytes"]), "learned"
        if entry is not None:
            return int(entry.disk_bytes * self.multiplier), "catalog"
        if tag is not None and tag.get("size"):
            return int(int(tag["size"]) * self.multiplier), "ollama"
        return None, "unknown"

    def _with_context(self, model: str, runner: str, base: int) -> int:
        """``base`` (the default runner's size) adjusted for the runner's ``num_ctx``."""
        num_ctx = options_of(runner).get("num_ctx")
        if not isinstance(num_ctx, int) or isinstance(num_ctx, bool):
            return base
        per_token, max_ctx = self._kv_figures(model)
        default_ctx = min(DEFAULT_NUM_CTX, max_ctx)
        delta = per_token * (min(num_ctx, max_ctx) - default_ctx)
        return max(base // 2, base + delta)

    def _kv_figures(self, model: str) -> tuple[int, int]:
        """(KV-cache bytes per token of context, training context) from ``/api/show``."""
        with self._lock:
            known = self._kv.get(model)
        if known is not None:
            return known
        fallback = (FALLBACK_KV_PER_TOKEN, 1 << 30)
        shown = self._shown(model)
        if shown is None:
            return fallback
        figures = kv_figures(shown.get("model_info") or {}) or fallback
        with self._lock:
            self._kv[model] = figures
        return figures

    def _shown(self, model: str) -> dict[str, Any] | None:
        """``/api/show`` of ``model`` (an identity), asked once and kept; None when there
        is no ``show`` or it failed less than SHOW_RETRY_SECONDS ago. Copies share one
        manifest, so one answer serves them all."""
        with self._lock:
            model = self._weights_locked(model)
            known = self._show_cache.get(model)
            failed_at = self._show_failed_at.get(model)
        if known is not None:
            return known
        if self._show is None or (
            failed_at is not None and self._clock() - failed_at < SHOW_RETRY_SECONDS
        ):
            return None
        try:
            shown = self._show(self.stored_name(model) or model)
        except OllamaError:
            with self._lock:
                self._show_failed_at[model] = self._clock()
            return None
        with self._lock:
            self._show_cache[model] = shown
        return shown

    def estimate(self, runner: str) -> int | None:
        return self.info(runner).estimate_bytes

    def known_models(self) -> list[str]:
        """Runner keys of every model the catalog, Ollama or a load told us of."""
        with self._lock:
            names = set(CATALOG) | set(self._learned) | set(self._installed or {})
        return sorted(names)

    # --------------------------------------------------------------------- learning

    def learn_load(
        self,
        runner: str,
        *,
        ps_vram_bytes: int | None,
        nvml_delta_bytes: int | None,
        load_seconds: float,
    ) -> int | None:
        """Record a finished load of ``runner``. The NVML delta (when no other load
        overlapped) is what the planner compares with NVML free memory, so it wins over
        ``size_vram``; either replaces a failure raise."""
        runner = runner if "|" in runner else normalize(runner)
        vram = plausible_footprint(ps_vram_bytes, nvml_delta_bytes)
        with self._lock:
            entry = self._learned.setdefault(runner, {"loads": 0})
            if vram:
                entry["vram_bytes"] = vram
                self._raised.pop(runner, None)
            if ps_vram_bytes:
                entry["ps_vram_bytes"] = ps_vram_bytes
            entry["load_seconds"] = load_seconds
            entry["loads"] = int(entry.get("loads") or 0) + 1
        self.store.save_model_stats(
            runner,
            vram_bytes=vram or None,
            ps_vram_bytes=ps_vram_bytes or None,
            load_seconds=load_seconds,
            now=self._clock(),
            count_load=True,
        )
        if vram:
            source = "nvml delta" if vram == nvml_delta_bytes else "api/ps"
            log.info(
                "learned %s: %d MB VRAM (%s), load %.2fs",
                self.shown(runner),
                vram // MIB,
                source,
                load_seconds,
            )
        else:
            log.info(
                "learned %s: load %.2fs (no VRAM figure to trust)", self.shown(runner), load_seconds
            )
        return vram

    def learn_job(self, model: str, seconds: float) -> None:
        """Record how long a finished job ran on its slot (load time excluded)."""
        if seconds <= 0:
            return
        name = self.identity(model)  # copies share their jobs' timing
        with self._lock:
            old = self._job_seconds.get(name)
            self._job_seconds[name] = (
                seconds if old is None else old + JOB_SECONDS_WEIGHT * (seconds - old)
            )

    def job_seconds(self, model: str) -> float:
        """Expected seconds of one job of ``model`` on a runner slot (see the module doc)."""
        name = self.identity(model)  # copies share their jobs' timing
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
        return rate * (self.estimate(model) or GIB) / GIB

    def raise_estimate(
        self, runner: str, *, at_least: int | None = None, why: str = "out-of-memory"
    ) -> int | None:
        """After a failure: grow the estimate so the next plan frees more room.

        In memory only, and never past :data:`RAISE_CAP` x the evidence (see the module
        doc). Returns the new estimate (None while the size is unknown).
        """
        runner = runner if "|" in runner else normalize(runner)
        info = self.info(runner)
        if info.estimate_bytes is None or info.evidence_bytes is None:
            return None
        cap = int(info.evidence_bytes * RAISE_CAP)
        grown = min(cap, max(int(info.estimate_bytes * OOM_GROWTH), at_least or 0))
        with self._lock:
            self._raised[runner] = grown
        if grown > info.estimate_bytes:
            log.info(
                "raised VRAM estimate of %s to %d MB after %s",
                self.shown(runner),
                grown // MIB,
                why,
            )
        else:
            log.info(
                "VRAM estimate of %s stays at %d MB after %s (at its cap of %gx what was measured)",
                self.shown(runner),
                grown // MIB,
                why,
                RAISE_CAP,
            )
        return grown


def _digest_of(tag: dict[str, Any] | None) -> str | None:
    digest = tag.get("digest") if tag is not None else None
    return digest if isinstance(digest, str) and digest else None


def _same_digest(a: str, b: str) -> bool:
    """Digests as Ollama writes them, with or without ``sha256:``, full or shortened."""
    a, b = a.removeprefix("sha256:"), b.removeprefix("sha256:")
    n = min(len(a), len(b))
    return n >= 12 and a[:n] == b[:n]


def kv_figures(model_info: dict[str, Any]) -> tuple[int, int] | None:
    """(KV bytes per token, training context) from ``/api/show``'s ``model_info``.

    Ollama names the keys after the architecture (``general.architecture``):
    ``<arch>.block_count``, ``<arch>.attention.head_count_kv``, ``<arch>.attention.
    key_length`` (else ``embedding_length / attention.head_count``), ``<arch>.context_length``.
    The cache is f16: ``2 (K and V) x layers x kv_heads x head_dim x 2 bytes``.
    """
    arch = model_info.get("general.architecture")
    if not isinstance(arch, str):
        return None

    def number(key: str) -> int | None:
        value = model_info.get(f"{arch}.{key}")
        if isinstance(value, list) and value:  # per-layer lists in some architectures
            value = max(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return int(value)

    layers = number("block_count")
    kv_heads = number("attention.head_count_kv") or number("attention.head_count")
    head_dim = number("attention.key_length")
    if head_dim is None:
        embedding, heads = number("embedding_length"), number("attention.head_count")
        head_dim = embedding // heads if embedding and heads else None
    if not (layers and kv_heads and head_dim):
        return None
    return 2 * layers * kv_heads * head_dim * 2, number("context_length") or (1 << 30)
