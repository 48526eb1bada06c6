"""Answers in progress, relayed as Ollama produces them, for front doors that stream.

A front door that streams a job's answer to its client (Ollama's and OpenAI's APIs on
the manager's port) opens a :class:`Subscription` for the job before submitting it; the
job runner then publishes each object Ollama streams for that job, and one
:class:`Ended` when the attempt ends (complete, failed, retried or aborted). Jobs nobody
subscribed to cost one dictionary lookup per chunk.

Thread safety: publishing (job threads) and reading (HTTP threads) may run at once; a
subscription is read by one thread.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ended:
    """An attempt of the job ended: ``outcome`` is a :class:`~modelmanager.events.
    JobOutcome` value (``complete``, ``failed``, ``retry``, ``released``, ``aborted``,
    ``superseded``); ``error`` is the backend's message when it failed."""

    outcome: str
    error: str | None = None
    error_code: str | None = None


class Subscription:
    """The objects of one job's answer, in order, then :class:`Ended` per attempt."""

    def __init__(self, hub: StreamHub, job_id: str, live: bool = False) -> None:
        self.job_id = job_id
        self.live = live  # chunks go on to the client as they come (a streamed answer)
        self._hub = hub
        self._queue: queue.SimpleQueue[dict[str, Any] | Ended] = queue.SimpleQueue()

    def get(self, timeout: float | None = None) -> dict[str, Any] | Ended | None:
        """The next chunk (a JSON object as Ollama streamed it) or :class:`Ended`; None
        if nothing came within ``timeout`` seconds."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def empty(self) -> bool:
        """Whether nothing is waiting to be read."""
        return self._queue.empty()

    def close(self) -> None:
        """Stop receiving (idempotent)."""
        self._hub._drop(self)

    def _put(self, item: dict[str, Any] | Ended) -> None:
        self._queue.put(item)


class StreamHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[str, Subscription] = {}

    def subscribe(self, job_id: str, live: bool = False) -> Subscription:
        """Receive ``job_id``'s answer from now on (call it before the job can start).
        ``live``: each chunk goes on to a client as it comes, so an attempt that fails
        after publishing one must not be run again (:meth:`live`)."""
        sub = Subscription(self, job_id, live)
        with self._lock:
            self._subs[job_id] = sub
        return sub

    def watched(self, job_id: str) -> bool:
        return job_id in self._subs  # one dict read: atomic

    def live(self, job_id: str) -> bool:
        """Whether ``job_id``'s chunks reach a client as they come."""
        sub = self._subs.get(job_id)
        return sub is not None and sub.live

    def publish(self, job_id: str, chunk: dict[str, Any]) -> None:
        sub = self._subs.get(job_id)
        if sub is not None:
            sub._put(chunk)

    def end(self, job_id: str, ended: Ended) -> None:
        sub = self._subs.get(job_id)
        if sub is not None:
            sub._put(ended)

    def _drop(self, sub: Subscription) -> None:
        with self._lock:
            if self._subs.get(sub.job_id) is sub:
                del self._subs[sub.job_id]
