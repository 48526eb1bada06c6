"""The warm pool's disk side: keep PRELOAD_MODELS downloaded on every node.

A background thread, apart from the scheduler, checks every node at start and then every
PRELOAD_INTERVAL seconds: each model of PRELOAD_MODELS that a node lacks (``NOT_FOUND``)
or has only in part (``PARTIAL``) is downloaded there through
:class:`~modelmanager.downloads.Downloads`, logging "Pre-downloading model X for node Y".
A node whose Ollama lacks ``/api/pull`` (an older version, :mod:`modelmanager.features`)
is skipped, logged once.

It never fails and never stops on a node's account: a node that cannot be reached is
logged and tried again at the next check, one whose Ollama cannot download
(no ``/api/pull``) is skipped with one log line, a model already downloading is left
alone, and a download refused because MAX_DOWNLOADS run on the node is tried again as
soon as one of them ends. (PINNED_MODELS, the VRAM side of the warm pool, is the
planner's: :mod:`modelmanager.planner`.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from .backend import Backend
from .downloads import DiskStatus, Download, Downloads
from .errors import BackendTimeout, BackendUnavailable, Conflict, OllamaError, QueueFull
from .features import Feature
from .logger import escape, get_logger
from .names import model_key

log = get_logger("DISK")


class WarmPool:
    """Downloads ``models`` onto every backend ``backends()`` gives, every ``interval``
    seconds (see the module docstring). :meth:`check` is one pass, callable from tests;
    :meth:`start` runs passes on a thread until :meth:`stop`."""

    def __init__(
        self,
        models: list[str],
        downloads: Downloads,
        backends: Callable[[], Mapping[str, Backend]],
        *,
        interval: float,
    ) -> None:
        self.models = models
        self.downloads = downloads
        self.backends = backends
        self.interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._no_pull: set[str] = set()
        self._refused = False  # a download waits for a free slot (MAX_DOWNLOADS)
        self.passes = 0
        downloads.on_end(self._download_ended)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="warm-pool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def wake(self) -> None:
        """Check again now (a node was added)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.check()
            except Exception:
                log.exception("warm pool check failed; trying again at the next one")
            self._wake.wait(self.interval)

    def _download_ended(self, download: Download) -> None:
        if self._refused:
            self._wake.set()  # a slot is free: start what was refused

    # ------------------------------------------------------------------------ a pass

    def check(self) -> None:
        """One pass over every node and model (never raises for a node's sake)."""
        self._refused = False
        for backend in list(self.backends().values()):
            if self._stop.is_set():
                return
            if self.models and backend.name not in self._no_pull:
                self._check_node(backend)
        self.passes += 1

    def _check_node(self, backend: Backend) -> None:
        node = backend.name
        if not backend.features.supports(Feature.PULL):
            self._no_pull.add(node)  # its skip is logged once, by its Features
            return
        try:
            installed = {_key(t.get("name") or t.get("model")) for t in backend.client.tags()}
        except (BackendUnavailable, BackendTimeout) as exc:
            log.warning("Failed to check model status on node %s: %s", node, escape(exc.message))
            return
        except OllamaError as exc:
            log.warning("Failed to list the models of node %s: %s", node, escape(exc.message))
            return
        for name in self.models:
            key = model_key(name)
            if key in installed:
                continue
            if self.downloads.running(node, key) is not None:
                log.info("Model %s already downloading on node %s", name, node)
                continue
            ended = self.downloads.outcome(node, key)
            status = ended.status if ended is not None else DiskStatus.NOT_FOUND
            log.info("Pre-downloading model %s for node %s (%s)", name, node, status.value)
            try:
                self.downloads.start(name, node, reason="PRELOAD_MODELS")
            except Conflict:
                continue  # started meanwhile
            except QueueFull:
                self._refused = True
                log.info(
                    "MAX_DOWNLOADS downloads run on node %s; %s starts when one ends", node, name
                )
            except KeyError:
                return  # the node was removed meanwhile


def _key(name: object) -> str:
    try:
        return model_key(str(name))
    except ValueError:
        return str(name)
