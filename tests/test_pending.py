"""The pending-job index: ordering within a model, aging, cancels, delayed retries."""

from __future__ import annotations

import pytest

from modelmanager.models import Priority
from modelmanager.pending import PendingIndex
from modelmanager.plan import Demand

T0 = 1_000.0
HIGH, NORMAL, LOW = Priority.HIGH, Priority.NORMAL, Priority.LOW


class Jobs:
    """Adds jobs with increasing store ``seq`` numbers, as the store hands them out."""

    def __init__(self, queue: PendingIndex) -> None:
        self.queue = queue
        self.seq = 0

    def add(
        self,
        job_id: str,
        model: str = "m",
        priority: Priority = NORMAL,
        submitted_at: float = T0,
        not_before: float = 0.0,
        now: float = T0,
    ) -> int:
        self.seq += 1
        self.queue.add(job_id, model, priority, self.seq, submitted_at, not_before, now)
        return self.seq


@pytest.fixture
def queue() -> PendingIndex:
    return PendingIndex(aging_seconds=60.0)


@pytest.fixture
def jobs(queue: PendingIndex) -> Jobs:
    return Jobs(queue)


def brief(d: Demand) -> tuple[str, int, int, float]:
    """(runner, waiting, best rank, oldest submit time) of a demand."""
    return (d.runner, d.waiting, d.rank, d.oldest_submitted_at)


def demand_of(
    queue: PendingIndex, model: str, now: float = T0
) -> tuple[str, int, int, float] | None:
    return next((brief(d) for d in queue.demand(now) if d.runner == model), None)


def test_queue_is_fifo_within_a_priority(queue: PendingIndex, jobs: Jobs) -> None:
    for i in range(5):
        jobs.add(f"j{i}", submitted_at=T0 + i)
    assert queue.pop("m", 2, T0 + 5) == ["j0", "j1"]
    assert queue.pop("m", 10, T0 + 5) == ["j2", "j3", "j4"]
    assert queue.pop("m", 10, T0 + 5) == []


def test_queue_orders_by_store_seq_not_by_arrival(queue: PendingIndex) -> None:
    # rebuilt from the store after a restart, rows may arrive in any order
    queue.add("third", "m", NORMAL, 3, T0)
    queue.add("first", "m", NORMAL, 1, T0)
    queue.add("second", "m", NORMAL, 2, T0)
    assert queue.pop("m", 3, T0) == ["first", "second", "third"]


def test_queue_serves_high_before_normal_before_low(queue: PendingIndex, jobs: Jobs) -> None:
    jobs.add("low", priority=LOW)
    jobs.add("normal", priority=NORMAL)
    jobs.add("high1", priority=HIGH)
    jobs.add("high2", priority=HIGH)
    assert queue.pop("m", 4, T0) == ["high1", "high2", "normal", "low"]


def test_queue_pop_takes_only_the_model_asked_for(queue: PendingIndex, jobs: Jobs) -> None:
    jobs.add("a1", model="a")
    jobs.add("b1", model="b", priority=HIGH)
    jobs.add("a2", model="a")
    assert queue.pop("a", 10, T0) == ["a1", "a2"]
    assert queue.pop("unknown", 10, T0) == []
    assert [d.runner for d in queue.demand(T0)] == ["b"]


@pytest.mark.parametrize(
    ("now", "order"),
    [
        # 15 s after submit the low job has aged one level (low -> normal): highs still first
        (T0 + 15, ["high1", "high2", "low"]),
        # 20 s: aged two levels (rank 0, as high) and older (smaller seq): it goes first
        (T0 + 20, ["low", "high1", "high2"]),
        (T0 + 500, ["low", "high1", "high2"]),
    ],
)
def test_queue_aging_lets_a_waiting_low_job_overtake_newer_high_jobs(
    now: float, order: list[str]
) -> None:
    queue = PendingIndex(aging_seconds=10.0)
    jobs = Jobs(queue)
    jobs.add("low", priority=LOW, submitted_at=T0)
    jobs.add("high1", priority=HIGH, submitted_at=now)
    jobs.add("high2", priority=HIGH, submitted_at=now)
    assert queue.pop("m", 3, now) == order


@pytest.mark.parametrize(("waited", "rank"), [(0, 2), (9.9, 2), (10, 1), (25, 0), (45, -2)])
def test_queue_demand_rank_improves_with_aging(waited: float, rank: int) -> None:
    queue = PendingIndex(aging_seconds=10.0)
    queue.add("j", "m", LOW, 1, T0)
    assert [brief(d) for d in queue.demand(T0 + waited)] == [("m", 1, rank, T0)]


def test_queue_demand_counts_and_ranks_every_model(queue: PendingIndex, jobs: Jobs) -> None:
    jobs.add("a1", model="a", priority=LOW, submitted_at=T0)
    jobs.add("a2", model="a", priority=NORMAL, submitted_at=T0 + 5)
    jobs.add("b1", model="b", priority=HIGH, submitted_at=T0 + 9)
    jobs.add("c1", model="c", priority=NORMAL, submitted_at=T0 + 1)
    demand = {d.runner: d for d in queue.demand(T0 + 10)}
    assert {k: brief(d) for k, d in demand.items()} == {
        "a": ("a", 2, NORMAL.rank, T0),
        "b": ("b", 1, HIGH.rank, T0 + 9),
        "c": ("c", 1, NORMAL.rank, T0 + 1),
    }
    # per priority: counts, and the effective rank of each priority's oldest job
    assert (demand["a"].counts, demand["a"].ranks) == ((0, 1, 1), (None, 1, 2))
    assert (demand["b"].counts, demand["b"].ranks) == ((1, 0, 0), (0, None, None))


def test_queue_remove_skips_a_cancelled_job_and_fixes_counts(
    queue: PendingIndex, jobs: Jobs
) -> None:
    for name in ("j1", "j2", "j3"):
        jobs.add(name)
    assert queue.remove("j1") is True  # the head of its heap
    assert queue.remove("j2") is True
    assert queue.remove("j2") is False  # already gone
    assert queue.remove("never") is False
    assert len(queue) == 1
    assert demand_of(queue, "m") == ("m", 1, NORMAL.rank, T0)
    assert queue.depth_by_model() == {"m": {"high": 0, "normal": 1, "low": 0}}
    assert queue.pop("m", 10, T0) == ["j3"]


def test_queue_remove_of_a_job_in_the_middle(queue: PendingIndex, jobs: Jobs) -> None:
    for name in ("j1", "j2", "j3"):
        jobs.add(name)
    queue.remove("j2")
    assert queue.pop("m", 10, T0) == ["j1", "j3"]
    assert len(queue) == 0
    assert queue.demand(T0) == []


def test_queue_removing_every_job_leaves_no_demand(queue: PendingIndex, jobs: Jobs) -> None:
    jobs.add("j1", priority=HIGH)
    jobs.add("j2", priority=LOW)
    queue.remove("j1")
    queue.remove("j2")
    assert queue.demand(T0) == []
    assert queue.pop("m", 10, T0) == []
    assert queue.depth_by_model() == {}


def test_queue_delayed_retry_appears_only_after_release(queue: PendingIndex, jobs: Jobs) -> None:
    jobs.add("retry", not_before=T0 + 5, now=T0)
    assert queue.demand(T0) == []
    assert queue.pop("m", 10, T0) == []
    assert len(queue) == 1  # still waiting, just not yet
    assert queue.depth_by_model() == {"m": {"high": 0, "normal": 1, "low": 0}}
    assert queue.next_delayed_at() == T0 + 5
    assert queue.release_delayed(T0 + 4.9) == 0
    assert queue.demand(T0 + 4.9) == []
    assert queue.release_delayed(T0 + 5) == 1
    assert queue.next_delayed_at() is None
    assert demand_of(queue, "m", T0 + 5) is not None
    assert queue.pop("m", 10, T0 + 5) == ["retry"]


def test_queue_not_before_in_the_past_is_not_delayed(queue: PendingIndex, jobs: Jobs) -> None:
    jobs.add("j", not_before=T0 - 1, now=T0)
    assert queue.next_delayed_at() is None
    assert queue.pop("m", 1, T0) == ["j"]


def test_queue_retried_job_keeps_its_original_place(queue: PendingIndex) -> None:
    for seq, name in enumerate(("first", "second", "third"), start=1):
        queue.add(name, "m", NORMAL, seq, T0 + seq)
    assert queue.pop("m", 1, T0 + 10) == ["first"]
    # its attempt failed: it comes back with its old seq after a backoff
    queue.add("first", "m", NORMAL, 1, T0 + 1, not_before=T0 + 12, now=T0 + 10)
    queue.add("fourth", "m", NORMAL, 4, T0 + 11)
    queue.release_delayed(T0 + 12)
    assert queue.pop("m", 10, T0 + 12) == ["first", "second", "third", "fourth"]


def test_queue_cancelled_delayed_retry_is_never_released(queue: PendingIndex, jobs: Jobs) -> None:
    jobs.add("retry", not_before=T0 + 5, now=T0)
    jobs.add("other")
    assert queue.remove("retry") is True
    assert len(queue) == 1
    assert queue.release_delayed(T0 + 5) == 0
    assert queue.pop("m", 10, T0 + 5) == ["other"]
    assert queue.demand(T0 + 5) == []


def test_queue_drop_model_returns_its_waiting_jobs(queue: PendingIndex, jobs: Jobs) -> None:
    jobs.add("a1", model="a")
    jobs.add("a2", model="a", priority=HIGH)
    jobs.add("a3", model="a")
    jobs.add("b1", model="b")
    queue.remove("a3")
    assert sorted(queue.drop_model("a")) == ["a1", "a2"]
    assert [d.runner for d in queue.demand(T0)] == ["b"]
    assert len(queue) == 1
    assert queue.depth_by_model() == {"b": {"high": 0, "normal": 1, "low": 0}}
    assert queue.drop_model("a") == []
    assert queue.pop("a", 10, T0) == []


def test_queue_drop_model_includes_delayed_retries(queue: PendingIndex, jobs: Jobs) -> None:
    # a model that can never fit: its jobs waiting out a backoff must fail with the rest
    jobs.add("now", model="a")
    jobs.add("later", model="a", not_before=T0 + 30, now=T0)
    jobs.add("b-later", model="b", not_before=T0 + 30, now=T0)
    assert sorted(queue.drop_model("a")) == ["later", "now"]
    assert queue.depth_by_model() == {"b": {"high": 0, "normal": 1, "low": 0}}
    assert queue.release_delayed(T0 + 30) == 1
    assert [d.runner for d in queue.demand(T0 + 30)] == ["b"]


def test_queue_depth_by_model_counts_every_priority(queue: PendingIndex, jobs: Jobs) -> None:
    jobs.add("a1", model="a", priority=HIGH)
    jobs.add("a2", model="a", priority=LOW)
    jobs.add("a3", model="a", priority=LOW, not_before=T0 + 9, now=T0)
    jobs.add("b1", model="b")
    assert queue.depth_by_model() == {
        "a": {"high": 1, "normal": 0, "low": 2},
        "b": {"high": 0, "normal": 1, "low": 0},
    }
    assert len(queue) == 4


def test_queue_add_many_indexes_store_rows(queue: PendingIndex) -> None:
    rows = [
        ("j1", "a", "low", 1, T0, 0.0),
        ("j2", "a", "high", 2, T0, 0.0),
        ("j3", "b", "normal", 3, T0, T0 + 60),  # still backing off
    ]
    assert queue.add_many(rows, T0) == 3
    assert len(queue) == 3
    assert queue.pop("a", 10, T0) == ["j2", "j1"]
    assert queue.pop("b", 10, T0) == []
    queue.release_delayed(T0 + 60)
    assert queue.pop("b", 10, T0 + 60) == ["j3"]


def test_a_job_removed_and_indexed_again_is_taken_once_and_others_stay() -> None:
    """A cancelled job put back (retry), or one indexed twice (a submit and a re-read of
    the store), is one waiting job: popped once, the others of its model still there."""
    p = PendingIndex(60.0)
    p.add("J", "m", Priority.LOW, 1, 0.0, name="m")
    assert p.remove("J")
    p.add("J", "m", Priority.LOW, 1, 0.0)
    p.add("J", "m", Priority.LOW, 1, 0.0)  # indexed twice: still one
    p.add("K", "m", Priority.LOW, 2, 0.0)
    assert len(p) == 2 and [d.waiting for d in p.demand(1.0)] == [2]
    assert p.pop("m", 1, 1.0) == ["J"]
    assert p.pop("m", 5, 1.0) == ["K"]
    assert p.demand(1.0) == [] and len(p) == 0


def test_a_delayed_retry_removed_and_indexed_again_runs_once() -> None:
    p = PendingIndex(60.0)
    p.add("J", "m", Priority.NORMAL, 1, 0.0, not_before=5.0, now=1.0)
    assert p.remove("J")
    p.add("J", "m", Priority.NORMAL, 1, 0.0, not_before=3.0, now=1.0)
    assert p.release_delayed(10.0) == 1  # the stale delayed entry is skipped
    assert p.pop("m", 5, 10.0) == ["J"] and len(p) == 0
