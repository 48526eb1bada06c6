"""Residency: carries out loads and unloads on a backend, on worker threads.

It never decides what to load (the planner does) and never touches runner state (the
scheduler does): each operation posts an event (:mod:`modelmanager.events`) when it ends.
It learns sizes and load times into the registry, and logs one line per load and unload
outcome. (Pulls are :mod:`modelmanager.downloads`'.)

An unload is finished only when Ollama no longer lists the model in ``/api/ps``; until
then the scheduler counts its memory and its seat. An Ollama without ``/api/ps`` (older)
cannot say: its unload counts as finished once Ollama accepted it. An embedding model is
loaded through ``/api/embed``, or the legacy ``/api/embeddings`` where that is missing
(:mod:`modelmanager.features`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from .backend import Backend
from .errors import EndpointNotAvailable, ModelNotFound, OllamaError, OutOfMemory
from .events import Event, LoadEnded, UnloadEnded
from .features import Feature
from .logger import escape, get_logger
from .model_registry import ModelRegistry
from .models import MIB

log = get_logger("ENGINE")

UNLOAD_DEADLINE = 60.0  # seconds an unload may take before it counts as failed
PS_POLL = 0.02  # seconds between /api/ps reads while an unload finishes


class Residency:
    """Loads and unloads, each on a worker thread, each ending in an event."""

    def __init__(
        self,
        registry: ModelRegistry,
        post: Callable[[Event], None],
        *,
        keep_alive: float,
        workers: int = 4,
    ) -> None:
        self.registry = registry
        self._post = post
        self.keep_alive = keep_alive  # what Ollama is told to keep our models for (s)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="residency")
        self._lock = threading.Lock()
        self._memory_ops = 0  # loads and unloads under way: an NVML delta is exact alone

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ----------------------------------------------------------------------- loads

    def load(
        self,
        backend: Backend,
        runner: str,
        label: str,
        name: str,
        options: Mapping[str, Any],
        kind: Literal["generate", "embed"],
        estimate: int,
        *,
        keep_alive: float | None = None,
    ) -> None:
        """Load ``runner`` (model ``name`` with runner ``options``) and have Ollama keep it
        ``keep_alive`` seconds (default: this residency's; negative: until unloaded);
        posts LoadEnded."""
        with self._lock:
            self._memory_ops += 1
        keep = self.keep_alive if keep_alive is None else keep_alive
        self._pool.submit(self._load, backend, runner, label, name, options, kind, estimate, keep)

    def _load(
        self,
        backend: Backend,
        runner: str,
        label: str,
        name: str,
        options: Mapping[str, Any],
        kind: Literal["generate", "embed"],
        estimate: int,
        keep_alive: float,
    ) -> None:
        t0 = time.monotonic()
        try:
            before = self._used_bytes(backend)
            log.info("loading %s (estimate %d MB)", label, estimate // MIB)
            self._send_load(backend, name, options, kind, keep_alive)
        except Exception as exc:  # never let a load thread die silently
            error = exc if isinstance(exc, OllamaError) else OllamaError(str(exc))
            if not isinstance(exc, OllamaError):
                log.exception("load of %s failed unexpectedly", label)
            elif isinstance(exc, OutOfMemory):
                log.warning("out of memory loading %s: %s", label, escape(exc.message))
            else:
                log.warning("load of %s failed (%s): %s", label, exc.code, escape(exc.message))
            self._end()
            self._post(LoadEnded(runner, backend.name, time.monotonic() - t0, error=error))
            return
        seconds = time.monotonic() - t0
        with self._lock:
            alone = self._memory_ops == 1
        snap = backend.snapshot()  # one read gives both size_vram and NVML used
        ps_vram = next((m.vram_bytes for m in snap.loaded if self.registry.holds(runner, m)), None)
        after = snap.used_bytes if snap.source == "nvml" else None
        delta = after - before if alone and before is not None and after is not None else None
        learned = self.registry.learn_load(
            runner, ps_vram_bytes=ps_vram, nvml_delta_bytes=delta, load_seconds=seconds
        )
        dropped = ps_vram is None and snap.backend_up and snap.ps_available
        size = learned or estimate
        log.info("loaded %s in %.2fs (%d MB)", label, seconds, size // MIB)
        self._end()
        self._post(LoadEnded(runner, backend.name, seconds, size, dropped=dropped))

    def _send_load(
        self,
        backend: Backend,
        name: str,
        options: Mapping[str, Any],
        kind: Literal["generate", "embed"],
        keep_alive: float,
    ) -> None:
        opts = dict(options) or None
        if kind == "embed" and backend.features.has(Feature.EMBED) is False:
            backend.client.load(name, keep_alive=keep_alive, options=opts, kind="embeddings")
            return
        try:
            backend.client.load(name, keep_alive=keep_alive, options=opts, kind=kind)
        except EndpointNotAvailable:
            if kind != "embed":
                raise
            backend.features.lacks(Feature.EMBED)
            backend.client.load(name, keep_alive=keep_alive, options=opts, kind="embeddings")

    def _used_bytes(self, backend: Backend) -> int | None:
        snap = backend.snapshot()
        return snap.used_bytes if snap.source == "nvml" else None

    def _end(self) -> None:
        with self._lock:
            self._memory_ops -= 1

    # ---------------------------------------------------------------------- unloads

    def unload(self, backend: Backend, runner: str, label: str, name: str) -> None:
        """Unload ``runner``; posts UnloadEnded once Ollama no longer lists it (or not)."""
        with self._lock:
            self._memory_ops += 1
        self._pool.submit(self._unload, backend, runner, label, name)

    def _unload(self, backend: Backend, runner: str, label: str, name: str) -> None:
        gone, why = False, "still listed in /api/ps"
        try:
            backend.client.unload(name)
            # Ollama answers at once; the model leaves /api/ps once really unloaded.
            deadline = time.monotonic() + UNLOAD_DEADLINE
            while time.monotonic() < deadline:
                if backend.features.has(Feature.PS) is False:
                    gone = True  # no /api/ps to watch: Ollama accepted the unload
                    break
                try:
                    listed = backend.client.ps()
                except EndpointNotAvailable:
                    backend.features.lacks(Feature.PS)
                    continue
                if not any(self.registry.holds(runner, m) for m in listed):
                    gone = True
                    break
                time.sleep(PS_POLL)  # polling Ollama, not waiting in a test
        except ModelNotFound:
            gone = True  # deleted from Ollama: nothing left to unload
        except OllamaError as exc:
            why = exc.message
        except Exception as exc:
            log.exception("unload of %s failed unexpectedly", label)
            why = str(exc)
        if gone:
            log.info("unloaded %s", label)
        else:
            log.warning("unload of %s failed (%s); it stays loaded", label, escape(why))
        self._end()
        self._post(UnloadEnded(runner, backend.name, gone, why))
