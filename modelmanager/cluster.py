"""One instance among several sharing a queue in PostgreSQL (``DATABASE_URL``).

The :class:`Cluster` keeps this instance's pending index in step with the shared queue
and keeps its claims alive; everything else (planning, loads, dispatch) is the scheduler
as with one instance, since a dispatch claims its jobs in the store and a job another
instance claimed first is skipped there.

Two threads:

- the *listener* holds ``LISTEN mm_jobs``: a submit anywhere marks the queue changed
  (the worker looks at once), a cancel or JOB_TIMEOUT of a job running here aborts its
  request at the backend, and a job's end anywhere wakes this instance's long polls.
  Notifications are a hint: a lost one costs at most one heartbeat.
- the *worker*, every ``HEARTBEAT_SECONDS`` and whenever the queue changed: renews this
  instance's row and the leases of its jobs, publishes its nodes and the runners it holds,
  puts back the jobs of instances whose lease expired (one instance at a time), aborts
  jobs running here that are no longer ours (cancelled, or taken back after a pause
  longer than the lease), and syncs the pending index with the store.

Affinity: before a load, the scheduler asks :meth:`Cluster.may_load`, which takes the
runner in the store (``holders``) unless another live instance holds it; and the runners
other instances hold are left out of this instance's planning (``served_elsewhere``):
their waiting jobs are left to them, unless this instance has no other waiting group to
serve and the runner's queue is long enough that a copy here pays for its load, by the
planner's own rule for a second backend (``REPLICA_FACTOR`` loads, on a backend with room
to spare after the waiting groups).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg

from config import Config

from .errors import DatabaseUnavailable
from .job_runner import JobRunner
from .logger import get_logger
from .model_registry import ModelRegistry
from .models import Priority
from .nodes import same_server
from .pending import PendingIndex
from .planner import REPLICA_FACTOR
from .scheduler import DB_DOWN_RELOG, Scheduler
from .store_pg import CHANNEL, PgStore

log = get_logger("CLUSTER")

RECONNECT_MAX = 10.0  # seconds between two tries to listen again, at most
SEQ_LOOKBACK = 1000  # jobs before the newest seen that a quick look reads again
FULL_AFTER_END = 0.25  # s: jobs ending anywhere bring a full look at most this often
# the database could not be reached or answered with an error: try again later
DB_ERRORS = (psycopg.Error, DatabaseUnavailable)


class Cluster:
    """This instance's part in the shared queue; see the module's docstring.

    ``nodes`` returns this instance's nodes for ``GET /api/v1/instances`` (a list of
    JSON objects). Thread-safe; ``start`` and ``stop`` once each.
    """

    def __init__(
        self,
        config: Config,
        store: PgStore,
        pending: PendingIndex,
        scheduler: Scheduler,
        jobs: JobRunner,
        registry: ModelRegistry,
        nodes: Callable[[], list[dict[str, Any]]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.pending = pending
        self.scheduler = scheduler
        self.jobs = jobs
        self.registry = registry
        self.nodes = nodes
        self.clock = clock
        self.name = instance_name(config)
        self.url = instance_url(config)
        self.started_at = clock()
        self._stop = threading.Event()
        self._changed = threading.Event()  # the shared queue changed: look at it
        self._full = threading.Event()  # ... and look at all of it
        self._threads: list[threading.Thread] = []
        self._listen_conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._replicas: frozenset[str] = frozenset()  # held elsewhere; a copy here pays
        # unfinished jobs of the shared queue that are not this instance's (at the last
        # sync), counted against QUEUE_MAX_SIZE with this instance's own
        self.elsewhere = 0
        self._seen = 0  # the highest job seq read so far
        self._ends = False  # jobs ended since the last full look
        self._full_at = 0.0  # when the last full look started (monotonic)
        self._elsewhere: frozenset[str] = frozenset()  # see served_elsewhere()
        self._down_logged = -DB_DOWN_RELOG  # when a lost database was last logged
        self._checked_at = time.monotonic()  # start of the last heartbeat that checked
        self._own: set[str] = set()  # runners of waiting front-door jobs only we may run

    # ------------------------------------------------------------------ lifecycle

    def bound(self, port: int) -> None:
        """The HTTP API listens on ``port``: the default name and URL say so."""
        self.name = instance_name(self.config, port)
        self.url = instance_url(self.config, port)

    def start(self) -> None:
        self.heartbeat()
        self._check_names()
        self.sync()
        for target, name in ((self._listen, "cluster-listen"), (self._work, "cluster")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info(
            "instance %s (%s) joined the shared queue in %s; lease %gs, heartbeat %gs",
            self.name,
            self.store.instance,
            self.store.path,
            self.config.LEASE_SECONDS,
            self.config.HEARTBEAT_SECONDS,
        )

    def stop(self) -> None:
        """Stop both threads; the instance's row goes once its jobs are back (``leave``)."""
        self._stop.set()
        self._changed.set()
        with self._lock:
            conn = self._listen_conn
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def leave(self) -> None:
        try:
            self.store.leave()
        except DB_ERRORS as exc:
            log.warning("could not remove this instance's row: %s", exc)

    def _check_names(self) -> None:
        """Warn when another live instance goes by this one's name (registered nodes
        belong to an instance by name) or has nodes of the same names (downloads are kept
        by node name)."""
        mine = {str(n.get("name")) for n in self.nodes()}
        for row in self._others():
            if row["name"] == self.name:
                log.warning(
                    "instance %s (%s) is also named %s: give each instance a name of its "
                    "own (INSTANCE_NAME); nodes registered at run time belong to a name",
                    row["id"],
                    row["url"],
                    self.name,
                )
            same = sorted(mine & {str(n.get("name")) for n in row["info"].get("nodes", [])})
            if same:
                log.warning(
                    "node name(s) %s also used by instance %s: name each host's nodes "
                    "differently (--ollama-backends a0=http://...), since downloads are "
                    "kept by node name",
                    ", ".join(same),
                    row["name"],
                )

    # -------------------------------------------------------------------- threads

    def _listen(self) -> None:
        pause = 0.5
        while not self._stop.is_set():
            try:
                conn = psycopg.connect(self.store.url, **self.store.connect_kwargs)
                with self._lock:
                    self._listen_conn = conn
                conn.execute(f"LISTEN {CHANNEL}")
                self._full.set()  # anything missed while not listening
                self._changed.set()
                pause = 0.5
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=1.0):
                        self._notified(note.payload)
            except DB_ERRORS as exc:
                if self._stop.is_set():
                    return
                log.warning("listening for the shared queue failed (%s); again in %gs", exc, pause)
                self._stop.wait(pause)
                pause = min(pause * 2, RECONNECT_MAX)
            finally:
                with self._lock:
                    conn_, self._listen_conn = self._listen_conn, None
                if conn_ is not None and not conn_.closed:
                    conn_.close()

    def _notified(self, payload: str) -> None:
        kind, _, job_id = payload.partition(":")
        if kind in ("submit", "held"):
            self._changed.set()
        elif kind == "cancel":
            self.pending.remove(job_id)
            if self.jobs.abort([job_id]):
                log.info("job %s cancelled: its request here is aborted", job_id)
            self.store.ended_elsewhere(frozenset((job_id,)))
        elif kind == "end":
            self.store.ended_elsewhere(frozenset((job_id,)))
            self._ends = True  # the queue's shape changed: look at all of it soon
            self._changed.set()

    def _work(self) -> None:
        due = 0.0
        while not self._stop.is_set():
            pause = due - time.monotonic()
            if self._ends:  # a full look is owed once FULL_AFTER_END has passed
                pause = min(pause, self._full_at + FULL_AFTER_END - time.monotonic())
            self._changed.wait(max(0.0, pause))
            if self._stop.is_set():
                return
            try:
                full = self._full.is_set()
                if self._ends and time.monotonic() - self._full_at >= FULL_AFTER_END:
                    full, self._ends = True, False
                if full:
                    self._full_at = time.monotonic()
                if time.monotonic() >= due:
                    started = time.monotonic()
                    due = started + self.config.HEARTBEAT_SECONDS
                    self.heartbeat()
                    self._reap()
                    self._check_running()
                    self._checked_at = started  # claims held then, and still hold now
                    full = True
                self._changed.clear()
                self._full.clear()
                if self.sync(full):
                    self.scheduler.wake()
            except Exception as exc:  # this thread keeps the leases: it must not die
                if not isinstance(exc, DB_ERRORS):  # a bug
                    log.exception("a look at the shared queue failed; trying again")
                elif time.monotonic() - self._down_logged >= DB_DOWN_RELOG:
                    self._down_logged = time.monotonic()
                    log.warning("the shared queue could not be read (%s); trying again", exc)
                due = 0.0  # the whole heartbeat again, with a full look
                self._stop.wait(min(1.0, self.config.HEARTBEAT_SECONDS))

    # ---------------------------------------------------------------------- steps

    def heartbeat(self) -> None:
        snap = self.scheduler.snapshot()
        runners = [r.runner for r in snap.runners if r.state in ("loading", "ready")]
        self.store.heartbeat(
            self.name,
            self.url,
            {"nodes": self.nodes()},
            runners,
            self.started_at,
            # a runner taken for a load that the snapshot read above does not show yet
            grace=2 * self.config.HEARTBEAT_SECONDS + 1.0,
        )

    def claims_hold(self) -> bool:
        """Whether this instance's claims surely still hold: its last heartbeat that
        renewed them and checked the jobs running here began less than LEASE_SECONDS
        minus HEARTBEAT_SECONDS ago (monotonic time, so a pause counts), so no other
        instance can have taken its jobs back since."""
        limit = self.config.LEASE_SECONDS - self.config.HEARTBEAT_SECONDS
        return time.monotonic() - self._checked_at < limit

    def publish(self) -> None:
        """Renew this instance's row now (its nodes changed), not at the next heartbeat.
        A database that does not answer is logged: the heartbeat does it later."""
        try:
            self.heartbeat()
        except DB_ERRORS as exc:
            log.warning("could not publish this instance's nodes now (%s)", exc)

    def _reap(self) -> None:
        requeued, failed = self.store.reap(self.config.MAX_ATTEMPTS, self.clock())
        if requeued or failed:
            log.warning(
                "an instance stopped renewing its lease: %d job(s) back in the queue, "
                "%d failed after MAX_ATTEMPTS",
                requeued,
                failed,
            )
            self._full.set()
            self._changed.set()

    def _check_running(self) -> None:
        attempts = self.jobs.running_attempts()
        running = list(attempts)
        lost = sorted(self.store.lost_here(attempts))
        if lost and self.jobs.abort(lost):
            log.info("%d job(s) here are no longer ours (cancelled or taken back)", len(lost))
        # claimed a while ago but not running here: the database dropped the connection
        # while the claim or the result was being written (a job about to start is
        # younger than this)
        grace = 2 * self.config.HEARTBEAT_SECONDS + 5.0
        orphans = self.store.release_orphans(running, self.clock() - grace)
        if orphans:
            log.warning(
                "%d job(s) claimed here but not running put back in the queue", len(orphans)
            )
            self._full.set()
            self._changed.set()

    def sync(self, full: bool = True) -> bool:
        """Bring the pending index in step with the shared queue's waiting jobs, and learn
        which runners other instances serve. ``full``: every waiting job, dropping jobs no
        longer waiting (claimed elsewhere, ended) and counting the queue for
        QUEUE_MAX_SIZE; otherwise (after a submit) only the jobs submitted since the last
        look. Returns whether it added any."""
        now = self.clock()
        present = self.pending.ids()  # before reading: a job added after is committed
        # sequence numbers are taken at insert, commits may land out of order: look back
        rows = self.store.claimable_jobs(None if full else self._seen - SEQ_LOOKBACK)
        held = self.store.held_elsewhere()
        mine = {r.runner for r in self.scheduler.snapshot().runners}
        if full:
            counts = Counter(row[1] for row in rows)
            # as for a second backend, a copy goes only where there is room to spare after
            # the waiting groups: here, when no waiting group is ours or nobody's
            busy = any(r in mine or r not in held for r in counts)
            self._replicas = frozenset(
                r
                for r in counts
                if r in held and r not in mine and not busy and self._copy_pays(r, counts)
            )
        # a front door's job accepted here runs nowhere else: its model is loaded here
        # too when another instance holds it
        own = {row[1] for row in rows if row[7]}
        self._own = own if full else self._own | own
        self._elsewhere = frozenset(
            r for r in held if r not in self._replicas and r not in self._own
        )
        added = 0
        for job_id, runner, priority, seq, submitted, not_before, model, _ in rows:
            self._seen = max(self._seen, seq)
            if job_id not in present:
                self.pending.add(
                    job_id, runner, Priority(priority), seq, submitted, not_before, now, model
                )
                added += 1
        if full:
            for job_id in present - {row[0] for row in rows}:
                self.pending.remove(job_id)
            total = self.store.unfinished_count()
            self.elsewhere = max(0, total - len(self.pending) - self.jobs.in_flight())
        return added > 0

    def served_elsewhere(self) -> frozenset[str]:
        """Runners another live instance holds whose jobs this one leaves to it (the
        scheduler plans no load for them; it still runs their jobs if it holds one)."""
        return self._elsewhere

    def may_load(self, runner: str) -> bool:
        """Whether this instance may load ``runner`` now (the scheduler asks before every
        load): yes unless another live instance holds it or took it first, and a copy
        here does not pay."""
        try:
            if self.store.take_runner(
                runner, replica=runner in self._replicas or runner in self._own
            ):
                return True
        except DB_ERRORS as exc:
            log.warning("could not claim a model group (%s); loading it anyway", exc)
            return True
        self._elsewhere = self._elsewhere | {runner}
        return False

    def _copy_pays(self, runner: str, counts: Counter[str]) -> bool:
        """Whether a copy of ``runner`` here pays for its load while another instance
        serves it: its queue takes longer than REPLICA_FACTOR loads (the planner's rule
        for a second backend)."""
        info = self.registry.info(runner)
        load = info.learned_load_seconds or Scheduler.load_prior(info.estimate_bytes)
        slots = max(1, self.config.OLLAMA_NUM_PARALLEL)
        queue = counts[runner] * self.registry.job_seconds(runner) / slots
        return queue > REPLICA_FACTOR * load

    def nodes_elsewhere(self) -> list[tuple[str, str, str, bool]]:
        """(instance name, node name, node URL, whether that instance is on this host)
        for every node another live instance drives (from its last heartbeat)."""
        here = same_server(self.url)[1]
        out = []
        for row in self._others():
            same_host = same_server(row["url"])[1] == here
            for node in row["info"].get("nodes", []):
                out.append((row["name"], str(node.get("name")), str(node.get("url")), same_host))
        return out

    def _others(self) -> list[dict[str, Any]]:
        """The rows of the other live instances (:meth:`PgStore.instances`)."""
        return [row for row in self.store.instances() if row["id"] != self.store.instance]

    # ------------------------------------------------------------------------ view

    def describe(self) -> dict[str, Any]:
        """``GET /api/v1/instances``: every live instance, this one marked ``self``."""
        out = []
        for row in self.store.instances():
            out.append(
                {
                    "id": row["id"],
                    "name": row["name"],
                    "url": row["url"],
                    "self": row["id"] == self.store.instance,
                    "started_at": row["started_at"],
                    "heartbeat_at": row["heartbeat_at"],
                    "lease_expires_at": row["lease_expires_at"],
                    "claimed_jobs": row["claimed_jobs"],
                    "runners": [self.scheduler.label(r) for r in row["runners"]],
                    "nodes": row["info"].get("nodes", []),
                }
            )
        return {"database": "postgresql", "instances": out}


def instance_name(config: Config, port: int | None = None) -> str:
    return config.INSTANCE_NAME or f"{socket.gethostname()}:{port or config.HTTP_PORT}"


def instance_url(config: Config, port: int | None = None) -> str:
    """INSTANCE_URL, else ``http://HOST:port``, with this host's name where HOST is a
    wildcard address (0.0.0.0, ::), which no other host can reach."""
    host = config.HOST if config.HOST not in ("0.0.0.0", "::", "") else socket.gethostname()
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return config.INSTANCE_URL or f"http://{host}:{port or config.HTTP_PORT}"


def single_instance(
    config: Config, nodes: list[dict[str, Any]], started_at: float, port: int | None = None
) -> dict[str, Any]:
    """``GET /api/v1/instances`` with SQLite: this instance alone, holding no leases."""
    return {
        "database": "sqlite",
        "instances": [
            {
                "id": "local",
                "name": instance_name(config, port),
                "url": instance_url(config, port),
                "self": True,
                "started_at": started_at,
                "heartbeat_at": None,
                "lease_expires_at": None,
                "claimed_jobs": None,
                "runners": [],
                "nodes": nodes,
            }
        ],
    }
