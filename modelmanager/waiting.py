"""Waiting for a job to finish without polling: ``GET /api/job/<id>?wait=S``.

waitress answers each request on one of ``HTTP_THREADS`` threads, and a waiting request
holds its thread until it answers. :class:`JobWaiters` therefore lets at most ``limit``
requests wait at once (``MAX_WAITERS``, which the configuration keeps below
``HTTP_THREADS``): the other threads always remain for submits, polls and the rest, and
a request beyond the limit is answered at once with the job's current state (the HTTP
layer says so in the ``X-Wait`` header).

Waiters are woken by the store, not by polling it: ``Store.on_change`` calls
:meth:`JobWaiters.notify` with the ids of the jobs each committed write touched, which
sets the events of the requests waiting on them; a woken request reads the job again
(from the store's view cache) and answers if it has finished.

Thread-safe. ``notify`` runs on the store's writing thread and only sets events.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from enum import StrEnum

from .models import JobStatus

MAX_WAIT_SECONDS = 60.0
FINISHED = frozenset(s.value for s in JobStatus if s.terminal)


class WaitOutcome(StrEnum):
    """Why a ``?wait`` request answered (its ``X-Wait`` header)."""

    FINISHED = "finished"  # the job is complete, failed or cancelled
    TIMEOUT = "timeout"  # ``wait`` seconds passed first: the current state
    BUSY = "busy"  # MAX_WAITERS requests already wait: the current state, at once
    STOPPING = "stopping"  # the service is shutting down: the current state, at once


class JobWaiters:
    """Requests waiting for jobs to change, at most ``limit`` at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._events: dict[str, set[threading.Event]] = {}  # job id -> its waiters
        self._count = 0
        self._closed = False
        self.refused = 0  # requests answered at once because ``limit`` were waiting

    @property
    def waiting(self) -> int:
        return self._count

    def notify(self, job_ids: Collection[str] | None) -> None:
        """Wake the requests waiting on any of ``job_ids`` (None: on any job)."""
        if not self._events:  # one dict read: the common case, nobody waits
            return
        with self._lock:
            if job_ids is None:
                woken = [e for events in self._events.values() for e in events]
            elif len(job_ids) < len(self._events):
                woken = [e for i in job_ids for e in self._events.get(i, ())]
            else:
                woken = [e for i, events in self._events.items() if i in job_ids for e in events]
        for event in woken:
            event.set()

    def close(self) -> None:
        """Wake every waiter and refuse new ones (the service is stopping)."""
        with self._lock:
            self._closed = True
            woken = [e for events in self._events.values() for e in events]
        for event in woken:
            event.set()

    @contextmanager
    def _slot(self, job_id: str) -> Iterator[threading.Event | None]:
        """Hold one of the ``limit`` places, watching ``job_id``; yields its event, or
        None when every place is taken or the service is stopping."""
        event: threading.Event | None = None
        with self._lock:
            if not self._closed and self._count >= self.limit:
                self.refused += 1
            elif not self._closed:
                event = threading.Event()
                self._count += 1
                self._events.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            if event is not None:
                with self._lock:
                    self._count -= 1
                    events = self._events[job_id]
                    events.discard(event)
                    if not events:
                        del self._events[job_id]

    def wait(
        self,
        job_id: str,
        seconds: float,
        read: Callable[[str], bytes],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> tuple[bytes, WaitOutcome]:
        """The job's view (``read(job_id)``) once it has finished, or after ``seconds``.

        Answers at once when it has already finished, when ``limit`` requests wait
        already (BUSY) or when the service stops (STOPPING). ``read`` may raise (an
        unknown job): the error goes to the caller.
        """
        view = read(job_id)
        if _finished(view):
            return view, WaitOutcome.FINISHED
        deadline = clock() + seconds
        with self._slot(job_id) as event:
            if event is None:
                return view, WaitOutcome.STOPPING if self._closed else WaitOutcome.BUSY
            while True:
                # read after registering (and after each clear): a change committed since
                # the last read has either set the event or is in this view
                view = read(job_id)
                if _finished(view):
                    return view, WaitOutcome.FINISHED
                if self._closed:
                    return view, WaitOutcome.STOPPING
                left = deadline - clock()
                if left <= 0:
                    return view, WaitOutcome.TIMEOUT
                event.wait(left)
                event.clear()


def _finished(view: bytes) -> bool:
    """Whether a job view (``api.job_to_json`` as JSON) shows a finished job."""
    return json.loads(view)["status"] in FINISHED


def parse_wait(values: list[str]) -> float:
    """The ``wait`` query parameter: seconds, a JSON number with 0 < S <= 60.

    Raises ValueError with a sentence for anything else (missing value, repeated, not a
    number, out of range).
    """
    if len(values) != 1:
        raise ValueError("'wait' must be given once")
    text = values[0]
    try:
        seconds = json.loads(text) if text.strip() == text else None
    except ValueError:
        seconds = None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"'wait' must be a number of seconds, got {text[:40]!r}")
    if not 0 < seconds <= MAX_WAIT_SECONDS:
        raise ValueError(
            f"'wait' must be more than 0 and at most {MAX_WAIT_SECONDS:g} seconds, got {text[:40]}"
        )
    return float(seconds)
