"""REQUEST_TIMEOUT as a bound on silence, judged per runner.

The manager sends a loaded model more jobs than Ollama runs at once (``DISPATCH_AHEAD``),
so a request may wait in Ollama's queue behind another request of the same runner, and
gets no byte until a slot frees: while the one ahead streams its answer, the one behind
is waiting, not silent. A socket read timeout cannot tell the two apart, so inference
requests are read without one and this watch bounds their silence instead:

* a request that has received a chunk is silent since its own last chunk;
* a request still waiting for its first byte is silent since the later of its start and
  the last progress of its runner (``backend``, runner key): a chunk that any request of
  the runner received, or the end of one (its slot is then free for the next), unless it
  ended because it timed out itself (that is no progress of Ollama's);
* a request silent for ``limit`` seconds is aborted through its
  :class:`~modelmanager.abortable.Call` (with ``expired``), which the job runner reports
  as a :class:`~modelmanager.errors.BackendTimeout`; :attr:`Watched.behind` tells how
  many requests of the runner were ahead of it in its silence (as silent as it was).

Cost per chunk: one clock read and three attribute stores, no lock. One daemon thread
per watch wakes at the earliest deadline (started with the first request).

Thread safety: :meth:`SilenceWatch.watch`, :meth:`SilenceWatch.done`,
:meth:`SilenceWatch.close` and :meth:`Watched.seen` may be called from any thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .abortable import Call
from .logger import get_logger

log = get_logger("ENGINE")

_MIN_WAIT = 0.005  # seconds; the watch never spins faster than this


class _Runner:
    """One runner on one backend: its requests in flight, oldest first, and when it
    last made progress."""

    __slots__ = ("last", "requests")

    def __init__(self, now: float) -> None:
        self.last = now
        self.requests: list[Watched] = []


class Watched:
    """One request under the watch."""

    __slots__ = (
        "_clock",
        "ahead",
        "behind",
        "call",
        "chunks",
        "expired",
        "key",
        "last",
        "runner",
    )

    def __init__(
        self,
        key: tuple[str, str],
        call: Call,
        runner: _Runner,
        now: float,
        clock: Callable[[], float],
    ) -> None:
        self.key = key
        self.call = call
        self.runner = runner
        self.last = now  # its start, then its last chunk
        self.chunks = 0
        self.expired = False
        self.ahead = 0  # requests of its runner ahead of it since its runner last progressed
        self.behind = 0  # ``ahead`` when it expired
        self._clock = clock

    def seen(self) -> None:
        """A chunk of this request arrived: progress for it and for its runner."""
        now = self._clock()
        self.last = now
        self.runner.last = now
        self.chunks += 1

    def silent_since(self) -> float:
        if self.chunks:
            return self.last
        return max(self.last, self.runner.last)


class SilenceWatch:
    """Aborts requests that have been silent for ``limit`` seconds (see the module)."""

    def __init__(self, limit: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not limit > 0:
            raise ValueError(f"limit must be positive, got {limit!r}")
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._runners: dict[tuple[str, str], _Runner] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, backend: str, runner: str, call: Call) -> Watched:
        """Start watching a request about to be sent to ``runner`` on ``backend``."""
        key = (backend, runner)
        now = self._clock()
        with self._lock:
            state = self._runners.get(key)
            if state is None:
                state = self._runners[key] = _Runner(now)
            watched = Watched(key, call, state, now, self._clock)
            watched.ahead = len(state.requests)
            state.requests.append(watched)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._loop, name="silence-watch", daemon=True
                )
                self._thread.start()
        return watched

    def done(self, watched: Watched) -> None:
        """The request ended. Unless it timed out, that is progress: its slot frees for
        the requests behind it, whose silence starts over with one fewer ahead."""
        now = self._clock()
        with self._lock:
            state = self._runners.get(watched.key)
            if state is None:
                return
            if watched in state.requests:
                state.requests.remove(watched)
            if not state.requests:
                del self._runners[watched.key]
            elif not watched.expired:
                state.last = max(state.last, now)
                for ahead, other in enumerate(state.requests):
                    other.ahead = min(other.ahead, ahead)

    def close(self) -> None:
        """Stop the watch's thread (requests still in flight are no longer bounded)."""
        self._stop.set()

    def check(self) -> float:
        """Abort the requests silent for ``limit``; return the seconds until the next
        deadline (``limit`` when nothing is watched)."""
        now = self._clock()
        wait = self.limit
        expired: list[Watched] = []
        with self._lock:
            for state in self._runners.values():
                for watched in state.requests:
                    if watched.expired or watched.call.aborted:
                        continue
                    left = watched.silent_since() + self.limit - now
                    if left <= 0:
                        watched.expired = True
                        watched.behind = watched.ahead
                        expired.append(watched)
                    else:
                        wait = min(wait, left)
        for watched in expired:
            watched.call.abort(expired=True)
        return wait

    def _loop(self) -> None:
        wait = self.limit
        while not self._stop.wait(max(_MIN_WAIT, wait)):
            try:
                wait = self.check()
            except Exception:  # never let the watch die: requests would wait forever
                log.exception("silence watch: unexpected error")
                wait = self.limit
