"""The pending-job index: waiting jobs by runner and priority, in memory, for the scheduler.

The store is the truth; this is an index of the jobs that wait (ids and ordering keys
only, never payloads, so 100,000 waiting jobs cost a few tens of MB). Jobs are grouped by
*runner* (a model with its runner options, :mod:`modelmanager.runners`): the ``model``
arguments and fields below are runner keys. Per runner there is a heap per priority keyed
by store ``seq`` (FIFO within a priority; a retried job keeps its place). Jobs whose retry
backoff has not elapsed sit in one delayed heap.

Aging: a job's effective rank is ``priority.rank - floor(wait / aging_seconds)``, so a
waiting low-priority job eventually outranks fresh high-priority work. All work per tick is
O(models), not O(jobs). Thread-safe: one lock.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import threading
from collections import deque
from collections.abc import Iterable

from .models import Priority
from .plan import Demand

_PRIORITIES = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
ARRIVALS_KEPT = 1024  # submit times kept per runner, to estimate how fast jobs arrive


def effective_rank(priority: Priority, submitted_at: float, now: float, aging: float) -> int:
    return priority.rank - math.floor(max(0.0, now - submitted_at) / aging)


_Entry = tuple[int, float, str, int]  # (seq, submitted_at, job_id, token)


class _ModelQueue:
    __slots__ = ("counts", "heaps")

    def __init__(self) -> None:
        # one heap per priority rank of entries, and its live count
        self.heaps: tuple[list[_Entry], ...] = ([], [], [])
        self.counts = [0, 0, 0]

    @property
    def count(self) -> int:
        return sum(self.counts)


class PendingIndex:
    def __init__(self, aging_seconds: float) -> None:
        self.aging = aging_seconds
        self._lock = threading.Lock()
        self._models: dict[str, _ModelQueue] = {}
        # job_id -> (model, priority, token of its live entry, waiting out a delay). A heap
        # entry whose token is not its job's current one is stale (lazy deletion): the
        # job was removed, or removed and indexed again, since it was pushed.
        self._where: dict[str, tuple[str, Priority, int, bool]] = {}
        self._delayed: list[tuple[float, int, str, str, Priority, float, int]] = []
        self._tokens = itertools.count()
        self._names: dict[str, str] = {}  # runner -> a model name a client spelled it with
        self._arrivals: dict[str, deque[float]] = {}  # runner -> submit times of new jobs

    def add(
        self,
        job_id: str,
        model: str,
        priority: Priority,
        seq: int,
        submitted_at: float,
        not_before: float = 0.0,
        now: float = 0.0,
        name: str | None = None,
    ) -> None:
        """Index a waiting job (or re-index a retried one). ``name`` is the model name a
        client sent, given for a new job: it is remembered per runner (:meth:`name_of`)
        and the job counts as an arrival (:meth:`arrivals_since`)."""
        with self._lock:
            if job_id in self._where:
                return  # indexed already (a submit and a re-read of the store may meet)
            if name is not None:
                self._names.setdefault(model, name)
                times = self._arrivals.get(model)
                if times is None:
                    times = self._arrivals[model] = deque(maxlen=ARRIVALS_KEPT)
                times.append(submitted_at)
            token = next(self._tokens)
            if not_before > now:
                heapq.heappush(
                    self._delayed,
                    (not_before, seq, job_id, model, priority, submitted_at, token),
                )
                self._where[job_id] = (model, priority, token, True)
                return
            self._push(job_id, model, priority, seq, submitted_at, token)

    def add_many(self, rows: Iterable[tuple[str, str, str, int, float, float]], now: float) -> int:
        """Index (id, model, priority, seq, submitted_at, not_before) rows; return count."""
        n = 0
        for job_id, model, priority, seq, submitted_at, not_before in rows:
            self.add(job_id, model, Priority(priority), seq, submitted_at, not_before, now)
            n += 1
        return n

    def _push(
        self, job_id: str, model: str, priority: Priority, seq: int, submitted: float, token: int
    ) -> None:
        q = self._models.get(model)
        if q is None:
            q = self._models[model] = _ModelQueue()
        heapq.heappush(q.heaps[priority.rank], (seq, submitted, job_id, token))
        q.counts[priority.rank] += 1
        self._where[job_id] = (model, priority, token, False)

    def _live(self, job_id: str, token: int) -> bool:
        where = self._where.get(job_id)
        return where is not None and where[2] == token

    def remove(self, job_id: str) -> bool:
        """Forget a job (cancelled). Returns False if it was not waiting here."""
        with self._lock:
            where = self._where.pop(job_id, None)
            if where is None:
                return False
            q = self._models.get(where[0])
            if not where[3] and q is not None:  # in a model queue, not waiting out a delay
                q.counts[where[1].rank] -= 1
            return True  # its entry is stale now

    def release_delayed(self, now: float) -> int:
        """Move jobs whose backoff has elapsed into their model queues."""
        moved = 0
        with self._lock:
            while self._delayed and self._delayed[0][0] <= now:
                _, seq, job_id, model, priority, submitted, token = heapq.heappop(self._delayed)
                if not self._live(job_id, token):
                    continue
                self._push(job_id, model, priority, seq, submitted, token)
                moved += 1
        return moved

    def next_delayed_at(self) -> float | None:
        with self._lock:
            return self._delayed[0][0] if self._delayed else None

    def _clean_head(self, heap: list[_Entry]) -> None:
        while heap and not self._live(heap[0][2], heap[0][3]):
            heapq.heappop(heap)

    def demand(self, now: float) -> list[Demand]:
        """Per runner with waiting jobs: counts and effective rank per priority, the best
        rank, the oldest submit time."""
        out: list[Demand] = []
        with self._lock:
            for model, q in self._models.items():
                if q.count <= 0:
                    continue
                ranks: list[int | None] = [None, None, None]
                oldest = math.inf
                for i, (prio, heap) in enumerate(zip(_PRIORITIES, q.heaps, strict=True)):
                    self._clean_head(heap)
                    if heap and q.counts[i] > 0:
                        submitted = heap[0][1]
                        ranks[i] = effective_rank(prio, submitted, now, self.aging)
                        oldest = min(oldest, submitted)
                best = min(r for r in ranks if r is not None)
                out.append(
                    Demand(
                        model,
                        q.count,
                        best,
                        oldest,
                        (q.counts[0], q.counts[1], q.counts[2]),
                        (ranks[0], ranks[1], ranks[2]),
                    )
                )
        return out

    def pop(self, model: str, n: int, now: float) -> list[str]:
        """Take up to ``n`` job ids of ``model``: best effective rank first, FIFO within."""
        out: list[str] = []
        with self._lock:
            q = self._models.get(model)
            if q is None:
                return out
            while len(out) < n and q.count > 0:
                best: tuple[int, int, int] | None = None  # (rank, seq, heap index)
                for i, (prio, heap) in enumerate(zip(_PRIORITIES, q.heaps, strict=True)):
                    self._clean_head(heap)
                    if heap:
                        seq, submitted = heap[0][0], heap[0][1]
                        cand = (effective_rank(prio, submitted, now, self.aging), seq, i)
                        if best is None or cand < best:
                            best = cand
                if best is None:
                    break
                job_id = heapq.heappop(q.heaps[best[2]])[2]
                q.counts[best[2]] -= 1
                del self._where[job_id]
                out.append(job_id)
            if q.count <= 0 and not any(q.heaps):
                del self._models[model]
        return out

    def drop_model(self, model: str) -> list[str]:
        """Remove and return every waiting job of ``model`` (e.g. it can never fit)."""
        with self._lock:
            q = self._models.pop(model, None)
            ids: list[str] = []
            if q is not None:
                ids = [e[2] for heap in q.heaps for e in heap if self._live(e[2], e[3])]
            # retries waiting out their backoff are waiting jobs of the model too
            kept = [e for e in self._delayed if e[3] != model]
            if len(kept) != len(self._delayed):
                ids += [e[2] for e in self._delayed if e[3] == model and self._live(e[2], e[6])]
                heapq.heapify(kept)
                self._delayed = kept
            for job_id in ids:
                self._where.pop(job_id, None)
            return ids

    def arrivals_since(self, runner: str, since: float) -> int:
        """How many new jobs for ``runner`` were submitted after ``since`` (of the last
        :data:`ARRIVALS_KEPT`)."""
        with self._lock:
            times = self._arrivals.get(runner)
            if not times:
                return 0
            ordered = list(times)
        return len(ordered) - bisect.bisect_right(ordered, since)

    def name_of(self, runner: str) -> str | None:
        """A model name a client submitted a job of ``runner`` with, if one was seen."""
        with self._lock:
            return self._names.get(runner)

    def ids(self) -> set[str]:
        """The ids of every job indexed (waiting or delayed)."""
        with self._lock:
            return set(self._where)

    def __len__(self) -> int:
        with self._lock:
            return len(self._where)

    def depth_by_model(self) -> dict[str, dict[str, int]]:
        """{model: {priority: waiting}} including delayed retries."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for model, prio, _, _ in self._where.values():
                per = out.setdefault(model, {p.value: 0 for p in _PRIORITIES})
                per[prio.value] += 1
        return out
