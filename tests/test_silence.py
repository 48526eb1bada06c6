"""REQUEST_TIMEOUT measures silence, and a request waiting in Ollama's queue behind
another request of its runner that is streaming its answer is not silent.

Real HTTP against the simulator (one slot per model, as Ollama's default
OLLAMA_NUM_PARALLEL 1): the manager sends a model one job more than it runs
(DISPATCH_AHEAD), and that job gets nothing until the slot frees."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from modelmanager.abortable import Call
from modelmanager.silence import SilenceWatch
from tests.conftest import Service, wait_until

MODEL = "qwen2.5:0.5b"
LONG = {"num_predict": 2000}


@pytest.fixture
def slow_sim(gpu_state: Path, make_sim: Any) -> Any:
    """The simulator at a time scale where a "long" answer (2000 tokens of qwen2.5:0.5b,
    about 6 s at real speed) streams for about 1.2 s."""
    return make_sim(vram_mb=24576, nvml_state=str(gpu_state), time_scale=0.2)


def _warm(make_service: Any, sim: Any, **config: Any) -> Service:
    svc: Service = make_service(sim, **config)
    job = svc.submit(model=MODEL, prompt="warm", options={"num_predict": 4})
    assert svc.wait_done([job])[job]["status"] == "complete"
    return svc


def test_a_job_queued_behind_a_long_answer_waits_it_out(slow_sim: Any, make_service: Any) -> None:
    """Each answer streams for longer than REQUEST_TIMEOUT; the jobs queued in Ollama
    behind it get no byte meanwhile, yet none times out."""
    svc = _warm(make_service, slow_sim, REQUEST_TIMEOUT=0.8)
    t0 = time.monotonic()
    ids = [svc.submit(model=MODEL, prompt=f"long {i}", options=LONG) for i in range(3)]
    done = svc.wait_done(ids)
    elapsed = time.monotonic() - t0
    assert [done[i]["status"] for i in ids] == ["complete"] * 3, [done[i] for i in ids]
    assert [done[i]["attempts"] for i in ids] == [1, 1, 1]
    assert elapsed > 3 * 0.8  # each answer outlasted REQUEST_TIMEOUT


def test_a_stalled_runner_still_times_out_and_the_job_behind_it_is_retried(
    sim: Any, make_service: Any
) -> None:
    """Ollama stuck before the first token: the job holding the slot fails by
    REQUEST_TIMEOUT as before (alone, it would wait as long again); the job queued
    behind it, as silent, is retried and completes once Ollama moves again."""
    svc = _warm(make_service, sim, REQUEST_TIMEOUT=0.5)
    sim.set_gate(True)  # requests holding a slot produce nothing
    first = svc.submit(model=MODEL, prompt="stuck ahead")
    wait_until(lambda: sim.stats()["gated"] == 1, what="the first job holds the slot")
    second = svc.submit(model=MODEL, prompt="queued behind")
    retried = wait_until(
        lambda: (body := svc.job(second))["attempts"] >= 2 and body,
        what="the queued job was retried",
    )
    assert "nor did the 1 request(s) of the model sent before it" in retried["error"]
    sim.set_gate(False)
    done = svc.wait_done([first, second])
    assert done[first]["status"] == "failed" and done[first]["attempts"] == 1
    assert done[first]["error_code"] == "BACKEND_TIMEOUT"
    assert "REQUEST_TIMEOUT (0.5 s) although no other request" in done[first]["error"]
    assert "not retried" in done[first]["error"]
    assert done[second]["status"] == "complete" and done[second]["result"]
    assert done[second]["attempts"] >= 2


def test_a_job_queued_behind_a_stall_mid_answer_is_retried_with_it(
    sim: Any, make_service: Any
) -> None:
    """The answer ahead stops after a few tokens: both it and the job waiting behind it
    are silent from then on, time out together and are retried."""
    svc = _warm(make_service, sim, REQUEST_TIMEOUT=0.5)
    sim.set_gate(True, after_tokens=3)
    first = svc.submit(model=MODEL, prompt="stalls part way", options=LONG)
    wait_until(lambda: sim.stats()["gated"] == 1, what="the first answer stalled")
    second = svc.submit(model=MODEL, prompt="queued behind the stall")
    wait_until(
        lambda: svc.job(first)["attempts"] >= 2 and svc.job(second)["attempts"] >= 2,
        what="both jobs retried",
    )
    sim.set_gate(False)
    done = svc.wait_done([first, second])
    assert [done[j]["status"] for j in (first, second)] == ["complete", "complete"]


# ------------------------------------------------------------- the watch, by its clock


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _watch() -> tuple[SilenceWatch, _Clock]:
    clock = _Clock()
    watch = SilenceWatch(10.0, clock=clock)
    watch.close()  # no thread: each test checks by hand
    return watch, clock


def test_the_watch_counts_a_runner_s_progress_for_the_requests_waiting_behind() -> None:
    watch, clock = _watch()
    ahead, behind, other = Call(), Call(), Call()
    streaming = watch.watch("node", "runner", ahead)
    queued = watch.watch("node", "runner", behind)
    elsewhere = watch.watch("node", "other runner", other)
    for _ in range(5):  # the answer ahead streams for 5 * 9 s
        clock.now += 9
        streaming.seen()
        watch.check()
    assert not behind.aborted and not ahead.aborted
    assert other.aborted and other.expired and elsewhere.behind == 0  # no progress of its own
    watch.done(streaming)  # completes: the queued one starts now, with nothing ahead
    clock.now += 9.9
    assert watch.check() > 0 and not behind.aborted
    clock.now += 0.1
    watch.check()
    assert behind.expired and queued.behind == 0


def test_a_request_mid_answer_is_silent_since_its_own_last_chunk() -> None:
    watch, clock = _watch()
    first, second = Call(), Call()
    a = watch.watch("node", "runner", first)
    b = watch.watch("node", "runner", second)
    b.seen()  # both hold a slot; b has started its answer
    for _ in range(3):
        clock.now += 6
        a.seen()
        watch.check()
    assert second.expired and b.behind == 1 and b.chunks == 1
    assert not first.aborted


def test_a_timed_out_request_is_no_progress_for_those_behind_it() -> None:
    watch, clock = _watch()
    first, second, third = Call(), Call(), Call()
    a = watch.watch("node", "runner", first)
    clock.now += 5
    b = watch.watch("node", "runner", second)
    clock.now += 5
    watch.check()
    assert first.expired and a.behind == 0 and not second.aborted
    watch.done(a)  # it ended by timing out: the clock of b runs on
    c = watch.watch("node", "runner", third)
    clock.now += 5
    watch.check()
    assert second.expired and b.behind == 1  # it waited behind a, as silent as it
    assert not third.aborted
    watch.done(b)
    clock.now += 5
    watch.check()
    assert third.expired and c.behind == 1  # b was ahead of it (a had gone)


def test_a_cancel_ahead_frees_the_slot_and_is_no_timeout() -> None:
    watch, clock = _watch()
    first, second = Call(), Call()
    a = watch.watch("node", "runner", first)
    b = watch.watch("node", "runner", second)
    clock.now += 5
    first.abort()  # cancelled: Ollama frees the slot, b starts now, alone
    watch.done(a)
    clock.now += 9
    watch.check()
    assert not first.expired and not second.aborted
    clock.now += 1
    watch.check()
    assert second.expired and b.behind == 0


def test_an_embed_job_on_the_legacy_endpoint_is_bounded_per_request(
    sim: Any, make_service: Any
) -> None:
    """An older Ollama embeds one input per request (``/api/embeddings``): each request
    answers within REQUEST_TIMEOUT, the job as a whole takes longer, and completes."""
    sim.disable_endpoint("/api/embed")
    svc: Service = make_service(sim, REQUEST_TIMEOUT=0.5)
    sim.set_latency(0.2)  # real seconds before every answer
    texts = [f"text {i}" for i in range(4)]
    t0 = time.monotonic()
    job = svc.submit(model="nomic-embed-text:latest", input=texts)
    body = svc.wait_done([job])[job]
    assert body["status"] == "complete", body
    assert len(body["result"]) == 4 and body["attempts"] == 1
    assert time.monotonic() - t0 > 0.5
