"""The job runner: runs jobs on a backend (answers streamed from Ollama), aborts them on
request, and hands results and failures to the store.

Each job runs on a thread of a pool. Its request goes out as the job gives it (the
payload unchanged; ``keep_alive`` is the manager's); its result or failure is written to
the store fenced by the attempt, following the planner's verdict
(:func:`modelmanager.planner.after_job_error`), and a :class:`~modelmanager.events.
JobEnded` event tells the scheduler. Logs one line when a job starts and one when it ends.

Thread safety: ``start``, ``abort`` and ``in_flight`` may be called from any thread.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from config import Config

from .abortable import Call
from .backend import Backend
from .errors import (
    BackendTimeout,
    BackendUnavailable,
    DatabaseUnavailable,
    EndpointNotAvailable,
    OllamaError,
    OutOfMemory,
    RequestAborted,
    RunnerCrashed,
)
from .events import Event, JobEnded, JobOutcome
from .features import Feature, embed_one_by_one
from .logger import escape, get_logger
from .model_registry import ModelRegistry
from .models import Job, JobKind
from .ollama_client import InferenceResult, Kind
from .plan import JobVerdict
from .silence import SilenceWatch, Watched
from .store import Store
from .streams import Ended, StreamHub
from .verdicts import after_job_error, backoff_delay, silence_retried

T = TypeVar("T")

log = get_logger("ENGINE")


class JobRunner:
    def __init__(
        self,
        store: Store,
        registry: ModelRegistry,
        config: Config,
        post: Callable[[Event], None],
        *,
        keep_alive: float,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        streams: StreamHub | None = None,
        pinned: frozenset[str] = frozenset(),
    ) -> None:
        self.store = store
        self.pinned = pinned  # runner keys kept loaded: their jobs ask Ollama to keep them
        self.streams = streams or StreamHub()
        self.registry = registry
        self.config = config
        self._post = post
        self.keep_alive = keep_alive  # what Ollama is told to keep the model for (s)
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._calls: dict[str, Call] = {}  # job id -> its request in flight
        self._delivered: set[str] = set()  # jobs whose chunks reached a client live
        self._nodes: dict[str, str] = {}  # job id -> the backend it runs on
        self._attempts: dict[str, int] = {}  # job id -> the attempt in flight
        # with a shared queue: whether this instance's claims surely still hold (Cluster)
        self.claims_hold: Callable[[], bool] = lambda: True
        self._expected = 0  # taken from the queue, about to start (counted as in flight)
        self._closed = False
        self._pool = ThreadPoolExecutor(config.ENGINE_THREADS, thread_name_prefix="job")
        # REQUEST_TIMEOUT, judged per runner: a request queued in Ollama behind another
        # of its runner is not silent while that one streams (see modelmanager.silence)
        self.silence = SilenceWatch(config.REQUEST_TIMEOUT)

    def in_flight(self) -> int:
        """Jobs running, and jobs taken from the queue that are about to start."""
        with self._lock:
            return len(self._calls) + self._expected

    def expect(self, n: int) -> None:
        """Count ``n`` jobs just taken from the queue as in flight until they start (a
        negative ``n`` takes back ones that will not), so that QUEUE_MAX_SIZE counts them
        in between."""
        with self._lock:
            self._expected = max(0, self._expected + n)

    def start(self, job: Job, backend: Backend, label: str) -> None:
        """Run ``job`` (already claimed: status running, attempt counted) on ``backend``.
        After :meth:`close` nothing starts: the job stays running in the store and runs
        again at the next start, as after a crash."""
        call = Call()
        with self._lock:
            self._expected = max(0, self._expected - 1)
            if self._closed:
                return
            self._calls[job.id] = call
            self._nodes[job.id] = backend.name
            self._attempts[job.id] = job.attempts
        log.info("job %s started on %s (attempt %d)", job.id, label, job.attempts)
        self._pool.submit(self._run, job, backend, call)

    def running_attempts(self) -> dict[str, int]:
        """{job id: its attempt} of the jobs whose requests are in flight."""
        with self._lock:
            return {job_id: self._attempts[job_id] for job_id in self._calls}

    def abort(self, job_ids: list[str] | None = None) -> int:
        """Abort the requests in flight for these jobs (None: all), so Ollama stops
        generating and frees the slot at once. Returns how many were aborted."""
        with self._lock:
            calls = (
                list(self._calls.values())
                if job_ids is None
                else [c for j in job_ids if (c := self._calls.get(j)) is not None]
            )
        for call in calls:
            call.abort()
        return len(calls)

    def release(self, node: str) -> int:
        """Abort the requests in flight on backend ``node`` and put their jobs back in the
        queue without using up their attempt (the backend went away). Returns how many."""
        with self._lock:
            calls = [c for j, c in self._calls.items() if self._nodes.get(j) == node]
        for call in calls:
            call.abort(release=True)
        return len(calls)

    def in_flight_on(self, node: str) -> int:
        with self._lock:
            return sum(1 for j in self._calls if self._nodes.get(j) == node)

    def close(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the jobs in flight, then abort the rest (they rerun
        at the next start). True if all ended in time."""
        with self._lock:
            self._closed = True
        deadline = time.monotonic() + timeout
        while self.in_flight() and time.monotonic() < deadline:
            time.sleep(0.02)
        drained = self.in_flight() == 0
        if not drained:
            self.abort()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.silence.close()
        return drained

    # ------------------------------------------------------------------------ running

    def _run(self, job: Job, backend: Backend, call: Call) -> None:
        ended: JobEnded | None = None
        watched = self.silence.watch(backend.name, job.runner or job.model, call)
        try:
            try:
                res = self._send(job, backend, call, watched)
            except OllamaError as exc:
                if isinstance(exc, RequestAborted) and call.release:
                    exc = BackendUnavailable(
                        f"node {backend.name} went away", model=job.model, reached=False
                    )
                elif isinstance(exc, RequestAborted) and call.expired:
                    exc = BackendTimeout("silent too long", model=job.model, chunks=watched.chunks)
                ended = self._failed(job, backend, exc, watched.behind)
                return
            except Exception as exc:
                log.exception("job %s: unexpected error", job.id)
                ended = self._failed(job, backend, OllamaError(f"unexpected error: {exc}"))
                return
            ended = self._completed(job, backend, res)
        except DatabaseUnavailable:  # (logged by _stored) the job runs again later
            ended = JobEnded(job, backend.name, JobOutcome.ABORTED)
        finally:
            self.silence.done(watched)
            with self._lock:
                self._calls.pop(job.id, None)
                self._nodes.pop(job.id, None)
                self._attempts.pop(job.id, None)
            self._delivered.discard(job.id)
            ended = ended or JobEnded(job, backend.name, JobOutcome.ABORTED)
            if self.streams.watched(job.id):
                self.streams.end(job.id, self._ended(job, ended))
            self._post(ended)

    def _ended(self, job: Job, ended: JobEnded) -> Ended:
        """What a subscriber to the job's stream learns of how its attempt ended."""
        if ended.outcome is JobOutcome.FAILED:
            stored = self.store.get(job.id, payload=False)
            if stored is not None:
                return Ended(ended.outcome.value, stored.error, stored.error_code)
        return Ended(ended.outcome.value)

    def _send(self, job: Job, backend: Backend, call: Call, watched: Watched) -> InferenceResult:
        fields = {k: v for k, v in job.payload.items() if k != "keep_alive"}
        seen = watched.seen
        relay: Callable[[dict[str, Any]], None] | None = None
        if self.streams.watched(job.id):
            job_id, publish = job.id, self.streams.publish
            delivered = self._delivered if self.streams.live(job.id) else None

            def relay(chunk: dict[str, Any]) -> None:
                seen()
                if not self._held_until_ours(call):
                    return  # taken over while this instance could not check: not ours
                publish(job_id, chunk)
                if delivered is not None:
                    delivered.add(job_id)  # (set.add: atomic)

        on_chunk = relay or (lambda _chunk: seen())

        keep_alive = -1 if job.runner in self.pinned else self.keep_alive
        if job.kind is JobKind.EMBED and backend.features.has(Feature.EMBED) is not False:
            try:
                return backend.client.infer(
                    "embed",
                    job.model,
                    fields,
                    keep_alive=keep_alive,
                    call=call,
                    on_chunk=on_chunk,
                    watched=True,
                )
            except EndpointNotAvailable:  # an older Ollama: the legacy endpoint, at once
                backend.features.lacks(Feature.EMBED)
        if job.kind is JobKind.EMBED:
            # one request per input, each bounded by the client's read timeout instead
            self.silence.done(watched)
            res = embed_one_by_one(
                backend.client, job.model, fields, keep_alive=keep_alive, call=call
            )
            if relay is not None:
                relay({"model": res.model, "embeddings": res.embeddings})
            return res
        kind: Kind = "chat" if job.kind is JobKind.CHAT else "generate"
        return backend.client.infer(
            kind,
            job.model,
            fields,
            keep_alive=keep_alive,
            call=call,
            on_chunk=on_chunk,
            watched=True,
        )

    def _completed(self, job: Job, backend: Backend, res: InferenceResult) -> JobEnded:
        timings = {
            "total_duration": res.total_duration_ns,
            "load_duration": res.load_duration_ns,
            "prompt_eval_count": res.prompt_eval_count,
            "eval_count": res.eval_count,
            "eval_duration": res.eval_duration_ns,
        }
        self.registry.learn_job(job.runner, (res.total_duration_ns - res.load_duration_ns) / 1e9)
        output = job_output(job, res)
        now = self._clock()
        if self._stored(
            job, "result", lambda: self.store.complete(job.id, job.attempts, output, timings, now)
        ):
            log.info("job %s complete (%s, %d tokens)", job.id, job.model, res.eval_count)
            return JobEnded(job, backend.name, JobOutcome.COMPLETE)
        log.info("job %s: late result of a superseded attempt dropped", job.id)
        return JobEnded(job, backend.name, JobOutcome.SUPERSEDED)

    def _failed(self, job: Job, backend: Backend, exc: OllamaError, behind: int = 0) -> JobEnded:
        now = self._clock()
        if isinstance(exc, BackendTimeout):
            exc = self._timeout_error(exc, behind)
        delay = backoff_delay(
            job.attempts,
            self.config.RETRY_BASE_SECONDS,
            self.config.RETRY_MAX_SECONDS,
            self._rng.random(),
        )
        decision = after_job_error(
            # a client already has part of this attempt's answer: not run again
            transient=exc.transient and job.id not in self._delivered,
            reached=not (isinstance(exc, BackendUnavailable) and not exc.reached),
            aborted=isinstance(exc, RequestAborted),
            out_of_memory=isinstance(exc, OutOfMemory),
            attempts=job.attempts,
            max_attempts=self.config.MAX_ATTEMPTS,
            delay=delay,
        )
        oom, crashed = isinstance(exc, OutOfMemory), isinstance(exc, RunnerCrashed)
        message = escape(exc.message)
        outcome = JobOutcome.ABORTED
        not_before = 0.0
        if decision.verdict is JobVerdict.ABORTED:
            log.info("job %s: request to Ollama aborted", job.id)
        elif decision.verdict is JobVerdict.RELEASE:
            self._stored(job, "release", lambda: self.store.release([job.id]))
            outcome = JobOutcome.RELEASED
            log.warning("job %s: Ollama unreachable (%s); job waits", job.id, message)
        elif decision.verdict is JobVerdict.RETRY:
            not_before = now + decision.delay
            if self._stored(
                job,
                "retry",
                lambda: self.store.requeue(job.id, job.attempts, exc.message, exc.code, not_before),
            ):
                outcome = JobOutcome.RETRY
                log.warning(
                    "job %s: %s (%s); retry %d/%d in %.1fs",
                    job.id,
                    exc.code,
                    message,
                    job.attempts + 1,
                    self.config.MAX_ATTEMPTS,
                    decision.delay,
                )
            else:
                outcome = JobOutcome.SUPERSEDED
        elif self._stored(
            job,
            "failure",
            lambda: self.store.fail(job.id, job.attempts, exc.message, exc.code, now),
        ):
            outcome = JobOutcome.FAILED
            log.warning("job %s failed (%s): %s", job.id, exc.code, message)
        else:
            outcome = JobOutcome.SUPERSEDED
        lost = isinstance(exc, BackendUnavailable)
        return JobEnded(job, backend.name, outcome, not_before, oom, crashed, lost)

    def _held_until_ours(self, call: Call) -> bool:
        """Whether a chunk of ``call`` may go on to its client: at once while this
        instance's claims are known to hold (``claims_hold``; always with one instance).
        After a pause (SIGSTOP, a frozen VM, the database out of reach) longer than its
        lease allows, another instance may have taken the job over: the chunk waits until
        the shared queue was read again, which either confirms the claim or aborts the
        request (False)."""
        while not self.claims_hold():
            if call.aborted:
                return False
            time.sleep(0.02)
        return not call.aborted

    def _stored(self, job: Job, what: str, write: Callable[[], T]) -> T:
        """``write()``, a change of ``job`` in the store. While the database does not
        answer (PostgreSQL restarting) it is tried again, with pauses growing from 0.2 to
        2 s, for up to LEASE_SECONDS: the job's claim outlives an outage that short, so
        the answer Ollama gave is kept instead of the job running again. Then, or once
        the runner closes, :class:`DatabaseUnavailable` (logged): the job runs again
        once its claim is released."""
        deadline = time.monotonic() + self.config.LEASE_SECONDS
        pause = 0.2
        while True:
            try:
                return write()
            except DatabaseUnavailable as exc:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    log.warning(
                        "job %s: its %s could not be stored (%s); it runs again once its "
                        "claim is released",
                        job.id,
                        what,
                        exc,
                    )
                    raise
                if pause == 0.2:
                    log.info("job %s: the database does not answer; its %s waits", job.id, what)
                time.sleep(min(pause, left))
                pause = min(pause * 2, 2.0)

    def _timeout_error(self, exc: BackendTimeout, behind: int) -> BackendTimeout:
        """The timeout restated with the setting that bounds it and why it is (not)
        retried (:func:`~modelmanager.verdicts.silence_retried`). ``behind``: requests of
        the runner that were still ahead of this one in Ollama, silent as well."""
        limit = self.config.REQUEST_TIMEOUT
        if exc.chunks:
            text = (
                f"Ollama stalled for REQUEST_TIMEOUT ({limit:g} s) in the middle of the "
                f"answer, after {exc.chunks} chunk(s)"
            )
        elif behind:
            text = (
                f"Ollama sent no token within REQUEST_TIMEOUT ({limit:g} s), nor did the "
                f"{behind} request(s) of the model sent before it, which it may have "
                f"waited behind (Ollama looks stuck): a wait not its own, so worth a retry"
            )
        else:
            text = (
                f"Ollama sent no token within REQUEST_TIMEOUT ({limit:g} s) although no "
                f"other request of the model was ahead of it, so it is not retried: the "
                f"same request would most likely wait as long again (raise "
                f"MM_REQUEST_TIMEOUT if the model needs longer to read the prompt)"
            )
        timeout = BackendTimeout(text, status=exc.status, model=exc.model, chunks=exc.chunks)
        timeout.transient = silence_retried(chunks=exc.chunks, behind=behind)
        return timeout


def job_output(job: Job, res: InferenceResult) -> dict[str, Any]:
    """What a finished job stores as its result: Ollama's answer beyond the metrics.

    Generate: ``text`` (the response), ``thinking``, ``tool_calls``, ``context``,
    ``logprobs``, ``done_reason``; chat: ``text`` (the message content), ``message`` (the
    whole assistant message: what a client appends to continue the conversation),
    ``thinking``, ``tool_calls``, ``logprobs``, ``done_reason``; embed: ``embeddings``.
    Fields Ollama left out are left out.
    """
    raw = res.raw
    if job.kind is JobKind.EMBED:
        return {"embeddings": res.embeddings or []}
    out: dict[str, Any] = {"text": res.text}
    if job.kind is JobKind.CHAT:
        message = raw.get("message")
        if isinstance(message, dict):
            out["message"] = message
            for key in ("thinking", "tool_calls"):
                if message.get(key):
                    out[key] = message[key]
    else:
        for key in ("thinking", "tool_calls", "context"):
            if raw.get(key):
                out[key] = raw[key]
    for key in ("logprobs", "done_reason"):
        if raw.get(key):
            out[key] = raw[key]
    return out
