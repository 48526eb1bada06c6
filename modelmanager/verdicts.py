"""Verdicts after an outcome: what becomes of a job whose request failed, and of a
runner whose load failed. Pure functions of the outcome and the settings, decided here
(with the planner's other rules) and carried out by the job runner and the scheduler.
"""

from __future__ import annotations

from .plan import JobDecision, JobVerdict, LoadDecision


def backoff_delay(attempt: int, base: float, cap: float, draw: float) -> float:
    """Capped exponential backoff with full jitter: ``draw`` (uniform in [0, 1)) times
    ``min(cap, base * 2 ** (attempt - 1))``, in seconds."""
    return draw * min(cap, base * 2 ** max(0, attempt - 1))


def after_job_error(
    *,
    transient: bool,
    reached: bool,
    aborted: bool,
    out_of_memory: bool,
    attempts: int,
    max_attempts: int,
    delay: float,
) -> JobDecision:
    """Retry, fail, give the attempt back, or nothing (aborted on purpose).

    A request that never reached Ollama (connection refused) uses up no attempt; a
    transient error (:attr:`~modelmanager.errors.OllamaError.transient`) is retried after
    ``delay`` while attempts remain; anything else fails the job. An out-of-memory answer
    also raises the runner's estimate.
    """
    if aborted:
        return JobDecision(JobVerdict.ABORTED)
    if not reached:
        return JobDecision(JobVerdict.RELEASE)
    if transient and attempts < max_attempts:
        return JobDecision(JobVerdict.RETRY, delay, raise_estimate=out_of_memory)
    return JobDecision(JobVerdict.FAIL, raise_estimate=out_of_memory)


def silence_retried(*, chunks: int, behind: int) -> bool:
    """Whether a request that timed out (silent for REQUEST_TIMEOUT) is worth retrying.

    ``chunks``: what it had received; ``behind``: how many requests of its runner were
    still ahead of it in Ollama when it timed out (they made no progress either). A stall
    in the middle of an answer may pass, and so may a wait behind requests that stalled
    (the runner may recover, or the job run elsewhere): both are retried. A request that
    got nothing with no request ahead of it had the runner to itself for the whole
    timeout (a prompt too long to read in time, or Ollama stuck on it): the same request
    would most likely wait as long again, so it is not.
    """
    return chunks > 0 or behind > 0


def after_load_failure(
    *,
    failures: int,
    max_attempts: int,
    not_found: bool,
    out_of_memory: bool,
    dropped: bool,
    delay: float,
) -> LoadDecision:
    """After a failed load (the ``failures``-th in a row): back off ``delay`` seconds; fail
    the runner's waiting jobs once the model is missing or the loads keep failing; raise
    the estimate when Ollama ran out of memory or dropped the model right after loading
    it (it evicted it again to fit another: the estimate was too low)."""
    return LoadDecision(
        backoff=delay,
        fail_jobs=not_found or failures >= max_attempts,
        raise_estimate=out_of_memory or dropped,
    )
