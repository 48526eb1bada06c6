"""Model downloads: Ollama pulls that the manager runs, watches, retries and cancels.

A download is one model pulled onto one node (``POST /api/pull``, read as it streams:
OLLAMA_FACTS §1.6). At most ``MAX_DOWNLOADS`` run at once per node; a second download of
a model already downloading there is refused. Each runs on its own thread: a pull that
fails with a transient error (connection lost, a stalled or broken stream such as
Ollama's ``max retries exceeded: unexpected EOF``) is tried again after a capped,
jittered backoff, up to ``MAX_ATTEMPTS`` tries, and then ends ``PARTIAL`` with the
backend's own message (Ollama keeps the bytes it has in ``-partial`` files and the next
pull resumes them, ``server/download.go``). A model the registry does not have ends
``NOT_FOUND`` at once (``pull model manifest: file does not exist``).

Progress is what Ollama streams: per layer, its ``digest``, ``total`` and ``completed``
bytes every 60 ms; a download's ``total_bytes`` is the sum over the layers announced so
far (Ollama announces each layer when it reaches it, the large weights first), and
``completed_bytes`` the sum of their completed bytes.

The latest outcome per node and model is kept in the store (``Store.save_download``):
a download under way when the service stopped is started again at the next start
(:meth:`Downloads.resume`), and a ``PARTIAL`` one is reported as such until the model is
downloaded or deleted. Listeners (:meth:`Downloads.on_end`) learn of each end: the
scheduler (jobs waiting for the model) and the warm pool.

Thread safety: every method may be called from any thread; one lock guards the table of
downloads under way.
"""

from __future__ import annotations

import enum
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .abortable import Call
from .backend import Backend
from .errors import (
    BackendTimeout,
    Conflict,
    EndpointNotAvailable,
    ModelNotFound,
    OllamaError,
    QueueFull,
    RequestAborted,
)
from .features import Feature
from .logger import escape, get_logger
from .model_registry import ModelRegistry
from .names import model_key
from .store import Store
from .verdicts import backoff_delay

log = get_logger("DISK")

RETRY_AFTER_DEFAULT = 5  # seconds a refused download is told to wait when no rate is known
RETRY_AFTER_MAX = 300


class DiskStatus(enum.StrEnum):
    """Where a model stands on a node's disk."""

    DOWNLOADED = "DOWNLOADED"  # listed by the node's /api/tags
    DOWNLOADING = "DOWNLOADING"  # a download is under way
    NOT_FOUND = "NOT_FOUND"  # not there (and no download stopped part way)
    PARTIAL = "PARTIAL"  # a download stopped part way (it failed, or the node lacks pull)


@dataclass
class Download:
    """One pull of ``name`` (model identity ``model``) onto ``node``; times in seconds
    since the epoch, sizes in bytes. Changed by its own thread; read by any."""

    task_id: str
    node: str
    model: str
    name: str
    reason: str  # who asked: "request", "AUTO_PULL", "PRELOAD_MODELS", "resumed"
    started_at: float
    call: Call = field(default_factory=Call)
    stop: threading.Event = field(default_factory=threading.Event)
    totals: dict[str, int] = field(default_factory=dict)  # layer digest -> bytes
    done: dict[str, int] = field(default_factory=dict)  # layer digest -> bytes completed
    counted: bool = False  # the stream carried byte counts
    attempts: int = 0
    status: DiskStatus = DiskStatus.DOWNLOADING
    error: OllamaError | None = None
    cancelled: bool = False

    def seen(self, obj: dict[str, Any]) -> None:
        """One object of the pull stream (``api.ProgressResponse``)."""
        digest, total = obj.get("digest"), obj.get("total")
        if isinstance(digest, str) and isinstance(total, int) and not isinstance(total, bool):
            self.counted = True
            self.totals[digest] = total
            completed = obj.get("completed", 0)  # left out while 0 (omitempty)
            if isinstance(completed, int) and not isinstance(completed, bool):
                self.done[digest] = completed

    def progress(self, now: float) -> dict[str, Any]:
        """``start_time`` (epoch seconds), ``elapsed_seconds``, ``completed_bytes`` and
        ``total_bytes`` (None while the node reported no byte counts)."""
        counted = self.counted
        return {
            "start_time": self.started_at,
            "elapsed_seconds": round(max(0.0, now - self.started_at), 3),
            "completed_bytes": sum(self.done.values()) if counted else None,
            "total_bytes": sum(self.totals.values()) if counted else None,
        }

    def seconds_left(self, now: float) -> float | None:
        """Seconds to the end at the rate so far, if it can be told."""
        elapsed = now - self.started_at
        done, total = sum(self.done.values()), sum(self.totals.values())
        if not self.counted or done <= 0 or elapsed <= 0 or total <= done:
            return None
        return (total - done) / (done / elapsed)


@dataclass(frozen=True)
class Outcome:
    """How the last download of a model on a node ended (``PARTIAL``, or ``NOT_FOUND``
    with the node's message); from the store."""

    node: str
    model: str
    name: str
    task_id: str
    status: DiskStatus
    started_at: float
    ended_at: float | None
    error: str | None


class Downloads:
    """The downloads under way and the outcomes of the last ones (see the module doc).

    ``backends`` gives the backends in use by name (the fleet's). ``max_per_node``,
    ``max_attempts`` and the backoff (``retry_base``, ``retry_max``, seconds) come from
    MAX_DOWNLOADS, MAX_ATTEMPTS and RETRY_BASE_SECONDS / RETRY_MAX_SECONDS.
    """

    def __init__(
        self,
        store: Store,
        registry: ModelRegistry,
        backends: Callable[[], Mapping[str, Backend]],
        *,
        max_per_node: int,
        max_attempts: int,
        retry_base: float,
        retry_max: float,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.backends = backends
        self.max_per_node = max_per_node
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._active: dict[tuple[str, str], Download] = {}
        self._outcomes: dict[tuple[str, str], Outcome] = {}
        self._interrupted: list[Outcome] = []
        self._threads: list[threading.Thread] = []
        self._listeners: list[Callable[[Download], None]] = []
        self._closed = False
        self._leaving: set[str] = set()  # nodes being unregistered: no new downloads
        for row in store.load_downloads():
            outcome = Outcome(*row[:4], DiskStatus(row[4]), *row[5:])
            if outcome.status is DiskStatus.DOWNLOADING:
                self._interrupted.append(outcome)
            else:
                self._outcomes[(outcome.node, outcome.model)] = outcome

    def on_end(self, listener: Callable[[Download], None]) -> None:
        """Call ``listener(download)`` when a download ends, however it ends (on the
        download's thread, after the model list was re-read); it must be quick."""
        self._listeners.append(listener)

    # ------------------------------------------------------------------------ start

    def start(self, name: str, node: str, *, reason: str = "request") -> Download:
        """Start pulling ``name`` onto ``node`` (a backend's name); returns at once.

        Raises :class:`KeyError` for an unknown node, :class:`Conflict` (409) when the
        model is downloading there already (``details.task_id`` is that download's) and
        :class:`QueueFull` (429, with ``Retry-After`` in seconds: the soonest a download
        there should end at its rate so far, else 5) when MAX_DOWNLOADS run there.
        """
        backend = self.backends()[node]
        key = model_key(name)
        now = self.clock()
        with self._lock:
            if self._closed:
                raise RuntimeError("the download manager is closed")
            if node in self._leaving:
                raise Conflict(
                    f"node {node} is being removed; no download starts there",
                    details={"node": node},
                )
            running = self._active.get((node, key))
            if running is not None:
                raise Conflict(
                    f"{name} is already downloading on node {node} (task {running.task_id})",
                    details={"model": name, "node": node, "task_id": running.task_id},
                )
            here = [d for (n, _), d in self._active.items() if n == node]
            if len(here) >= self.max_per_node:
                wait = self._retry_after(here, now)
                raise QueueFull(
                    f"{len(here)} downloads are running on node {node} (MAX_DOWNLOADS is "
                    f"{self.max_per_node}); retry in {wait} s",
                    details={"node": node, "downloads": len(here), "max": self.max_per_node},
                    headers={"Retry-After": str(wait)},
                )
            download = Download(str(uuid.uuid4()), node, key, name, reason, now)
            self._active[(node, key)] = download
            self._outcomes.pop((node, key), None)
        self.store.save_download(
            node,
            key,
            name=name,
            task_id=download.task_id,
            status=DiskStatus.DOWNLOADING.value,
            started_at=now,
        )
        thread = threading.Thread(
            target=self._run, args=(download, backend), name=f"download-{node}", daemon=True
        )
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        log.info("downloading %s on node %s (%s, task %s)", name, node, reason, download.task_id)
        thread.start()
        return download

    def _retry_after(self, running: list[Download], now: float) -> int:
        lefts = [s for d in running if (s := d.seconds_left(now)) is not None]
        if not lefts:
            return RETRY_AFTER_DEFAULT
        return int(min(RETRY_AFTER_MAX, max(1, math.ceil(min(lefts)))))

    def resume(self) -> int:
        """Start again the downloads the last run left under way (Ollama resumes their
        ``-partial`` files). Returns how many started."""
        with self._lock:
            interrupted, self._interrupted = self._interrupted, []
        started = 0
        for old in interrupted:
            try:
                self.start(old.name, old.node, reason="resumed")
                started += 1
            except KeyError:
                self.store.delete_download(old.node, old.model)  # the node is gone
            except (Conflict, QueueFull) as exc:
                log.warning("cannot resume the download of %s: %s", old.name, exc.message)
        return started

    # ------------------------------------------------------------------------ reads

    def active(self, model: str) -> bool:
        """Whether ``model`` (a model identity) is downloading on any node."""
        with self._lock:
            return any(m == model for _, m in self._active)

    def running(self, node: str, model: str) -> Download | None:
        """The download of ``model`` (identity) under way on ``node``, if any."""
        with self._lock:
            return self._active.get((node, model))

    def on(self, node: str) -> list[Download]:
        """The downloads under way on ``node``, oldest first."""
        with self._lock:
            return sorted(
                (d for (n, _), d in self._active.items() if n == node), key=lambda d: d.started_at
            )

    def outcome(self, node: str, model: str) -> Outcome | None:
        """How the last download of ``model`` (identity) on ``node`` ended, if it did not
        succeed and the model was not deleted since."""
        with self._lock:
            return self._outcomes.get((node, model))

    def outcomes(self, node: str) -> list[Outcome]:
        with self._lock:
            return [o for (n, _), o in self._outcomes.items() if n == node]

    # ----------------------------------------------------------------------- change

    def cancel(self, node: str, model: str) -> Download | None:
        """Stop the download of ``model`` (identity) on ``node`` now: its request is
        aborted, so Ollama stops pulling, and it is forgotten (the model reads
        ``NOT_FOUND``). Returns it, or None if none was under way."""
        with self._lock:
            download = self._active.pop((node, model), None)
            if download is None:
                return None
            download.cancelled = True
        download.stop.set()
        download.call.abort()
        self.store.delete_download(node, model)
        log.info("download of %s on node %s cancelled", download.name, node)
        return download

    def cancel_node(self, node: str) -> list[Download]:
        """The node is being unregistered: cancel its downloads under way (as
        :meth:`cancel`; none resumes at the next start) and refuse new ones there until
        a node of that name is registered again (:meth:`node_added`). Returns them."""
        with self._lock:
            self._leaving.add(node)
            models = [m for (n, m) in self._active if n == node]
        cancelled = [d for m in models if (d := self.cancel(node, m)) is not None]
        if cancelled:
            log.info(
                "node %s is being removed: %d download(s) there cancelled", node, len(cancelled)
            )
        return cancelled

    def node_added(self, node: str) -> None:
        """A node of this name was registered (again): downloads may start there."""
        with self._lock:
            self._leaving.discard(node)

    def forget(self, node: str, model: str) -> None:
        """Drop the recorded outcome of ``model`` (identity) on ``node`` (it was deleted)."""
        with self._lock:
            self._outcomes.pop((node, model), None)
        self.store.delete_download(node, model)

    def close(self, timeout: float = 5.0) -> None:
        """Abort every download under way (each resumes at the next start: its record
        stays ``DOWNLOADING``) and join their threads up to ``timeout`` seconds."""
        with self._lock:
            self._closed = True
            running = list(self._active.values())
            threads = list(self._threads)
        for download in running:
            download.stop.set()
            download.call.abort()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # ---------------------------------------------------------------------- running

    def _run(self, d: Download, backend: Backend) -> None:
        try:
            status, error = self._pull(d, backend)
        except Exception as exc:  # never let a download thread die silently
            log.exception("download of %s on node %s failed unexpectedly", d.name, d.node)
            status, error = DiskStatus.PARTIAL, OllamaError(f"unexpected error: {exc}")
        if d.stop.is_set():
            self._notify(d)  # cancelled (already forgotten) or closing (resumes later)
            return
        self._end(d, status, error)

    def _pull(self, d: Download, backend: Backend) -> tuple[DiskStatus, OllamaError | None]:
        while True:
            d.attempts += 1
            try:
                backend.client.pull(d.name, progress=d.seen, call=d.call)
            except RequestAborted as exc:
                return DiskStatus.PARTIAL, exc  # cancelled or closing: see _run
            except EndpointNotAvailable:
                backend.features.lacks(Feature.PULL)
                return DiskStatus.NOT_FOUND, OllamaError(
                    f"node {d.node}'s Ollama has no /api/pull (an older version)"
                )
            except ModelNotFound as exc:
                return DiskStatus.NOT_FOUND, exc
            except OllamaError as exc:
                if d.stop.is_set():
                    return DiskStatus.PARTIAL, exc
                # a pull may always be asked again (Ollama resumes its -partial files):
                # one that stalled before sending anything is retried as well
                retry = exc.transient or isinstance(exc, BackendTimeout)
                if not retry or d.attempts >= self.max_attempts:
                    return DiskStatus.PARTIAL, exc
                delay = backoff_delay(
                    d.attempts, self.retry_base, self.retry_max, self._rng.random()
                )
                log.warning(
                    "download of %s on node %s failed (attempt %d/%d): %s; retrying in %.1fs",
                    d.name,
                    d.node,
                    d.attempts,
                    self.max_attempts,
                    escape(exc.message),
                    delay,
                )
                if d.stop.wait(delay):
                    return DiskStatus.PARTIAL, exc
                continue
            # Ollama now lists it: let the scheduler see it before the download ends, so
            # that jobs waiting for it never find it neither downloading nor installed
            self.registry.refresh_tags(force=True)
            if not d.counted:
                backend.features.lacks(Feature.PULL_PROGRESS)
            return DiskStatus.DOWNLOADED, None

    def _end(self, d: Download, status: DiskStatus, error: OllamaError | None) -> None:
        now = self.clock()
        d.status, d.error = status, error
        key = (d.node, d.model)
        outcome = None
        if status is not DiskStatus.DOWNLOADED:
            outcome = Outcome(
                d.node,
                d.model,
                d.name,
                d.task_id,
                status,
                d.started_at,
                now,
                error.message if error else None,
            )
        with self._lock:
            if self._active.get(key) is d:
                del self._active[key]
            if outcome is not None:
                self._outcomes[key] = outcome
        if outcome is None:
            self.store.delete_download(d.node, d.model)
            log.info("downloaded %s on node %s in %.1fs", d.name, d.node, now - d.started_at)
        else:
            self.store.save_download(
                d.node,
                d.model,
                name=d.name,
                task_id=d.task_id,
                status=status.value,
                started_at=d.started_at,
                ended_at=now,
                error=outcome.error,
            )
            log.warning(
                "download of %s on node %s ended %s after %d attempt(s): %s",
                d.name,
                d.node,
                status.value,
                d.attempts,
                escape(outcome.error or ""),
            )
        self._notify(d)

    def _notify(self, d: Download) -> None:
        for listener in self._listeners:
            try:
                listener(d)
            except Exception:
                log.exception("a listener of download ends failed")
