"""The job store, as one contract suite run against SQLite (a real file) and against a
real PostgreSQL (:mod:`tests.pg`): round trips, fencing, recovery, persistence, group
commit of concurrent submits, and the cached job views that polls read. Tests that name
``db_path`` or ``sqlite_store`` are about the SQLite file itself."""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelmanager.models import Job, JobKind, JobStatus, Priority
from modelmanager.runners import runner_key as K
from modelmanager.store import Store, _Views
from tests.conftest import wait_until
from tests.pg import fresh_url, pg_server  # noqa: F401 - pg_server is a fixture

T0 = 1_700_000_000.0


def make_job(
    job_id: str,
    model: str = "llama3.2:1b",
    *,
    priority: Priority = Priority.NORMAL,
    kind: JobKind = JobKind.GENERATE,
    payload: dict[str, Any] | None = None,
    metadata: Any = None,
    key: str | None = None,
    submitted_at: float = T0,
) -> Job:
    return Job(
        id=job_id,
        model=model,
        kind=kind,
        priority=priority,
        payload=payload if payload is not None else {"prompt": f"prompt of {job_id}"},
        metadata=metadata,
        submitted_at=submitted_at,
        idempotency_key=key,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, db_path: Path) -> Callable[[], Store]:
    """Opens a store on this test's database: a SQLite file, or a schema of its own in a
    real PostgreSQL. Every call opens the same database again (as after a restart)."""
    if request.param == "sqlite":
        return lambda: Store(db_path)
    from modelmanager.store_pg import PgStore

    url = fresh_url(request.getfixturevalue("pg_server"))
    return lambda: PgStore(url)


@pytest.fixture
def store(open_store: Callable[[], Store]) -> Iterator[Store]:
    s = open_store()
    yield s
    s.close()


@pytest.fixture
def sqlite_store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    yield s
    s.close()


def add(store: Store, *jobs: Job) -> list[Job]:
    return [job for job, _ in store.insert_jobs(list(jobs))]


def status(store: Store, job_id: str) -> JobStatus:
    job = store.get(job_id)
    assert job is not None
    return job.status


# ------------------------------------------------------------------------ insert / read


def test_store_insert_get_round_trip(store: Store) -> None:
    payload = {"messages": [{"role": "user", "content": "héllo \u2603"}], "options": {"seed": 1}}
    metadata = {"run": 7, "tags": ["a", "b"], "nested": {"x": None}}
    [(job, created)] = store.insert_jobs(
        [
            make_job(
                "j1",
                "qwen2.5:0.5b",
                priority=Priority.HIGH,
                kind=JobKind.CHAT,
                payload=payload,
                metadata=metadata,
                key="k-1",
            )
        ]
    )
    assert created is True
    assert job.seq > 0
    got = store.get("j1")
    assert got is not None
    assert got.model == "qwen2.5:0.5b"
    assert got.kind is JobKind.CHAT
    assert got.priority is Priority.HIGH
    assert got.status is JobStatus.PENDING
    assert got.payload == payload
    assert got.metadata == metadata
    assert got.idempotency_key == "k-1"
    assert got.submitted_at == T0
    assert got.attempts == 0
    assert got.seq == job.seq
    assert got.result is None and got.error is None and got.timings == {}


def test_store_get_unknown_job_is_none(store: Store) -> None:
    assert store.get("nope") is None


def test_store_seq_grows_in_insertion_order(store: Store) -> None:
    jobs = add(store, make_job("a"), make_job("b"))
    jobs += add(store, make_job("c"))
    seqs = [j.seq for j in jobs]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


def test_store_idempotency_key_returns_the_stored_job(store: Store) -> None:
    [(first, created)] = store.insert_jobs([make_job("j1", key="same")])
    assert created
    [(again, created_again)] = store.insert_jobs(
        [make_job("j2", key="same", payload={"prompt": "different"})]
    )
    assert created_again is False
    assert (again.id, again.seq) == ("j1", first.seq)
    assert again.payload == {"prompt": "prompt of j1"}
    assert store.get("j2") is None
    assert store.counts_by_status() == {"pending": 1}


def test_store_idempotency_key_within_one_batch(store: Store) -> None:
    results = store.insert_jobs([make_job("j1", key="k"), make_job("j2", key="k"), make_job("j3")])
    assert [(job.id, created) for job, created in results] == [
        ("j1", True),
        ("j1", False),
        ("j3", True),
    ]


def test_store_list_jobs_filters_and_is_newest_first(store: Store) -> None:
    add(
        store,
        make_job("a1", "a:latest"),
        make_job("b1", "b:latest"),
        make_job("a2", "a:latest"),
        make_job("a3", "a:latest"),
    )
    store.claim(["a2"], T0)
    assert [j.id for j in store.list_jobs()] == ["a3", "a2", "b1", "a1"]
    assert [j.id for j in store.list_jobs(model=K("a:latest"))] == ["a3", "a2", "a1"]
    assert [j.id for j in store.list_jobs(status="pending", model=K("a:latest"))] == ["a3", "a1"]
    assert [j.id for j in store.list_jobs(status="running")] == ["a2"]
    assert [j.id for j in store.list_jobs(limit=2)] == ["a3", "a2"]
    assert store.list_jobs(model=K("c:latest")) == []


def test_store_counts_by_status_and_unfinished(store: Store) -> None:
    add(store, *(make_job(f"j{i}") for i in range(5)))
    store.claim(["j0", "j1"], T0)
    store.complete("j0", 1, {"response": "ok"}, {}, T0 + 1)
    store.cancel("j2", T0)
    store.mark_queued(K("llama3.2:1b"))
    assert store.counts_by_status() == {
        "complete": 1,
        "running": 1,
        "cancelled": 1,
        "queued": 2,
    }


def test_store_waiting_jobs_lists_pending_in_seq_order(store: Store) -> None:
    jobs = add(
        store,
        make_job("j1", priority=Priority.LOW),
        make_job("j2", "other:latest", priority=Priority.HIGH),
        make_job("j3"),
    )
    store.claim(["j3"], T0)
    assert store.waiting_jobs() == [
        ("j1", K("llama3.2:1b"), "low", jobs[0].seq, T0, 0.0),
        ("j2", K("other:latest"), "high", jobs[1].seq, T0, 0.0),
    ]


# -------------------------------------------------------------------------- transitions


def test_store_claim_counts_the_attempt_and_runs_the_job(store: Store) -> None:
    add(store, make_job("pending"), make_job("queued", "q:latest"))
    assert store.mark_queued(K("q:latest")) == 1
    claimed = store.claim(["queued", "pending"], T0 + 5)
    assert [j.id for j in claimed] == ["queued", "pending"]  # the order asked for
    for job in claimed:
        assert job.status is JobStatus.RUNNING
        assert job.attempts == 1
        assert job.started_at == T0 + 5
    assert status(store, "pending") is JobStatus.RUNNING


def test_store_claim_skips_cancelled_and_running_jobs(store: Store) -> None:
    add(store, make_job("a"), make_job("b"), make_job("c"))
    store.cancel("a", T0)
    store.claim(["b"], T0)
    claimed = store.claim(["a", "b", "c"], T0 + 1)
    assert [j.id for j in claimed] == ["c"]
    b = store.get("b")
    assert b is not None and b.attempts == 1  # not counted twice
    assert status(store, "a") is JobStatus.CANCELLED
    assert store.claim([], T0) == []


def test_store_unmark_queued_puts_jobs_back_to_pending(store: Store) -> None:
    add(store, make_job("a"), make_job("b", "other:latest"))
    store.mark_queued(K("llama3.2:1b"))
    assert status(store, "a") is JobStatus.QUEUED
    assert status(store, "b") is JobStatus.PENDING
    assert store.unmark_queued(K("llama3.2:1b")) == 1
    assert status(store, "a") is JobStatus.PENDING


def test_store_complete_is_fenced_by_attempt(store: Store) -> None:
    add(store, make_job("j"))
    store.claim(["j"], T0)
    assert store.requeue("j", 1, "timed out", "BACKEND_TIMEOUT", T0 + 2)
    store.claim(["j"], T0 + 3)  # attempt 2
    # the first attempt's late answer arrives: dropped
    assert store.complete("j", 1, {"response": "stale"}, {"eval_count": 1}, T0 + 4) is False
    job = store.get("j")
    assert job is not None and job.status is JobStatus.RUNNING and job.result is None
    assert store.complete("j", 2, {"response": "fresh"}, {"eval_count": 9}, T0 + 5) is True
    job = store.get("j")
    assert job is not None
    assert job.status is JobStatus.COMPLETE
    assert job.result == {"response": "fresh"}
    assert job.timings == {"eval_count": 9}
    assert job.completed_at == T0 + 5
    assert job.error is None and job.error_code is None  # the retry's error is cleared
    # and a finished job cannot be completed again
    assert store.complete("j", 2, {"response": "again"}, {}, T0 + 6) is False


def test_store_complete_after_cancel_is_dropped(store: Store) -> None:
    add(store, make_job("j"))
    store.claim(["j"], T0)
    assert store.cancel("j", T0 + 1) is JobStatus.RUNNING
    assert store.complete("j", 1, {"response": "late"}, {}, T0 + 2) is False
    job = store.get("j")
    assert job is not None and job.status is JobStatus.CANCELLED and job.result is None


def test_store_complete_of_a_job_never_claimed_is_refused(store: Store) -> None:
    add(store, make_job("j"))
    assert store.complete("j", 0, {"response": "?"}, {}, T0) is False
    assert status(store, "j") is JobStatus.PENDING


def test_store_requeue_is_fenced_and_sets_backoff(store: Store) -> None:
    add(store, make_job("j"))
    store.claim(["j"], T0)
    assert store.requeue("j", 2, "x", "X", T0 + 9) is False  # not the current attempt
    assert store.requeue("j", 1, "connection refused", "BACKEND_UNAVAILABLE", T0 + 9) is True
    job = store.get("j")
    assert job is not None
    assert job.status is JobStatus.PENDING
    assert job.not_before == T0 + 9
    assert job.error == "connection refused" and job.error_code == "BACKEND_UNAVAILABLE"
    assert job.attempts == 1
    assert store.requeue("j", 1, "x", "X", T0 + 9) is False  # no longer running


def test_store_fail_is_fenced_for_running_jobs(store: Store) -> None:
    add(store, make_job("j"))
    store.claim(["j"], T0)
    assert store.fail("j", 5, "model not found", "MODEL_NOT_FOUND", T0) is False
    assert store.fail("j", None, "too big", "MODEL_TOO_LARGE", T0) is False  # it runs
    assert store.fail("j", 1, "model not found", "MODEL_NOT_FOUND", T0 + 1) is True
    job = store.get("j")
    assert job is not None
    assert (job.status, job.error, job.error_code) == (
        JobStatus.FAILED,
        "model not found",
        "MODEL_NOT_FOUND",
    )
    assert job.completed_at == T0 + 1


@pytest.mark.parametrize("queued", [False, True])
def test_store_fail_without_attempt_fails_a_waiting_job(store: Store, queued: bool) -> None:
    add(store, make_job("j"))
    if queued:
        store.mark_queued(K("llama3.2:1b"))
    assert store.fail("j", None, "needs 20 GB", "MODEL_TOO_LARGE", T0) is True
    assert status(store, "j") is JobStatus.FAILED
    assert store.fail("j", None, "again", "X", T0) is False


def test_store_release_gives_back_the_attempt(store: Store) -> None:
    add(store, make_job("j"))
    store.claim(["j"], T0)
    assert store.release(["j"]) == 1
    job = store.get("j")
    assert job is not None and job.status is JobStatus.PENDING and job.attempts == 0
    assert store.release(["j"]) == 0
    assert store.release([]) == 0


@pytest.mark.parametrize(
    ("setup", "was", "now_status"),
    [
        ("pending", JobStatus.PENDING, JobStatus.CANCELLED),
        ("queued", JobStatus.QUEUED, JobStatus.CANCELLED),
        ("running", JobStatus.RUNNING, JobStatus.CANCELLED),
        ("complete", JobStatus.COMPLETE, JobStatus.COMPLETE),
        ("failed", JobStatus.FAILED, JobStatus.FAILED),
        ("cancelled", JobStatus.CANCELLED, JobStatus.CANCELLED),
    ],
)
def test_store_cancel_reports_the_old_status_and_spares_finished_jobs(
    store: Store, setup: str, was: JobStatus, now_status: JobStatus
) -> None:
    add(store, make_job("j"))
    if setup == "queued":
        store.mark_queued(K("llama3.2:1b"))
    if setup in ("running", "complete", "failed"):
        store.claim(["j"], T0)
    if setup == "complete":
        store.complete("j", 1, {"response": "done"}, {}, T0 + 1)
    if setup == "failed":
        store.fail("j", 1, "boom", "X", T0 + 1)
    if setup == "cancelled":
        store.cancel("j", T0)
    assert store.cancel("j", T0 + 2) is was
    job = store.get("j")
    assert job is not None and job.status is now_status
    if setup == "complete":
        assert job.result == {"response": "done"}


def test_store_cancel_unknown_job_is_none(store: Store) -> None:
    assert store.cancel("ghost", T0) is None


def test_store_retry_puts_a_failed_job_back_with_fresh_attempts(store: Store) -> None:
    add(store, make_job("j"))
    for attempt in (1, 2):
        store.claim(["j"], T0 + attempt)
        if attempt == 1:
            store.requeue("j", 1, "busy", "BACKEND_BUSY", T0 + 50)
    store.fail("j", 2, "runner crashed", "RUNNER_CRASHED", T0 + 3)
    retried = store.retry("j")
    assert retried is not None
    assert retried.status is JobStatus.PENDING
    assert retried.attempts == 0
    assert retried.not_before == 0
    assert retried.error is None and retried.error_code is None
    assert retried.started_at is None and retried.completed_at is None
    assert status(store, "j") is JobStatus.PENDING


@pytest.mark.parametrize("setup", ["pending", "running", "complete", "missing"])
def test_store_retry_refuses_jobs_that_did_not_fail(store: Store, setup: str) -> None:
    if setup != "missing":
        add(store, make_job("j"))
    if setup in ("running", "complete"):
        store.claim(["j"], T0)
    if setup == "complete":
        store.complete("j", 1, {}, {}, T0)
    assert store.retry("j") is None
    if setup != "missing":
        assert status(store, "j").value == setup


# ------------------------------------------------------------------ restart, durability


def test_store_recover_after_a_crash(db_path: Path) -> None:
    before = Store(db_path)
    add(before, make_job("waiting", "other:latest"))
    add(before, *(make_job(n) for n in ("queued", "ran-once", "ran-out", "done", "gone")))
    before.mark_queued(K("llama3.2:1b"))  # its load was planned; then the work starts
    before.claim(["ran-once", "ran-out", "done", "gone"], T0)
    for attempt in (2, 3):  # "ran-out" was requeued and claimed until it used 3 attempts
        before.requeue("ran-out", attempt - 1, "oom", "OUT_OF_MEMORY", T0)
        before.claim(["ran-out"], T0 + attempt)
    before.complete("done", 1, {"response": "ok"}, {}, T0 + 1)
    before.cancel("gone", T0 + 1)
    assert status(before, "queued") is JobStatus.QUEUED
    # the process dies here: no close()
    after = Store(db_path)
    try:
        assert after.recover(max_attempts=3, now=T0 + 100) == (2, 1)
        assert {j.id: j.status for j in after.list_jobs()} == {
            "waiting": JobStatus.PENDING,
            "queued": JobStatus.PENDING,
            "ran-once": JobStatus.PENDING,
            "ran-out": JobStatus.FAILED,
            "done": JobStatus.COMPLETE,
            "gone": JobStatus.CANCELLED,
        }
        lost = after.get("ran-out")
        assert lost is not None
        assert lost.error_code == "WORKER_LOST"
        assert lost.error is not None and "3 time(s)" in lost.error
        assert lost.completed_at == T0 + 100
        once = after.get("ran-once")
        assert once is not None and once.attempts == 1  # the crashed attempt still counts
        assert after.recover(max_attempts=3, now=T0 + 200) == (0, 0)
    finally:
        after.close()
        before.close()


def test_store_data_survives_close_and_reopen(open_store: Callable[[], Store]) -> None:
    first = open_store()
    add(first, make_job("j1", metadata={"k": "v"}), make_job("j2", key="idem"))
    first.claim(["j1"], T0)
    first.complete("j1", 1, {"response": "kept"}, {"total_duration": 123}, T0 + 1)
    first.close()

    second = open_store()
    try:
        j1 = second.get("j1")
        assert j1 is not None
        assert j1.status is JobStatus.COMPLETE
        assert j1.result == {"response": "kept"}
        assert j1.timings == {"total_duration": 123}
        assert j1.metadata == {"k": "v"}
        # the idempotency key is durable too
        [(job, created)] = second.insert_jobs([make_job("j3", key="idem")])
        assert (job.id, created) == ("j2", False)
        assert second.counts_by_status() == {"complete": 1, "pending": 1}
        assert second.integrity_check() == "ok"
    finally:
        second.close()


def test_store_model_stats_persist_and_merge(open_store: Callable[[], Store]) -> None:
    first = open_store()
    first.save_model_stats(
        "phi3:mini",
        vram_bytes=3_000_000_000,
        ps_vram_bytes=2_900_000_000,
        load_seconds=4.5,
        now=T0,
        count_load=True,
    )
    # an out-of-memory raise: only the estimate changes, the load count does not
    first.save_model_stats(
        "phi3:mini",
        vram_bytes=3_750_000_000,
        ps_vram_bytes=None,
        load_seconds=None,
        now=T0 + 1,
        count_load=False,
    )
    first.close()
    second = open_store()
    try:
        assert second.load_model_stats() == {
            "phi3:mini": {
                "vram_bytes": 3_750_000_000,
                "ps_vram_bytes": 2_900_000_000,
                "load_seconds": 4.5,
                "loads": 1,
            }
        }
    finally:
        second.close()


def test_store_integrity_check_is_ok(store: Store) -> None:
    add(store, *(make_job(f"j{i}") for i in range(20)))
    assert store.integrity_check() == "ok"


def test_store_readers_on_threads_see_consistent_data_while_writing(store: Store) -> None:
    total = 200
    start = threading.Barrier(5)
    done = threading.Event()
    errors: list[BaseException] = []
    seen: list[list[int]] = [[] for _ in range(4)]

    def reader(slot: int) -> None:
        try:
            start.wait()
            while True:
                finished = done.is_set()
                n = sum(store.counts_by_status().values())
                seen[slot].append(n)
                newest = store.list_jobs(limit=1)
                if newest:
                    job = store.get(newest[0].id)
                    assert job is not None and job.payload["prompt"].startswith("prompt")
                if finished:
                    return
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    start.wait()
    for i in range(0, total, 10):
        add(store, *(make_job(f"j{i + k}") for k in range(10)))
        store.claim([f"j{i}"], T0)
    done.set()
    for t in threads:
        t.join(timeout=10)
    assert not errors, errors
    for counts in seen:
        assert counts == sorted(counts)  # a reader never sees rows vanish
        assert counts[-1] == total  # and sees every committed row in the end
    assert store.counts_by_status() == {"pending": total - total // 10, "running": total // 10}


def test_store_internal_transitions_relax_sync_but_client_writes_stay_full(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "jobs.db", synchronous="FULL")
    seen: list[int] = []
    orig = store._write

    def spy(*, durable: bool = True, **kwargs: Any) -> Any:
        ctx = orig(durable=durable, **kwargs)

        class Wrapped:
            def __enter__(self) -> Any:
                db = ctx.__enter__()
                seen.append(db.execute("PRAGMA synchronous").fetchone()[0])
                return db

            def __exit__(self, *exc: Any) -> Any:
                return ctx.__exit__(*exc)

        return Wrapped()

    store._write = spy  # type: ignore[method-assign]
    job = make_job("sync-1")
    store.insert_jobs([job])  # acknowledged to a client: FULL (2)
    store.claim([job.id], 1.0)  # internal: NORMAL (1)
    store.complete(job.id, 1, "ok", {}, 2.0)  # internal: NORMAL (1)
    assert seen == [2, 1, 1]
    assert store._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # restored
    store.close()


# ------------------------------------------------------------------------- group commit


def test_store_concurrent_inserts_are_all_durable_and_keep_each_callers_order(
    open_store: Callable[[], Store],
) -> None:
    store = open_store()
    threads, calls = 8, 40
    answers: list[list[list[tuple[Job, bool]]]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def submitter(t: int) -> None:
        start.wait()
        for i in range(calls):
            size = 3 if i % 5 == 0 else 1  # some calls are small batches
            answers[t].append(store.insert_jobs([make_job(f"t{t}-c{i}-{k}") for k in range(size)]))

    workers = [threading.Thread(target=submitter, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    acked = [job for per_thread in answers for call in per_thread for job, _ in call]
    assert len(acked) == threads * (calls + (calls // 5) * 2)
    for per_thread in answers:
        seqs = [job.seq for call in per_thread for job, _ in call]
        assert seqs == sorted(seqs)  # each caller's jobs queue in the order it sent them
        for call in per_thread:  # a batch is contiguous
            assert [j.seq for j, _ in call] == list(
                range(call[0][0].seq, call[0][0].seq + len(call))
            )
    assert len({job.seq for job in acked}) == len(acked)
    # the process dies here: no close(); a new store sees every acknowledged job
    reopened = open_store()
    try:
        assert {row[0]: row[3] for row in reopened.waiting_jobs()} == {j.id: j.seq for j in acked}
    finally:
        reopened.close()
        store.close()


def test_store_concurrent_submits_with_one_idempotency_key_make_one_job(store: Store) -> None:
    start = threading.Barrier(8)
    answers: list[tuple[Job, bool]] = []

    def submitter(t: int) -> None:
        start.wait()
        answers.extend(store.insert_jobs([make_job(f"j{t}", key="same-key")]))

    workers = [threading.Thread(target=submitter, args=(t,)) for t in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    assert len({job.id for job, _ in answers}) == 1
    assert sorted(created for _, created in answers) == [False] * 7 + [True]
    assert store.counts_by_status() == {"pending": 1}


def _add_trigger(db_path: Path, model: str, action: str) -> None:
    """Make SQLite itself refuse inserts of ``model``: ABORT fails the statement,
    ROLLBACK the whole transaction (as a disk error would)."""
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute(
        f"CREATE TRIGGER refuse_{action.lower()} BEFORE INSERT ON jobs"
        f" WHEN NEW.model = '{model}' BEGIN SELECT RAISE({action}, 'refused by the disk'); END"
    )
    db.close()


def run_as_one_group(
    store: Store, db_path: Path, first: list[Job], rest: list[list[Job]]
) -> list[Any]:
    """Insert ``first`` while another connection holds SQLite's write lock, queue every
    call of ``rest`` behind it in order, then let go: ``rest`` commit as one group.
    Returns what each call returned or raised, ``first``'s first."""
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    outcomes: dict[int, Any] = {}

    def call(i: int, jobs: list[Job]) -> None:
        try:
            outcomes[i] = store.insert_jobs(jobs)
        except Exception as exc:  # what the caller would see
            outcomes[i] = exc

    workers = [threading.Thread(target=call, args=(0, first))]
    workers[0].start()
    # the store's group-commit line, read only to order the callers deterministically
    wait_until(lambda: store._committing and not store._waiting, what="first call committing")
    for i, jobs in enumerate(rest, start=1):
        workers.append(threading.Thread(target=call, args=(i, jobs)))
        workers[-1].start()
        wait_until(lambda i=i: len(store._waiting) == i, what=f"call {i} waiting")
    blocker.execute("ROLLBACK")
    blocker.close()
    for w in workers:
        w.join(timeout=30)
    return [outcomes[i] for i in range(len(workers))]


def test_store_a_refused_call_in_a_group_fails_alone_and_all_or_nothing(
    sqlite_store: Store, db_path: Path
) -> None:
    _add_trigger(db_path, "refused:latest", "ABORT")
    first, before, after = [make_job("first")], [make_job("before")], [make_job("after")]
    batch = [make_job("batch-ok"), make_job("batch-refused", "refused:latest")]
    out = run_as_one_group(sqlite_store, db_path, first, [before, batch, after])
    assert [o[0][0].id for o in (out[0], out[1], out[3])] == ["first", "before", "after"]
    assert isinstance(out[2], sqlite3.IntegrityError) and "refused" in str(out[2])
    assert {j.id for j in sqlite_store.list_jobs()} == {"first", "before", "after"}  # no "batch-ok"


def test_store_a_failed_group_commit_reaches_every_caller(
    sqlite_store: Store, db_path: Path
) -> None:
    _add_trigger(db_path, "doomed:latest", "ROLLBACK")
    first = [make_job("first")]
    group = [[make_job("h1")], [make_job("doomed", "doomed:latest")], [make_job("h2")]]
    out = run_as_one_group(sqlite_store, db_path, first, group)
    assert out[0][0][0].id == "first"
    for failed in out[1:]:  # each caller of the failed group gets the error, none a job
        assert isinstance(failed, sqlite3.Error) and "refused by the disk" in str(failed)
    assert len({id(e) for e in out[1:]}) == 3  # its own exception, not a shared one
    assert {j.id for j in sqlite_store.list_jobs()} == {"first"}
    assert add(sqlite_store, make_job("later"))[0].seq > 0  # the line is not stuck
    assert sqlite_store.integrity_check() == "ok"


# ---------------------------------------------------------------------------- job views


def counting_render(calls: list[str]) -> Callable[[Job], bytes]:
    def render(job: Job) -> bytes:
        calls.append(job.id)
        return f"{job.status.value}/{job.attempts}/{job.error_code}".encode()

    return render


def test_store_job_view_follows_every_change_and_is_cached_between(store: Store) -> None:
    calls: list[str] = []
    render = counting_render(calls)

    def view(job_id: str) -> str | None:
        raw = store.job_view(job_id, render)
        return None if raw is None else raw.decode()

    add(store, make_job("a"), make_job("b"), make_job("c", "other:latest"))
    assert view("a") == view("a") == "pending/0/None"
    # SQLite: the second poll came from memory; PostgreSQL: another instance may change
    # the job, so every poll reads the database
    assert calls == (["a"] if type(store) is Store else ["a", "a"])
    steps: list[tuple[Callable[[], object], str, str]] = [
        (lambda: store.mark_queued(K("llama3.2:1b")), "a", "queued/0/None"),
        (lambda: store.unmark_queued(K("llama3.2:1b")), "a", "pending/0/None"),
        (lambda: store.claim(["a"], T0), "a", "running/1/None"),
        (lambda: store.requeue("a", 1, "oom", "OUT_OF_MEMORY", T0), "a", "pending/1/OUT_OF_MEMORY"),
        (lambda: store.claim(["a"], T0), "a", "running/2/OUT_OF_MEMORY"),
        (lambda: store.release(["a"]), "a", "pending/1/OUT_OF_MEMORY"),
        (lambda: store.claim(["a"], T0), "a", "running/2/OUT_OF_MEMORY"),
        (lambda: store.complete("a", 2, "ok", {}, T0), "a", "complete/2/None"),
        (lambda: store.claim(["b"], T0), "b", "running/1/None"),
        (lambda: store.fail("b", 1, "bad", "BACKEND_ERROR", T0), "b", "failed/1/BACKEND_ERROR"),
        (lambda: store.retry("b"), "b", "pending/0/None"),
        (lambda: store.cancel("b", T0), "b", "cancelled/0/None"),
        (
            lambda: store.fail("c", None, "gone", "MODEL_NOT_FOUND", T0),
            "c",
            "failed/0/MODEL_NOT_FOUND",
        ),
        (lambda: store.retry("c"), "c", "pending/0/None"),
        (lambda: store.expire(T0 + 1, T0 + 2, 1.0), "c", "failed/0/JOB_TIMEOUT"),
    ]
    for change, job_id, expected in steps:
        assert view(job_id) is not None  # cached before the change
        change()
        assert view(job_id) == expected
    store.claim(["a"], T0)  # refused (complete): nothing changes, the view stays right
    assert view("a") == "complete/2/None"
    assert store.purge(T0 + 10) == 3
    assert view("a") is None and view("b") is None and view("c") is None


def test_store_job_view_after_recover_shows_the_requeued_job(db_path: Path) -> None:
    store = Store(db_path)
    add(store, make_job("a"))
    store.claim(["a"], T0)
    render = counting_render([])
    assert store.job_view("a", render) == b"running/1/None"
    store.recover(max_attempts=3, now=T0)
    assert store.job_view("a", render) == b"pending/1/None"
    store.close()


def test_store_job_view_is_never_stale_while_readers_race_the_writer(store: Store) -> None:
    """Polls race every change: once a change has returned, every later read shows it,
    and no reader ever sees a job go back from a state it has already seen."""
    render = counting_render([])
    ids = [f"j{i}" for i in range(200)]
    add(store, *(make_job(i) for i in ids))
    order = {"pending": 0, "running": 1, "complete": 2}
    current = [ids[0]]  # the job the writer is changing; readers poll it and the one before
    done = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        last: dict[str, int] = {}
        try:
            while not done.is_set():
                now = current[0]
                for job_id in (now, ids[max(0, ids.index(now) - 1)]):
                    raw = store.job_view(job_id, render)
                    assert raw is not None
                    rank = order[raw.decode().split("/")[0]]
                    assert rank >= last.get(job_id, 0), f"{job_id} went back to {raw!r}"
                    last[job_id] = rank
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # switch threads often: more interleavings, no GIL convoy
    for r in readers:
        r.start()
    try:
        for job_id in ids:
            current[0] = job_id
            store.claim([job_id], T0)
            assert store.job_view(job_id, render) == b"running/1/None"
            store.complete(job_id, 1, "ok", {}, T0)
            assert store.job_view(job_id, render) == b"complete/1/None"
    finally:
        done.set()
        for r in readers:
            r.join(timeout=30)
        sys.setswitchinterval(interval)
    assert not errors, errors


def test_store_job_views_stay_within_their_memory_bound() -> None:
    views = _Views(max_bytes=1000, max_entry=300)
    for i in range(50):
        views.fill(views.ticket(), f"j{i}", b"x" * 100)
    views.fill(views.ticket(), "huge", b"x" * 301)
    kept = [f"j{i}" for i in range(50) if views.get(f"j{i}") is not None]
    assert kept == [f"j{i}" for i in range(40, 50)]  # the newest, 1000 bytes in all
    assert views.get("huge") is None


# ---------------------------------------------------------------------------- downloads


def test_store_downloads_keep_the_latest_per_node_and_model_across_reopen(
    open_store: Callable[[], Store],
) -> None:
    first = open_store()
    key = "registry.ollama.ai/library/qwen2.5:3b"
    first.save_download(
        "a", key, name="qwen2.5:3b", task_id="t1", status="DOWNLOADING", started_at=T0
    )
    first.save_download(
        "b", key, name="Qwen2.5:3B", task_id="t2", status="DOWNLOADING", started_at=T0 + 1
    )
    first.save_download(  # the same node and model again: it replaces the first
        "a",
        key,
        name="qwen2.5:3b",
        task_id="t3",
        status="PARTIAL",
        started_at=T0 + 2,
        ended_at=T0 + 3,
        error="max retries exceeded: unexpected EOF",
    )
    first.close()
    second = open_store()
    try:
        assert second.load_downloads() == [
            ("b", key, "Qwen2.5:3B", "t2", "DOWNLOADING", T0 + 1, None, None),
            (
                "a",
                key,
                "qwen2.5:3b",
                "t3",
                "PARTIAL",
                T0 + 2,
                T0 + 3,
                "max retries exceeded: unexpected EOF",
            ),
        ]
        assert second.delete_download("a", key) is True
        assert second.delete_download("a", key) is False
        assert [row[0] for row in second.load_downloads()] == ["b"]
    finally:
        second.close()


def test_store_opens_a_version_4_file_and_adds_the_downloads_table(db_path: Path) -> None:
    old = Store(db_path)
    add(old, make_job("kept"))
    old.close()
    with sqlite3.connect(db_path) as db:  # as version 4 left it
        db.execute("DROP TABLE downloads")
        db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    store = Store(db_path)
    try:
        assert store.get("kept") is not None and store.load_downloads() == []
        store.save_download("a", "m", name="m", task_id="t", status="PARTIAL", started_at=T0)
        assert len(store.load_downloads()) == 1
        version = store._read("SELECT value FROM meta WHERE key = 'schema_version'")
        assert version == [("5",)]
    finally:
        store.close()


def test_store_unfinished_jobs_counts_every_runner_of_a_model(store: Store) -> None:
    add(
        store,
        make_job("a", model="qwen2.5:0.5b"),
        make_job("b", model="Qwen2.5:0.5B"),
        make_job("c", model="llama3.2:1b"),
    )
    add(store, make_job("d", "qwen2.5:0.5b", payload={"prompt": "p", "options": {"num_ctx": 8192}}))
    key = "registry.ollama.ai/library/qwen2.5:0.5b"
    assert store.unfinished_jobs(key) == 3
    store.claim(["a"], T0)
    assert store.unfinished_jobs(key) == 3  # running counts
    store.complete("a", 1, {"text": "x"}, {}, T0 + 1)
    store.cancel("b", T0 + 1)
    assert store.unfinished_jobs(key) == 1
    assert store.unfinished_jobs("registry.ollama.ai/library/qwen2.5:0.5") == 0


# ------------------------------------------------------- PostgreSQL: shared by instances


@pytest.fixture
def pg_url(pg_server: str) -> str:  # noqa: F811 - the fixture imported above
    return fresh_url(pg_server)


def test_store_pg_two_instances_never_claim_one_job_twice(pg_url: str) -> None:
    from modelmanager.store_pg import PgStore

    a, b = PgStore(pg_url), PgStore(pg_url)
    try:
        ids = [f"j{i}" for i in range(200)]
        add(a, *(make_job(i) for i in ids))
        got: dict[str, list[str]] = {"a": [], "b": []}
        start = threading.Barrier(2)

        def claimer(name: str, s: Store) -> None:
            start.wait()
            for i in range(0, len(ids), 5):
                got[name] += [j.id for j in s.claim(ids[i : i + 5], T0, name)]

        threads = [threading.Thread(target=claimer, args=(n, s)) for n, s in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(got["a"] + got["b"]) == sorted(ids)  # each job claimed exactly once
        assert b.counts_by_status() == {"running": 200}
        assert {j.node for j in b.list_jobs(limit=500)} <= {"a", "b"}
    finally:
        a.close()
        b.close()


def test_store_pg_recover_takes_back_only_jobs_whose_lease_expired(pg_url: str) -> None:
    from modelmanager.store_pg import PgStore

    dead = PgStore(pg_url, lease_seconds=0.2)  # dies without renewing its leases
    alive = PgStore(pg_url, lease_seconds=60)
    try:
        add(alive, *(make_job(n) for n in ("d1", "d2", "a1")), make_job("q", "other:latest"))
        dead.claim(["d1", "d2"], T0)
        alive.claim(["a1"], T0)
        dead.mark_queued(K("other:latest"))
        assert status(alive, "q") is JobStatus.QUEUED
        requeued = [0]

        def reaped_all() -> bool:
            requeued[0] += alive.reap(max_attempts=3, now=T0 + 1)[0]
            return requeued[0] >= 3

        wait_until(reaped_all, timeout=10)
        assert requeued == [3]  # d1, d2 and the queued q; a1's lease still holds
        assert {j.id: j.status for j in alive.list_jobs()} == {
            "d1": JobStatus.PENDING,
            "d2": JobStatus.PENDING,
            "q": JobStatus.PENDING,
            "a1": JobStatus.RUNNING,
        }
        # the dead instance's late result is dropped; the new attempt's is kept
        [again] = alive.claim(["d1"], T0 + 2)
        assert not dead.complete("d1", 1, "late", {}, T0 + 3)
        assert alive.complete("d1", again.attempts, "ok", {}, T0 + 3)
        alive.heartbeat("alive", "http://a", {}, [], T0)  # renews a1's lease
        assert alive.reap(max_attempts=3, now=T0 + 4) == (0, 0)
    finally:
        dead.close()
        alive.close()


def test_store_pg_instances_lists_live_ones_with_what_they_hold(pg_url: str) -> None:
    from modelmanager.store_pg import PgStore

    a, b = PgStore(pg_url, instance="a"), PgStore(pg_url, instance="b", lease_seconds=0.2)
    try:
        a.heartbeat("host-a", "http://a:5001", {"nodes": ["local"]}, ["r1"], T0)
        b.heartbeat("host-b", "http://b:5001", {"nodes": []}, ["r1", "r2"], T0 + 1)
        assert a.held_elsewhere() == {"r1": 1, "r2": 1}
        listed = a.instances()
        assert [(i["id"], i["name"], i["runners"]) for i in listed] == [
            ("a", "host-a", ["r1"]),
            ("b", "host-b", ["r1", "r2"]),
        ]
        assert listed[0]["info"] == {"nodes": ["local"]}
        assert listed[0]["lease_expires_at"] > listed[0]["heartbeat_at"]
        # b stops renewing: it drops out of the list and holds nothing any more
        wait_until(lambda: len(a.instances()) == 1, timeout=10)
        assert a.held_elsewhere() == {}
        a.leave()
        assert b.instances() == []
    finally:
        a.close()
        b.close()


def test_store_pg_bad_url_or_unreachable_database_is_a_clear_error(pg_server: str) -> None:  # noqa: F811
    from modelmanager.errors import DatabaseUnavailable
    from modelmanager.store_pg import PgStore

    with pytest.raises(DatabaseUnavailable, match="must start with postgresql://"):
        PgStore("mysql://x@y/z")
    port = pg_server.rsplit(":", 1)[1].split("/")[0]
    with pytest.raises(DatabaseUnavailable, match=r"cannot connect .*u:\*\*\*@127.0.0.1:1/"):
        PgStore("postgresql://u:secret@127.0.0.1:1/db")
    with pytest.raises(DatabaseUnavailable, match="nosuchdb"):
        PgStore(f"postgresql://mm@127.0.0.1:{port}/nosuchdb")


def test_store_pg_reconnects_after_the_server_dropped_its_connections(
    pg_url: str,
    pg_server: str,  # noqa: F811
) -> None:
    import psycopg

    from modelmanager.store_pg import PgStore

    store = PgStore(pg_url)
    try:
        add(store, make_job("before"))
        assert store.get("before") is not None  # this thread's reader is connected
        pids = [store._writer.conn.info.backend_pid, store._reader().conn.info.backend_pid]
        with psycopg.connect(pg_server, autocommit=True) as admin:  # as a restart would
            admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (pids,))

        def works() -> bool:
            try:
                add(store, make_job(f"after-{len(store.list_jobs())}"))
                return store.get("before") is not None
            except psycopg.OperationalError:
                return False  # the statement that found its connection gone

        wait_until(works, timeout=10)
        assert store.counts_by_status()["pending"] >= 2
    finally:
        store.close()


def test_store_pg_release_orphans_puts_back_claimed_jobs_not_running_here(pg_url: str) -> None:
    from modelmanager.store_pg import PgStore

    here, other = PgStore(pg_url), PgStore(pg_url)
    try:
        add(here, *(make_job(n) for n in ("runs", "orphan", "young", "elsewhere")))
        here.claim(["runs", "orphan"], T0)
        here.claim(["young"], T0 + 100)
        other.claim(["elsewhere"], T0)
        # "runs" is in flight here, "young" was claimed too recently to judge
        assert here.release_orphans(["runs"], started_before=T0 + 50) == ["orphan"]
        orphan = here.get("orphan")
        assert orphan is not None
        assert (orphan.status, orphan.attempts) == (JobStatus.PENDING, 1)
        assert {j.id: j.status for j in here.list_jobs()} == {
            "runs": JobStatus.RUNNING,
            "orphan": JobStatus.PENDING,
            "young": JobStatus.RUNNING,
            "elsewhere": JobStatus.RUNNING,
        }
    finally:
        here.close()
        other.close()


def test_store_pg_front_door_jobs_stay_with_their_instance_while_it_lives(pg_url: str) -> None:
    from modelmanager.store_pg import PgStore

    a, b = PgStore(pg_url, instance="a", lease_seconds=0.3), PgStore(pg_url, instance="b")
    try:
        a.heartbeat("a", "http://a", {}, [], T0)
        streamed = make_job("streamed")
        streamed.source = "ollama"
        add(a, streamed, make_job("plain"))
        assert [r[0] for r in a.claimable_jobs()] == ["streamed", "plain"]
        assert [r[0] for r in b.claimable_jobs()] == ["plain"]  # a streams it to its client
        assert [r[0] for r in b.claimable_jobs(0)] == ["plain"]
        # a stops renewing its lease: the job is anyone's
        wait_until(lambda: len(b.claimable_jobs()) == 2, timeout=10)
    finally:
        a.close()
        b.close()


def test_store_pg_a_registered_node_belongs_to_the_instance_that_registered_it(
    pg_url: str,
) -> None:
    from modelmanager.store_pg import PgStore

    a, b = PgStore(pg_url, owner="host-a"), PgStore(pg_url, owner="host-b")
    try:
        assert a.save_node(
            "a1", "http://10.0.0.5:11434", gpu_url=None, vram_budget_mb=None, gpus="0", now=T0
        )
        # names are unique over all instances (downloads are kept by node name)
        assert not b.save_node(
            "a1", "http://10.0.0.7:11434", gpu_url=None, vram_budget_mb=None, gpus=None, now=T0
        )
        assert [n[0] for n in a.load_nodes()] == ["a1"]
        assert b.load_nodes() == []  # b never drives a's node, even after a restart
        again = PgStore(pg_url, owner="host-a")  # a restarted: a new id, the same name
        try:
            assert [n[:2] for n in again.load_nodes()] == [("a1", "http://10.0.0.5:11434")]
        finally:
            again.close()
    finally:
        a.close()
        b.close()


def test_store_pg_reaping_removes_the_rows_of_dead_instances(pg_url: str) -> None:
    import psycopg

    from modelmanager.store_pg import PgStore

    dead = PgStore(pg_url, instance="dead", lease_seconds=0.2)
    alive = PgStore(pg_url, instance="alive", lease_seconds=60)
    try:
        dead.heartbeat("host-d", "http://d", {}, ["r1"], T0)
        alive.heartbeat("host-a", "http://a", {}, ["r2"], T0)
        wait_until(lambda: len(alive.instances()) == 1, timeout=10)
        alive.reap(max_attempts=3, now=T0)
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT id FROM instances").fetchall() == [("alive",)]
            assert conn.execute("SELECT runner, instance FROM holders").fetchall() == [
                ("r2", "alive")
            ]
        dead.heartbeat("host-d", "http://d", {}, [], T0)  # it was only paused: back again
        assert sorted(i["id"] for i in alive.instances()) == ["alive", "dead"]
    finally:
        dead.close()
        alive.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://mm:s3cret@127.0.0.1:99999/db",  # a port out of range
        "postgresql://mm:s3cret@[::1:5432/db",  # an unparsable host
        "postgresql://mm:s3cret@db.invalid:54x/db",
        "postgresql://mm:s3cr@t@127.0.0.1:1/db",  # an @ in the password
        "postgresql://mm:Top@s3cret99@127.0.0.1:1/db",  # libpq: host "s3cret99@..."
        "postgresql://mm:Top@s3crHost:5432@127.0.0.1:1/db",  # libpq: host "s3crHost"
        "postgresql://mm:s3@cr:et@127.0.0.1:1/db",  # libpq: host 'cr'? port 'et@...'?
        "postgresql://mm:s3cr%ZZet@127.0.0.1:1/db",  # a bad percent-encoding in it
        "postgresql://mm@127.0.0.1:1/db?password=s3cret",  # the password as a parameter
        "postgresql://mm:pw@127.0.0.1:1/db?sslmode=disable&Password=s3cret",
        "postgresql://mm:s3cr%40t@127.0.0.1:1/db",  # percent-encoded
    ],
)
def test_store_pg_a_malformed_url_is_one_sentence_without_the_password(url: str) -> None:
    from modelmanager.errors import DatabaseUnavailable
    from modelmanager.store_pg import PgStore, redact

    assert "s3cr" not in redact(url)
    with pytest.raises(DatabaseUnavailable) as caught:
        PgStore(url)
    text = str(caught.value)
    assert text.startswith("cannot connect to the database") and "\n" not in text
    assert "s3cr" not in text


def test_store_pg_a_job_taken_over_is_lost_to_its_first_instance_even_once_complete(
    pg_url: str,
) -> None:
    from modelmanager.store_pg import PgStore

    a = PgStore(pg_url, instance="a", lease_seconds=0.2)  # paused: its lease lapses
    b = PgStore(pg_url, instance="b", lease_seconds=60)
    try:
        add(b, make_job("j"), make_job("mine"))
        [first] = a.claim(["j"], T0)
        wait_until(lambda: b.reap(max_attempts=5, now=T0 + 1)[0] == 1, timeout=10)
        [again] = b.claim(["j"], T0 + 2)
        assert (first.attempts, again.attempts) == (1, 2)
        assert a.lost_here({"j": 1}) == {"j"}  # claimed by b now
        assert b.complete("j", again.attempts, "from b", {}, T0 + 3)
        assert a.lost_here({"j": 1}) == {"j"}  # b completed it: a's attempt is moot
        assert b.lost_here({"j": 2}) == set()  # b's own attempt merely ended
        [mine] = b.claim(["mine"], T0 + 4)
        assert b.lost_here({"mine": mine.attempts}) == set()
    finally:
        a.close()
        b.close()
