"""One front-door request's job, followed from submit to its last chunk.

A front door (Ollama's or OpenAI's API on the manager's port) turns each inference
request into a job of the shared queue (:meth:`Api.submit_streamed`, subscribed to its
answer before the scheduler can start it) and reads the answer through an
:class:`Answer`: the objects Ollama streams for the job, in order, as they arrive. An
attempt that fails before any of its chunks reached the client is retried by the job
runner as any job is, invisibly; one that fails after is not retried (the job runner
fails the job, :meth:`StreamHub.live`) and is reported (the caller writes an in-band
error, as Ollama does), so that it is not run again behind the client's back. A client
that goes away cancels its job, which aborts its request to Ollama (:meth:`Api.cancel`).

Thread safety: an :class:`Answer` is used by the one HTTP thread serving its request.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..api import Api
from ..contract import Submission
from ..errors import ApiError, DatabaseUnavailable, InvalidRequest, ModelManagerError, QueueFull
from ..logger import get_logger
from ..models import Priority
from ..streams import Ended, Subscription

log = get_logger("API")

POLL_MIN = 0.02  # s: first wait for a chunk before looking at the client and the store
POLL_MAX = 0.25  # s: longest wait between two such looks (how late a disconnect is seen)

# What a failed job's error code answers: Ollama's statuses where it has one.
STATUS_OF_CODE = {
    "MODEL_NOT_FOUND": 404,
    "BACKEND_BAD_REQUEST": 400,
    "ENDPOINT_NOT_AVAILABLE": 404,
    "BACKEND_BUSY": 503,
}


class JobFailed(ModelManagerError):
    """The job ended without an answer (or its answer broke off): ``status`` is what the
    client is told, ``code`` the job's error code."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class ClientGone(ModelManagerError):
    """The client closed its connection before the answer ended."""


class Answer:
    """The answer to one job, read as Ollama produces it.

    ``next()`` returns each chunk (Ollama's object, unchanged) and None once the answer
    is complete. With ``stream`` set, a chunk returned has reached the client, so a later
    failure of the attempt ends the answer (:class:`JobFailed`) instead of waiting for a
    retry; without it, a retried attempt starts over and :meth:`collect` returns the
    chunks of the attempt that completed. ``close()`` must be called in every case: it
    cancels the job unless it ended, and drops the subscription.
    """

    def __init__(
        self,
        api: Api,
        job_id: str,
        sub: Subscription,
        *,
        stream: bool,
        disconnected: Callable[[], bool],
        arrived: float,
    ) -> None:
        self.api = api
        self.job_id = job_id
        self.stream = stream
        self.arrived = arrived  # time.monotonic() when the request came in
        self._sub = sub
        self._disconnected = disconnected
        self._sent = 0  # chunks of the current attempt handed out
        self._chunks: list[dict[str, Any]] = []  # the current attempt's, without stream
        self._view: bytes | None = None
        self.ended = False  # the job reached its end (no cancel needed)
        self._closed = False
        self._replayed = False  # the answer came from the store (see _check_store)
        self._done = False  # the last chunk handed out was the final one (done: true)

    def next(self) -> dict[str, Any] | None:
        wait = POLL_MIN
        if self._replayed:  # the one chunk built from the store was the whole answer
            return None
        while True:
            item = self._sub.get(timeout=wait)
            if item is None:
                if self._disconnected():
                    raise ClientGone(f"the client of job {self.job_id} went away")
                stored = self._check_store()
                if stored is not None:  # the job ran on another instance
                    self.ended = True
                    self._sent += 1
                    self._chunks.append(stored)
                    self._sub.close()
                    self._replayed = True
                    return stored
                if not self.api.accepting:
                    self._check_stopping()
                wait = min(wait * 2, POLL_MAX)
                continue
            if isinstance(item, Ended):
                if self._ended(item):
                    return None
                continue
            if "error" in item:
                continue  # an in-band error line: the attempt's Ended follows with it
            self._sent += 1
            # (only a streamed chunk reached the client; collected ones wait for the end)
            self._done = self.stream and item.get("done") is True
            if not self.stream:
                self._chunks.append(item)
            return item

    def collect(self) -> list[dict[str, Any]]:
        """Every chunk of the answer (of the attempt that completed)."""
        while self.next() is not None:
            pass
        return self._chunks

    def _ended(self, ended: Ended) -> bool:
        """True when the answer is complete; raises when it failed; False when another
        attempt follows."""
        outcome = ended.outcome
        if outcome == "complete" or self._done:
            # (the final chunk went out: the client has the whole answer, whatever
            # became of the attempt after it, e.g. its result not stored)
            self.ended = True
            return True
        if outcome == "failed":
            self.ended = True
            raise failure(ended.error, ended.error_code)
        if outcome == "aborted":
            job = self._job()
            status = job.get("status")
            self.ended = status in ("failed", "cancelled")
            if self.ended:
                raise failure(job.get("error"), job.get("error_code"), status)
            if status != "complete" and not self.api.accepting:
                raise JobFailed(503, "the service is stopping; the request was not finished")
            # completed by another instance (this one's lease had lapsed): the answer
            # comes from the store (_check_store) if none went out; cut off here for
            # another reason (the database did not answer): the job runs again
        # retry, released, superseded: the job runs again
        if self.stream and self._sent:  # ... but part of this attempt's answer went out
            raise JobFailed(500, self._broken_off(outcome), "INTERRUPTED")
        self._sent = 0
        self._chunks = []
        return False

    def _broken_off(self, outcome: str) -> str:
        """Why a streamed answer under way ends with an attempt that did not complete."""
        if outcome == "released":
            return "the node running the model went away in the middle of the answer"
        job = self._job()
        if job.get("status") in ("pending", "queued", "running", "complete"):
            # (a streamed job is not retried here once a chunk went out: someone else
            # runs or ran it)
            return (
                "this instance lost the job in the middle of the answer (it was paused or "
                "cut off from the database for longer than LEASE_SECONDS, and another "
                "instance took the job over); send the request again"
            )
        return str(job.get("error") or "the model stopped in the middle of the answer")

    def _job(self) -> dict[str, Any]:
        try:
            return self.api.get(self.job_id)
        except DatabaseUnavailable as exc:  # what became of the job cannot be known now
            raise JobFailed(503, exc.message) from None
        except ApiError:
            return {}

    def _check_store(self) -> dict[str, Any] | None:
        """Fail at once when the job ended without running here (the scheduler failed it:
        model not installed or too large; cancelled through the job API; JOB_TIMEOUT).
        Return the whole answer, as one final chunk, when the job completed on another
        instance sharing the queue (this one's lease had lapsed): none of its chunks
        came here, and none will."""
        try:
            view = self.api.get_encoded(self.job_id)  # cached while the job is unchanged
        except ApiError:
            return None
        if view is self._view:
            return None
        self._view = view
        job = json.loads(view)
        status = job.get("status")
        if status in ("failed", "cancelled"):
            self.ended = True
            raise failure(job.get("error"), job.get("error_code"), status)
        # chunks of an attempt here are queued before its result is written: with none
        # handed out and none waiting, the attempt that completed ran elsewhere
        if status == "complete" and not self._sent and self._sub.empty():
            log.info(
                "job %s completed on another instance: its answer comes from the store", self.job_id
            )
            return stored_answer(job)
        return None

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_stopping(self) -> None:
        """The service is stopping: a job that has not started will not start now, so its
        client is told to come back (503) rather than kept waiting until the exit."""
        if self._job().get("status") in ("pending", "queued"):
            raise JobFailed(503, "the service is stopping; send the request again shortly")

    def close(self) -> None:
        """Cancel the job unless it ended (the client went away, or the answer broke
        off), and stop receiving. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        self._sub.close()
        if self.ended:
            return
        try:
            self.api.cancel(self.job_id)
        except ApiError:
            pass  # it ended meanwhile
        except Exception:
            log.exception("job %s: cancel after its client left failed", self.job_id)


def failure(error: Any, code: Any, status: Any = "failed") -> JobFailed:
    """The :class:`JobFailed` of a job that ended ``status`` with ``error``/``code``."""
    if status == "cancelled":
        return JobFailed(500, "the job was cancelled", "CANCELLED")
    text = str(error) if error else "the job failed"
    code_text = str(code) if code else None
    return JobFailed(STATUS_OF_CODE.get(code_text or "", 500), text, code_text)


def open_answer(
    api: Api,
    sub: Submission,
    source: str,
    *,
    stream: bool,
    environ: Mapping[str, Any],
    arrived: float,
) -> Answer:
    """Submit ``sub`` as a job of the front door ``source`` and follow its answer."""
    job, subscription = api.submit_streamed(sub, source, live=stream)
    probe = environ.get("waitress.client_disconnected")
    return Answer(
        api,
        job.id,
        subscription,
        stream=stream,
        disconnected=probe if callable(probe) else _never,
        arrived=arrived,
    )


def _never() -> bool:
    return False


def with_wait(chunk: dict[str, Any], arrived: float) -> dict[str, Any]:
    """A final chunk whose ``total_duration`` runs from the request's arrival here and
    whose ``load_duration`` includes the time it waited in the manager, as Ollama counts
    its own queue in ``load_duration``. Other chunks unchanged."""
    own = chunk.get("total_duration")
    if not isinstance(own, int) or isinstance(own, bool):
        return chunk
    total = int((time.monotonic() - arrived) * 1e9)
    if total <= own:
        return chunk
    load = chunk.get("load_duration")
    load = load if isinstance(load, int) and not isinstance(load, bool) else 0
    return {**chunk, "total_duration": total, "load_duration": load + total - own}


# ------------------------------------------------------------------ shared helpers


def priority_of(headers: Any, key_priority: str | None, default: str) -> Priority:
    """The request's priority (``headers``: Flask's): its ``X-Priority`` header (high,
    normal or low; anything else is a 400), else its API key's default, else
    ``default``."""
    given = headers.get("X-Priority")
    if given is not None:
        value = given.strip().lower()
        if value not in ("high", "normal", "low"):
            raise InvalidRequest(
                "the X-Priority header must be high, normal or low", field="X-Priority"
            )
        return Priority(value)
    return Priority(key_priority or default)


class OpenRequests:
    """Counts the inference requests served at once; beyond ``limit`` they are refused
    (:class:`QueueFull`, which the front doors answer 503 as Ollama answers a full
    queue), so that waiting clients never take every HTTP thread. Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self.open = 0

    def enter(self) -> None:
        with self._lock:
            if self.open >= self.limit:
                raise QueueFull(
                    f"too many requests in progress (MAX_OPEN_REQUESTS is {self.limit})",
                    headers={"Retry-After": "1"},
                )
            self.open += 1

    def leave(self) -> None:
        with self._lock:
            self.open = max(0, self.open - 1)


def stored_answer(job: Mapping[str, Any]) -> dict[str, Any]:
    """Ollama's final object for a completed job, built from its stored view
    (:func:`~modelmanager.api.job_to_json`): generate's ``response``, chat's ``message``,
    embed's ``embeddings``, with what else Ollama answered and its metrics (durations in
    ns, counts in tokens) where stored."""
    out: dict[str, Any] = {"model": job.get("model"), "created_at": job.get("completed_at")}
    kind = job.get("kind")
    if kind == "embed":
        out["embeddings"] = job.get("result") or []
    else:
        if kind == "chat":
            text = job.get("result") or ""
            out["message"] = job.get("message") or {"role": "assistant", "content": text}
        else:
            out["response"] = job.get("result") or ""
            for key in ("thinking", "tool_calls", "context"):
                if job.get(key):
                    out[key] = job[key]
        if job.get("logprobs"):
            out["logprobs"] = job["logprobs"]
        out.update(done=True, done_reason=job.get("done_reason") or "stop")
    for key in ("total_duration", "load_duration", "prompt_eval_count", "eval_count"):
        if job.get(key):
            out[key] = job[key]
    return out
