"""Durable job storage in SQLite (WAL): the source of truth. All SQL lives here.

Thread safety: one writer connection behind a lock (every state change is one short
``BEGIN IMMEDIATE`` transaction); reads use one connection per thread so polling never
waits behind a write. Status changes are guarded in SQL by the allowed-moves table in
``models.TRANSITIONS``; result writes are *fenced* by the attempt number, so a superseded
attempt's late answer is dropped.

Two things keep the hot paths cheap. Concurrent submits are *group-committed*: the
submits that arrive while one transaction syncs are committed together by the next one,
so one fsync acknowledges many jobs (each submitter still returns only after the commit
holding its jobs). Polls are answered from a bounded in-memory cache of rendered job
views, which every job-changing transaction clears for its jobs before it commits
(:class:`_Views`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from .models import TRANSITIONS, Job, JobKind, JobStatus, Priority
from .runners import runner_of

_Inserted = list[tuple[Job, bool]]
_Outcome = tuple[_Inserted | None, BaseException | None]  # what one insert_jobs call gets

SCHEMA_VERSION = 5

#: What a job's end hands to ``Store.on_end`` listeners (RETURNING of the final update).
_END_COLUMNS = "priority, submitted_at, started_at"


class JobEnd(NamedTuple):
    """A job that reached complete, failed or cancelled (times: seconds since the epoch)."""

    status: JobStatus
    priority: Priority
    submitted_at: float
    started_at: float | None  # None: it never ran
    completed_at: float


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    priority TEXT NOT NULL,
    status TEXT NOT NULL,
    payload TEXT NOT NULL,
    metadata TEXT,
    result TEXT,
    error TEXT,
    error_code TEXT,
    submitted_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    timings TEXT,
    idempotency_key TEXT UNIQUE,
    runner TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT 'api',
    node TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_model ON jobs (model, status);
CREATE INDEX IF NOT EXISTS jobs_submitted ON jobs (submitted_at);
CREATE INDEX IF NOT EXISTS jobs_completed ON jobs (completed_at);
CREATE TABLE IF NOT EXISTS model_stats (
    model TEXT PRIMARY KEY,
    vram_bytes INTEGER,
    ps_vram_bytes INTEGER,
    load_seconds REAL,
    loads INTEGER NOT NULL DEFAULT 0,
    updated_at REAL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    gpu_url TEXT,
    vram_budget_mb INTEGER,
    gpus TEXT,
    registered_at REAL NOT NULL
);
"""

# Schema version 5: the latest download (Ollama pull) of each model on each node. A
# plain table with a composite key and no SQLite-only types, so that other databases can
# hold it as it is.
_DOWNLOADS_TABLE = """
CREATE TABLE IF NOT EXISTS downloads (
    node TEXT NOT NULL,
    model TEXT NOT NULL,
    name TEXT NOT NULL,
    task_id TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    error TEXT,
    PRIMARY KEY (node, model)
)
"""

_COLUMNS = (
    "seq, id, model, kind, priority, status, payload, metadata, result, error, error_code, "
    "submitted_at, started_at, completed_at, attempts, not_before, timings, idempotency_key, "
    "runner, source, node"
)

# Reads for clients leave the payload (prompts, images: up to megabytes) in the database.
_PUBLIC_COLUMNS = _COLUMNS.replace(" payload,", " '{}',")


def _sources(target: JobStatus) -> str:
    """SQL list of the statuses from which ``target`` may be reached."""
    olds = sorted(s.value for s, news in TRANSITIONS.items() if target in news)
    return "(" + ",".join(f"'{s}'" for s in olds) + ")"


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _row_to_job(row: sqlite3.Row | tuple[Any, ...]) -> Job:
    seq, id_, model, kind, priority, status, payload, metadata, result = row[:9]
    error, code, submitted, started, completed, attempts, not_before, timings, key = row[9:18]
    return Job(
        id=id_,
        model=model,
        kind=JobKind(kind),
        priority=Priority(priority),
        payload=json.loads(payload),
        metadata=json.loads(metadata) if metadata is not None else None,
        status=JobStatus(status),
        result=json.loads(result) if result is not None else None,
        error=error,
        error_code=code,
        submitted_at=submitted,
        started_at=started,
        completed_at=completed,
        attempts=attempts,
        not_before=not_before,
        timings=json.loads(timings) if timings else {},
        idempotency_key=key,
        seq=seq,
        runner=row[18],
        source=row[19],
        node=row[20],
    )


class _InsertRequest:
    """One ``insert_jobs`` call in the group-commit line.

    ``wake`` stays held until the call is done or is handed the lead; the fields are set
    under ``Store._group`` before it is released.
    """

    __slots__ = ("done", "error", "inserted", "jobs", "wake")

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self.done = False
        self.inserted: _Inserted | None = None
        self.error: BaseException | None = None
        self.wake = threading.Lock()
        self.wake.acquire()

    def finish(self, inserted: _Inserted | None, error: BaseException | None) -> None:
        self.inserted, self.error, self.done = inserted, error, True

    def outcome(self) -> _Inserted:
        if self.error is not None:
            # a fresh exception per submitter: the group's one is shared between threads
            raise _copy_error(self.error) from self.error
        assert self.inserted is not None
        return self.inserted


def _copy_error(error: BaseException) -> BaseException:
    try:
        return type(error)(*error.args)
    except Exception:
        return RuntimeError(f"the job store failed: {error}")


class _Views:
    """Rendered public views of jobs (what a poll answers), by job id; thread-safe.

    Never stale once a change is committed: every transaction that may change stored
    jobs runs between ``begin()`` and ``end()`` and drops their views before it commits,
    and a read fills in a view only if no such transaction ran at any moment between
    its ``ticket()`` and its ``fill()`` (a generation count). A hit therefore returns a
    state that no committed change has replaced. Bounded to ``max_bytes`` in all, oldest
    dropped first; a view over ``max_entry`` bytes is not kept.

    ``listeners`` are told which jobs changed once no change is in progress any more (see
    ``Store.on_change``).
    """

    def __init__(self, max_bytes: int = 16 << 20, max_entry: int = 64 << 10) -> None:
        self._lock = threading.Lock()
        self._views: dict[str, bytes] = {}
        self._bytes = 0
        self._max_bytes, self._max_entry = max_bytes, max_entry
        self._gen = 0
        self._writers = 0
        self._changed: set[str] | None = set()  # dropped since the last end (None: all)
        self.listeners: list[Callable[[frozenset[str] | None], None]] = []

    def get(self, job_id: str) -> bytes | None:
        return self._views.get(job_id)  # one dict read: atomic, no lock needed

    def ticket(self) -> int | None:
        """Taken before reading the store; None while a change is in progress."""
        with self._lock:
            return None if self._writers else self._gen

    def fill(self, ticket: int | None, job_id: str, view: bytes) -> None:
        if ticket is None or len(view) > self._max_entry:
            return
        with self._lock:
            if ticket != self._gen or job_id in self._views:
                return
            self._views[job_id] = view
            self._bytes += len(view)
            while self._bytes > self._max_bytes:
                self._bytes -= len(self._views.pop(next(iter(self._views))))

    def begin(self, job_ids: Iterable[str] | None) -> None:
        """A change is starting; drop the views of ``job_ids`` (None: of every job)."""
        with self._lock:
            self._writers += 1
            self._gen += 1
        self.drop(job_ids)

    def drop(self, job_ids: Iterable[str] | None) -> None:
        """Forget these views (None: all); only between ``begin()`` and ``end()``."""
        with self._lock:
            if job_ids is None:
                self._views.clear()
                self._bytes = 0
                self._changed = None
                return
            changed = self._changed
            for job_id in job_ids:
                view = self._views.pop(job_id, None)
                if view is not None:
                    self._bytes -= len(view)
                if changed is not None:
                    changed.add(job_id)

    def end(self) -> None:
        with self._lock:
            self._gen += 1
            self._writers -= 1
            if self._writers:
                return
            changed, self._changed = self._changed, set()
        if self.listeners and (changed is None or changed):
            jobs = None if changed is None else frozenset(changed)
            for listener in self.listeners:
                listener(jobs)


class Store:
    """The job store. ``path`` may be ``":memory:"`` only for single-threaded unit tests.

    :class:`modelmanager.store_pg.PgStore` is the same store in PostgreSQL: it runs these
    statements (``?`` placeholders become ``%s``) and overrides the few that differ.
    """

    kind = "sqlite"  # the database engine, as GET /api/health names it
    _BEGIN = "BEGIN IMMEDIATE"  # how a write transaction starts
    _LOST = ""  # which queued/running jobs recover() takes back (here: all of them)
    _FREE = ""  # what else recover() sets on a job it puts back in the queue

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        self.path = str(path)
        self.synchronous = synchronous
        self._lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        # group commit of inserts (see insert_jobs): calls waiting for the next group
        self._group = threading.Lock()
        self._waiting: list[_InsertRequest] = []
        self._committing = False
        self._views = _Views()
        self._end_listeners: list[Callable[[list[JobEnd]], None]] = []
        self._writer = self._open()

    def _open(self) -> Any:
        """Connect the writer and bring the schema up to date; returns the writer."""
        self._writer = self._connect()
        # executescript commits on its own, so it runs outside _write(); it is idempotent.
        self._writer.executescript(_SCHEMA)
        self._migrate()
        return self._writer

    def _migrate(self) -> None:
        """Bring a store written by an older version up to :data:`SCHEMA_VERSION`.

        Version 2 adds ``jobs.runner`` (the runner key a job runs on, see
        :mod:`modelmanager.runners`), filled in from each job's model and options;
        version 3 adds ``jobs.source`` (which front door took the job; older jobs came
        through the job API); version 4 adds ``jobs.node`` (the backend that ran it) and
        the ``nodes`` table (backends registered through the API); version 5 adds the
        ``downloads`` table (see the section "downloads").
        """
        db = self._writer
        columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
        with self._write(views=False) as tx:
            if "runner" not in columns:
                tx.execute("ALTER TABLE jobs ADD COLUMN runner TEXT NOT NULL DEFAULT ''")
            if "source" not in columns:
                tx.execute("ALTER TABLE jobs ADD COLUMN source TEXT NOT NULL DEFAULT 'api'")
            if "node" not in columns:
                tx.execute("ALTER TABLE jobs ADD COLUMN node TEXT")
            rows = tx.execute("SELECT id, model, payload FROM jobs WHERE runner = ''").fetchall()
            for job_id, model, payload in rows:
                tx.execute(
                    "UPDATE jobs SET runner = ? WHERE id = ?",
                    (runner_of(model, json.loads(payload).get("options")), job_id),
                )
            tx.execute("CREATE INDEX IF NOT EXISTS jobs_runner ON jobs (runner, status)")
            tx.execute(_DOWNLOADS_TABLE)
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

    def on_change(self, listener: Callable[[frozenset[str] | None], None]) -> None:
        """Call ``listener(job_ids)`` after every write that may have changed stored jobs,
        once it has committed (or rolled back): the ids of the jobs it touched, or None
        when it may have touched any. It runs on the writing thread with the store's write
        lock held, so it must be quick, must not block and must not use the store."""
        self._views.listeners.append(listener)

    def on_end(self, listener: Callable[[list[JobEnd]], None]) -> None:
        """Call ``listener(ends)`` after a committed write that finished jobs (complete,
        failed or cancelled), from ``complete``, ``fail``, ``cancel`` and ``expire``. It
        runs on the writing thread after the commit: it must be quick."""
        self._end_listeners.append(listener)

    def _ended(self, status: JobStatus, rows: list[Any], now: float) -> None:
        if rows and self._end_listeners:
            ends = [JobEnd(status, Priority(p), sub, start, now) for p, sub, start in rows]
            for listener in self._end_listeners:
                listener(ends)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute("PRAGMA busy_timeout=10000")
        return db

    @contextmanager
    def _write(
        self, *, durable: bool = True, views: bool = True, touches: Iterable[str] | None = None
    ) -> Iterator[sqlite3.Connection]:
        """One short write transaction on the writer connection.

        Cached job views: ``touches`` names the jobs the transaction may change, whose
        views are dropped before it starts (None: every job); one that learns which jobs
        it changed only as it runs passes ``()`` and drops them with ``_views.drop()``
        inside the block. ``views=False`` for writes that change no stored job (inserts,
        model stats): they leave the cache alone.

        ``durable=False`` commits with ``synchronous=NORMAL`` even when the store runs
        FULL: for internal transitions (claim, result, retry) that a crash keeps anyway
        and a power loss may only roll back to a state that runs the job again
        (at-least-once). Writes acknowledged to a client (submit, cancel, retry) stay
        FULL, and each FULL commit syncs the WAL, earlier NORMAL commits included.
        """
        relax = not durable and self.synchronous == "FULL"
        with self._lock:
            db = self._writer
            if relax:
                db.execute("PRAGMA synchronous=NORMAL")  # only outside a transaction
            if views:
                self._views.begin(touches)
            try:
                db = self._begin(db)
                try:
                    yield db
                except BaseException:
                    if db.in_transaction:  # SQLite may have rolled it back already
                        db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            finally:
                if views:
                    self._views.end()
                if relax:
                    db.execute("PRAGMA synchronous=FULL")

    def _begin(self, db: Any) -> Any:
        """Start the write transaction on ``db``; return the connection it runs on."""
        db.execute(self._BEGIN)
        return db

    def _reader(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect() if self.path != ":memory:" else self._writer
            self._local.db = db
            if db is not self._writer:
                with self._readers_lock:
                    self._readers.append(db)
        return db

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[Any]:
        if self.path == ":memory:":
            with self._lock:
                return self._writer.execute(sql, tuple(args)).fetchall()
        return self._reader().execute(sql, tuple(args)).fetchall()

    def close(self) -> None:
        with self._readers_lock:
            for db in self._readers:
                db.close()
            self._readers.clear()
        with self._lock:
            self._writer.close()

    # ------------------------------------------------------------------ submit / read

    def insert_jobs(self, jobs: list[Job]) -> _Inserted:
        """Commit new jobs; return (job with ``seq`` set, created), in order.

        A job whose ``idempotency_key`` is already stored is not inserted again: the stored
        job is returned in its place with ``created`` False. The call's jobs are committed
        all or none, and it returns only once they are durable.

        Group commit: calls that arrive while a group is committing wait; when it is done,
        the first of them commits every waiting call in one transaction (one sync), each
        in its own savepoint, in arrival order (so ``seq`` follows arrival). A call whose
        own statements fail gets that error and the rest of its group commits; if the
        transaction itself fails, every call in the group gets the error.
        """
        request = _InsertRequest(jobs)
        with self._group:
            self._waiting.append(request)
            lead = not self._committing
            self._committing = True
        if not lead:
            request.wake.acquire()  # until a group committed it or it is handed the lead
            if request.done:
                return request.outcome()
        with self._group:
            group, self._waiting = self._waiting, []
        outcomes: list[_Outcome] = []
        try:
            outcomes = self._commit_group(group)
        finally:
            failed = RuntimeError("the group commit was interrupted")
            with self._group:
                for i, member in enumerate(group):
                    member.finish(*(outcomes[i] if outcomes else (None, failed)))
                successor = self._waiting[0] if self._waiting else None
                self._committing = successor is not None
            for member in group:
                if member is not request:
                    member.wake.release()
            if successor is not None:  # it commits whatever waits now, itself included
                successor.wake.release()
        return request.outcome()

    def _commit_group(self, group: list[_InsertRequest]) -> list[_Outcome]:
        """One transaction for every request of ``group``; returns each one's outcome."""
        outcomes: list[_Outcome] = []
        try:
            with self._write(views=False) as db:
                if len(group) == 1:
                    outcomes.append((self._insert(db, group[0].jobs), None))
                    return outcomes
                for member in group:
                    db.execute("SAVEPOINT submit")
                    try:
                        outcomes.append((self._insert(db, member.jobs), None))
                    except Exception as exc:
                        if not db.in_transaction:
                            raise  # SQLite rolled the whole transaction back
                        db.execute("ROLLBACK TO submit")
                        outcomes.append((None, exc))
                    db.execute("RELEASE submit")
        except Exception as exc:  # nothing of the group was committed
            return [(None, exc)] * len(group)
        return outcomes

    @staticmethod
    def _insert(db: sqlite3.Connection, jobs: list[Job]) -> _Inserted:
        out: _Inserted = []
        for job in jobs:
            if job.idempotency_key is not None:
                row = db.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE idempotency_key = ?",
                    (job.idempotency_key,),
                ).fetchone()
                if row is not None:
                    out.append((_row_to_job(row), False))
                    continue
            if not job.runner:
                job.runner = runner_of(job.model, job.payload.get("options"))
            # ON CONFLICT: another writer (another instance sharing a PostgreSQL store)
            # may have committed the same key since the SELECT above
            row = db.execute(
                "INSERT INTO jobs (id, model, kind, priority, status, payload, metadata,"
                " submitted_at, attempts, not_before, idempotency_key, runner, source)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (idempotency_key) DO NOTHING RETURNING seq",
                (
                    job.id,
                    job.model,
                    job.kind.value,
                    job.priority.value,
                    job.status.value,
                    _dump(job.payload),
                    _dump(job.metadata),
                    job.submitted_at,
                    job.attempts,
                    job.not_before,
                    job.idempotency_key,
                    job.runner,
                    job.source,
                ),
            ).fetchone()
            if row is None:
                row = db.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE idempotency_key = ?",
                    (job.idempotency_key,),
                ).fetchone()
                out.append((_row_to_job(row), False))
                continue
            job.seq = int(row[0])
            out.append((job, True))
        return out

    def get(self, job_id: str, *, payload: bool = True) -> Job | None:
        """One job; with ``payload=False`` its payload is left out (``{}``)."""
        columns = _COLUMNS if payload else _PUBLIC_COLUMNS
        rows = self._read(f"SELECT {columns} FROM jobs WHERE id = ?", (job_id,))
        return _row_to_job(rows[0]) if rows else None

    def job_view(self, job_id: str, render: Callable[[Job], bytes]) -> bytes | None:
        """``render`` of the job without its payload, or None if unknown.

        Served from memory while the job is unchanged: ``render`` must depend only on the
        job, and the same ``render`` must be passed on every call.
        """
        view = self._views.get(job_id)
        if view is not None:
            return view
        ticket = self._views.ticket()
        job = self.get(job_id, payload=False)
        if job is None:
            return None
        view = render(job)
        self._views.fill(ticket, job_id, view)
        return view

    def list_jobs(
        self,
        *,
        status: str | None = None,
        model: str | None = None,
        limit: int = 100,
        before_seq: int | None = None,
    ) -> list[Job]:
        """Newest first (by ``seq``), without payloads; with ``before_seq``, only jobs
        stored before that one, so that a page ends where the next begins. ``model`` is a
        model identity (:func:`modelmanager.names.model_key`): every spelling, every
        runner of it."""
        where: list[str] = []
        args: list[Any] = []
        if status:
            where.append("status = ?")
            args.append(status)
        if model:
            where.append("(runner = ? OR substr(runner, 1, ?) = ?)")
            args.extend([model, len(model) + 1, model + "|"])
        if before_seq is not None:
            where.append("seq < ?")
            args.append(before_seq)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._read(
            f"SELECT {_PUBLIC_COLUMNS} FROM jobs {clause} ORDER BY seq DESC LIMIT ?",
            [*args, limit],
        )
        return [_row_to_job(r) for r in rows]

    def counts_by_status(self) -> dict[str, int]:
        rows = self._read("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        return {status: n for status, n in rows}

    def waiting_jobs(self) -> list[tuple[str, str, str, int, float, float]]:
        """(id, runner, priority, seq, submitted_at, not_before) of every pending job."""
        return self._read(
            "SELECT id, runner, priority, seq, submitted_at, not_before FROM jobs"
            " WHERE status = 'pending' ORDER BY seq"
        )

    # ---------------------------------------------------------------- state changes

    def mark_queued(self, runner: str) -> int:
        """pending -> queued for every waiting job of ``runner`` (its load started)."""
        with self._write(durable=False, touches=()) as db:
            rows = db.execute(
                "UPDATE jobs SET status = 'queued' WHERE runner = ? AND status = 'pending'"
                " RETURNING id",
                (runner,),
            ).fetchall()
            self._views.drop(r[0] for r in rows)
        return len(rows)

    def unmark_queued(self, runner: str) -> int:
        """queued -> pending for ``runner`` (its load failed or was dropped)."""
        with self._write(durable=False, touches=()) as db:
            rows = db.execute(
                "UPDATE jobs SET status = 'pending' WHERE runner = ? AND status = 'queued'"
                " RETURNING id",
                (runner,),
            ).fetchall()
            self._views.drop(r[0] for r in rows)
        return len(rows)

    def claim(self, job_ids: list[str], now: float, node: str | None = None) -> list[Job]:
        """pending/queued -> running for these jobs on backend ``node``, counting the
        attempt now.

        Jobs no longer waiting (cancelled meanwhile) are skipped. One transaction.
        """
        if not job_ids:
            return []
        marks = ",".join("?" * len(job_ids))
        with self._write(durable=False, touches=job_ids) as db:
            rows = db.execute(
                f"UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?,"
                f" node = COALESCE(?, node)"
                f" WHERE id IN ({marks}) AND status IN ('pending','queued')"
                f" RETURNING {_COLUMNS}",
                [now, node, *job_ids],
            ).fetchall()
        order = {job_id: i for i, job_id in enumerate(job_ids)}
        jobs = [_row_to_job(r) for r in rows]
        jobs.sort(key=lambda j: order[j.id])
        return jobs

    def complete(
        self, job_id: str, attempt: int, result: Any, timings: dict[str, int], now: float
    ) -> bool:
        """running -> complete, only for the current attempt. False if superseded."""
        with self._write(durable=False, touches=(job_id,)) as db:
            rows = db.execute(
                "UPDATE jobs SET status = 'complete', result = ?, timings = ?, completed_at = ?,"
                " error = NULL, error_code = NULL"
                f" WHERE id = ? AND status = 'running' AND attempts = ? RETURNING {_END_COLUMNS}",
                (_dump(result), _dump(timings), now, job_id, attempt),
            ).fetchall()
        self._ended(JobStatus.COMPLETE, rows, now)
        return len(rows) == 1

    def fail(self, job_id: str, attempt: int | None, error: str, code: str, now: float) -> bool:
        """-> failed. ``attempt`` fences a running job; None fails a waiting job."""
        with self._write(durable=False, touches=(job_id,)) as db:
            if attempt is None:
                cur = db.execute(
                    f"UPDATE jobs SET status = 'failed', error = ?, error_code = ?,"
                    f" completed_at = ? WHERE id = ? AND status IN {_sources(JobStatus.FAILED)}"
                    f" AND status != 'running' RETURNING {_END_COLUMNS}",
                    (error, code, now, job_id),
                )
            else:
                cur = db.execute(
                    "UPDATE jobs SET status = 'failed', error = ?, error_code = ?,"
                    " completed_at = ? WHERE id = ? AND status = 'running' AND attempts = ?"
                    f" RETURNING {_END_COLUMNS}",
                    (error, code, now, job_id, attempt),
                )
            rows = cur.fetchall()
        self._ended(JobStatus.FAILED, rows, now)
        return len(rows) == 1

    def requeue(self, job_id: str, attempt: int, error: str, code: str, not_before: float) -> bool:
        """running -> pending for a retry after ``not_before``; fenced by attempt."""
        with self._write(durable=False, touches=(job_id,)) as db:
            cur = db.execute(
                "UPDATE jobs SET status = 'pending', error = ?, error_code = ?, not_before = ?"
                " WHERE id = ? AND status = 'running' AND attempts = ?",
                (error, code, not_before, job_id, attempt),
            )
            return cur.rowcount == 1

    def release(self, job_ids: list[str]) -> int:
        """running -> pending without using up the attempt (the job never reached Ollama)."""
        if not job_ids:
            return 0
        marks = ",".join("?" * len(job_ids))
        with self._write(durable=False, touches=job_ids) as db:
            cur = db.execute(
                f"UPDATE jobs SET status = 'pending',"
                f" attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"
                f" WHERE id IN ({marks}) AND status = 'running'",
                job_ids,
            )
            return cur.rowcount

    def cancel(self, job_id: str, now: float) -> JobStatus | None:
        """-> cancelled if not finished. Returns the status it had, or None if unknown."""
        with self._write(touches=(job_id,)) as db:
            row = db.execute(
                f"SELECT status, {_END_COLUMNS} FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                return None
            old = JobStatus(row[0])
            if JobStatus.CANCELLED in TRANSITIONS[old]:
                db.execute(
                    "UPDATE jobs SET status = 'cancelled', completed_at = ? WHERE id = ?",
                    (now, job_id),
                )
        if JobStatus.CANCELLED in TRANSITIONS[old]:
            self._ended(JobStatus.CANCELLED, [row[1:]], now)
        return old

    def retry(self, job_id: str) -> Job | None:
        """failed -> pending with a fresh attempt budget. None unless it was failed."""
        with self._write(touches=(job_id,)) as db:
            row = db.execute(
                f"UPDATE jobs SET status = 'pending', attempts = 0, not_before = 0,"
                f" error = NULL, error_code = NULL, completed_at = NULL, started_at = NULL"
                f" WHERE id = ? AND status = 'failed' RETURNING {_COLUMNS}",
                (job_id,),
            ).fetchone()
        return _row_to_job(row) if row else None

    def recover(self, max_attempts: int, now: float) -> tuple[int, int]:
        """After a restart: queued/running -> pending, or -> failed once attempts are used up.

        Returns (requeued, failed).
        """
        with self._write() as db:
            return self._take_back(db, max_attempts, now)

    def _take_back(self, db: Any, max_attempts: int, now: float) -> tuple[int, int]:
        """``recover``'s statements, in the caller's transaction on ``db``."""
        lost = f"status IN ('queued','running'){self._LOST}"
        failed = db.execute(
            "UPDATE jobs SET status = 'failed', error_code = 'WORKER_LOST', completed_at = ?,"
            " error = 'the service stopped while this job ran, ' || attempts ||"
            " ' time(s); giving up after MAX_ATTEMPTS'"
            f" WHERE {lost} AND attempts >= ?",
            (now, max_attempts),
        ).rowcount
        requeued = db.execute(
            f"UPDATE jobs SET status = 'pending'{self._FREE} WHERE {lost}"
        ).rowcount
        return requeued, failed

    def expire(self, submitted_before: float, now: float, timeout: float) -> list[str]:
        """Fail every unfinished job submitted before ``submitted_before`` (JOB_TIMEOUT).

        A running job's late result is then dropped by the fence. Returns the ids.
        """
        with self._write(durable=False, touches=()) as db:
            rows = db.execute(
                "UPDATE jobs SET status = 'failed', error_code = 'JOB_TIMEOUT', completed_at = ?,"
                " error = 'the job did not finish within JOB_TIMEOUT (' || ? || ' s)'"
                " WHERE submitted_at < ? AND status IN ('pending','queued','running')"
                f" RETURNING id, {_END_COLUMNS}",
                (now, timeout, submitted_before),
            ).fetchall()
            expired = [r[0] for r in rows]
            self._views.drop(expired)
        self._ended(JobStatus.FAILED, [r[1:] for r in rows], now)
        return expired

    def purge(self, completed_before: float) -> int:
        """Delete finished jobs (and results) completed before the cutoff (RESULT_TTL)."""
        with self._write(durable=False, touches=()) as db:
            rows = db.execute(
                "DELETE FROM jobs WHERE completed_at < ?"
                " AND status IN ('complete','failed','cancelled') RETURNING id",
                (completed_before,),
            ).fetchall()
            self._views.drop(r[0] for r in rows)
        return len(rows)

    # ------------------------------------------------------------------ model stats

    def load_model_stats(self) -> dict[str, dict[str, Any]]:
        rows = self._read(
            "SELECT model, vram_bytes, ps_vram_bytes, load_seconds, loads FROM model_stats"
        )
        return {
            m: {"vram_bytes": v, "ps_vram_bytes": p, "load_seconds": s, "loads": n}
            for m, v, p, s, n in rows
        }

    def save_model_stats(
        self,
        model: str,
        *,
        vram_bytes: int | None,
        ps_vram_bytes: int | None,
        load_seconds: float | None,
        now: float,
        count_load: bool,
    ) -> None:
        with self._write(durable=False, views=False) as db:
            db.execute(
                "INSERT INTO model_stats (model, vram_bytes, ps_vram_bytes, load_seconds,"
                " loads, updated_at) VALUES (?,?,?,?,?,?)"
                " ON CONFLICT(model) DO UPDATE SET"
                " vram_bytes = COALESCE(excluded.vram_bytes, model_stats.vram_bytes),"
                " ps_vram_bytes = COALESCE(excluded.ps_vram_bytes, model_stats.ps_vram_bytes),"
                " load_seconds = COALESCE(excluded.load_seconds, model_stats.load_seconds),"
                " loads = model_stats.loads + excluded.loads, updated_at = excluded.updated_at",
                (model, vram_bytes, ps_vram_bytes, load_seconds, int(count_load), now),
            )

    # ------------------------------------------------------------------------ nodes

    def save_node(
        self,
        name: str,
        url: str,
        *,
        gpu_url: str | None,
        vram_budget_mb: int | None,
        gpus: str | None,
        now: float,
    ) -> bool:
        """Persist a registered backend. False if one of that name is already stored."""
        row = {
            "name": name,
            "url": url,
            "gpu_url": gpu_url,
            "vram_budget_mb": vram_budget_mb,
            "gpus": gpus,
            "registered_at": now,
            **self._node_owner(),
        }
        with self._write(views=False) as db:
            cur = db.execute(
                f"INSERT INTO nodes ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
                " ON CONFLICT DO NOTHING",
                tuple(row.values()),
            )
            return cur.rowcount == 1

    def _node_owner(self) -> dict[str, str]:
        """The ``owner`` column of the nodes this store saves and loads (none here)."""
        return {}

    def delete_node(self, name: str) -> bool:
        with self._write(views=False) as db:
            return db.execute("DELETE FROM nodes WHERE name = ?", (name,)).rowcount == 1

    def load_nodes(self) -> list[tuple[str, str, str | None, int | None, str | None]]:
        """(name, url, gpu_url, vram_budget_mb, gpus) of every registered backend (this
        store's owner's, where nodes have one)."""
        owner = self._node_owner()
        return self._read(
            "SELECT name, url, gpu_url, vram_budget_mb, gpus FROM nodes"
            f"{' WHERE owner = ?' if owner else ''} ORDER BY registered_at",
            tuple(owner.values()),
        )

    def integrity_check(self) -> str:
        return str(self._read("PRAGMA integrity_check")[0][0])

    # -------------------------------------------------------------------- downloads
    # The latest download of each model on each node: ``model`` is the model's identity
    # (:func:`modelmanager.names.model_key`), ``name`` the name sent to Ollama, ``status``
    # DOWNLOADING, DOWNLOADED, PARTIAL or NOT_FOUND, times in seconds since the epoch.

    def save_download(
        self,
        node: str,
        model: str,
        *,
        name: str,
        task_id: str,
        status: str,
        started_at: float,
        ended_at: float | None = None,
        error: str | None = None,
    ) -> None:
        """Record the download of ``model`` on ``node``, replacing the one before."""
        with self._write(views=False) as db:
            db.execute(
                "INSERT INTO downloads (node, model, name, task_id, status, started_at,"
                " ended_at, error) VALUES (?,?,?,?,?,?,?,?)"
                " ON CONFLICT(node, model) DO UPDATE SET name = excluded.name,"
                " task_id = excluded.task_id, status = excluded.status,"
                " started_at = excluded.started_at, ended_at = excluded.ended_at,"
                " error = excluded.error",
                (node, model, name, task_id, status, started_at, ended_at, error),
            )

    def delete_download(self, node: str, model: str) -> bool:
        """Forget the download of ``model`` on ``node``. False if none was recorded."""
        with self._write(views=False) as db:
            cur = db.execute("DELETE FROM downloads WHERE node = ? AND model = ?", (node, model))
            return cur.rowcount == 1

    def load_downloads(
        self,
    ) -> list[tuple[str, str, str, str, str, float, float | None, str | None]]:
        """(node, model, name, task_id, status, started_at, ended_at, error) of every
        recorded download, oldest first."""
        return self._read(
            "SELECT node, model, name, task_id, status, started_at, ended_at, error"
            " FROM downloads ORDER BY started_at"
        )

    def unfinished_jobs(self, model: str) -> int:
        """How many jobs of ``model`` (a model identity: every runner of it) are waiting or
        running."""
        rows = self._read(
            "SELECT COUNT(*) FROM jobs WHERE status IN ('pending','queued','running')"
            " AND (runner = ? OR substr(runner, 1, ?) = ?)",
            (model, len(model) + 1, model + "|"),
        )
        return int(rows[0][0])
