"""Waiting without polling: ``GET /api/job/<id>?wait=S``, the waiter cap, the store's
change notification that wakes waiters, and a measurement of how many waiters the
service holds while submits and polls keep being answered."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.test import EnvironBuilder, run_wsgi_app

from config import Config
from modelmanager.errors import ConfigError
from modelmanager.http_api import FastPaths, create_app
from modelmanager.models import Job, JobKind, Priority
from modelmanager.runners import runner_of
from modelmanager.store import Store
from modelmanager.waiting import JobWaiters, WaitOutcome, parse_wait
from tests.conftest import Service, wait_until

MODEL = "qwen2.5:0.5b"


def _get(svc: Service, job_id: str, wait: Any = None, timeout: float = 70) -> requests.Response:
    params = None if wait is None else {"wait": wait}
    return requests.get(f"{svc.url}/api/job/{job_id}", params=params, timeout=timeout)


def _running_job(svc: Service, sim: Any) -> str:
    """A job held at ``running`` (the simulator's gate is closed)."""
    sim.set_gate(True)
    job_id = svc.submit(model=MODEL, prompt="hold")
    wait_until(lambda: svc.job(job_id)["status"] == "running", what="job running")
    return job_id


# ------------------------------------------------------------------- over HTTP


def test_wait_answers_as_soon_as_the_job_finishes(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    job_id = _running_job(svc, sim)
    answers: list[tuple[requests.Response, float]] = []
    waiter = threading.Thread(target=lambda: answers.append((_get(svc, job_id, 30), time.time())))
    waiter.start()
    wait_until(lambda: svc.manager.api.waiters.waiting == 1, what="request waiting")
    waiter.join(0.3)
    assert waiter.is_alive(), "answered before the job finished"
    opened = time.time()
    sim.set_gate(False)
    waiter.join(10)
    r, at = answers[0]
    assert r.status_code == 200 and r.headers["X-Wait"] == "finished"
    assert r.json()["status"] == "complete" and r.json()["result"]
    assert at - opened < 2.0, "woken late"
    assert svc.manager.api.waiters.waiting == 0


def test_wait_times_out_with_the_current_state(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    job_id = _running_job(svc, sim)
    started = time.monotonic()
    r = _get(svc, job_id, 0.4)
    took = time.monotonic() - started
    assert r.status_code == 200 and r.headers["X-Wait"] == "timeout"
    assert r.json()["status"] == "running"
    assert 0.4 <= took < 3.0


def test_wait_on_a_finished_job_answers_at_once(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    job_id = svc.submit(model=MODEL, prompt="quick")
    svc.wait_done([job_id])
    started = time.monotonic()
    r = _get(svc, job_id, 60)
    assert r.status_code == 200 and r.headers["X-Wait"] == "finished"
    assert time.monotonic() - started < 1.0
    assert r.json() == svc.job(job_id)  # the same view as a plain poll


def test_wait_is_woken_by_a_cancel(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    job_id = _running_job(svc, sim)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(_get, svc, job_id, 30)
        wait_until(lambda: svc.manager.api.waiters.waiting == 1, what="request waiting")
        svc.session.post(f"{svc.url}/api/job/{job_id}/cancel", timeout=10).raise_for_status()
        r = answer.result(10)
    assert r.headers["X-Wait"] == "finished" and r.json()["status"] == "cancelled"


def test_wait_on_a_pending_job_follows_it_to_the_end(sim: Any, make_service: Any) -> None:
    """Woken by each change (pending, queued, running), it answers only at the end."""
    sim.set_gate(True)
    svc: Service = make_service(sim)
    job_id = svc.submit(model="llama3.2:1b", prompt="later")
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(_get, svc, job_id, 30)
        wait_until(lambda: svc.job(job_id)["status"] == "running", what="job running")
        assert not answer.done()
        sim.set_gate(False)
        r = answer.result(10)
    assert r.headers["X-Wait"] == "finished" and r.json()["status"] == "complete"


def test_wait_unknown_job_is_404(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    r = _get(svc, "no-such-job", 5)
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    "query",
    [
        "wait=0",
        "wait=-1",
        "wait=60.5",
        "wait=61",
        "wait=abc",
        "wait=",
        "wait",
        "wait=nan",
        "wait=NaN",
        "wait=Infinity",
        "wait=1e400",
        "wait=%205",
        "wait=1_0",
        "wait=true",
        "wait=%225%22",
        "wait=1&wait=2",
    ],
)
def test_bad_wait_is_a_400_naming_it(sim: Any, make_service: Any, query: str) -> None:
    svc: Service = make_service(sim)
    job_id = svc.submit(model=MODEL, prompt="x")
    r = requests.get(f"{svc.url}/api/job/{job_id}?{query}", timeout=10)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "INVALID_REQUEST" and error["details"] == {"field": "wait"}
    assert "'wait'" in error["message"]


@pytest.mark.parametrize(
    ("query", "name"), [("wiat=5", "wiat"), ("Wait=5", "Wait"), ("wait=5&x=1", "x"), ("w=5", "w")]
)
def test_unknown_query_parameters_are_a_400_naming_them(
    sim: Any, make_service: Any, query: str, name: str
) -> None:
    """A misspelt ``wait`` is refused, not ignored (it would answer at once, silently)."""
    svc: Service = make_service(sim)
    job_id = svc.submit(model=MODEL, prompt="x")
    r = requests.get(f"{svc.url}/api/job/{job_id}?{query}", timeout=10)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "INVALID_REQUEST" and name in error["message"]
    assert "X-Wait" not in r.headers


@pytest.mark.parametrize(("text", "seconds"), [("60", 60.0), ("0.001", 0.001), ("1e-3", 0.001)])
def test_wait_accepts_numbers_up_to_60(text: str, seconds: float) -> None:
    assert parse_wait([text]) == seconds


def test_wait_with_the_api_key(sim: Any, make_service: Any) -> None:
    key = "k" * 16
    svc: Service = make_service(sim, API_KEY=key)
    auth = {"Authorization": f"Bearer {key}"}
    r = requests.post(
        f"{svc.url}/api/submit", json={"model": MODEL, "prompt": "x"}, headers=auth, timeout=10
    )
    job_id = r.json()["job_id"]
    assert _get(svc, job_id, 1).status_code == 401
    r = requests.get(f"{svc.url}/api/job/{job_id}?wait=10", headers=auth, timeout=30)
    assert r.status_code == 200 and r.json()["status"] in ("complete", "running", "pending")


def test_stopping_answers_every_waiter_at_once(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    job_id = _running_job(svc, sim)
    with ThreadPoolExecutor(2) as pool:
        answers = [pool.submit(_get, svc, job_id, 60) for _ in range(2)]
        wait_until(lambda: svc.manager.api.waiters.waiting == 2, what="requests waiting")
        svc.manager.api.accepting = False  # what Manager.stop() does first
        outcomes = [a.result(5).headers["X-Wait"] for a in answers]
    assert outcomes == ["stopping", "stopping"]
    assert _get(svc, job_id, 60, timeout=5).headers["X-Wait"] == "stopping"


def test_fast_path_leaves_requests_with_a_query_to_flask(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    job_id = svc.submit(model=MODEL, prompt="x")
    app = create_app(svc.manager.api, svc.manager.config)
    fast = app.wsgi_app
    assert isinstance(fast, FastPaths)
    seen: list[str] = []
    flask_wsgi = fast.flask_wsgi

    def recording(environ: dict[str, Any], start_response: Any) -> Any:
        seen.append(environ["QUERY_STRING"])
        return flask_wsgi(environ, start_response)

    fast.flask_wsgi = recording
    for query in ("", "wait=5", "x=1"):
        env = EnvironBuilder(method="GET", path=f"/api/job/{job_id}", query_string=query)
        chunks, status, _ = run_wsgi_app(fast, env.get_environ())
        b"".join(chunks)
        assert status.startswith("400" if query == "x=1" else "200")  # x: unknown
    assert seen == ["wait=5", "x=1"]  # the plain poll stayed on the fast path


# ------------------------------------------------------------------- the cap


def test_waiter_cap_must_stay_below_the_http_threads() -> None:
    assert Config.load(environ={}).MAX_WAITERS == 8
    with pytest.raises(ConfigError, match=r"MAX_WAITERS must be less than HTTP_THREADS \(4\)"):
        Config.load(environ={"MM_HTTP_THREADS": "4"})
    config = Config.load(environ={"MM_HTTP_THREADS": "1", "MM_MAX_WAITERS": "0"})
    assert config.MAX_WAITERS == 0


def measure_waiters(svc: Service, sim: Any, clients: int, seconds: float = 20.0) -> dict[str, Any]:
    """``clients`` requests wait at once on unfinished jobs (one job each) while another
    client submits and polls; then the jobs finish. Returns what was seen."""
    api = svc.manager.api
    sim.set_gate(True)
    jobs = [svc.submit(model=MODEL, prompt=f"job {i}") for i in range(clients)]
    outcomes: list[tuple[str, float, float]] = []  # (X-Wait, answered at, job completed at)

    def wait_for(job_id: str) -> None:
        with requests.Session() as session:
            r = session.get(f"{svc.url}/api/job/{job_id}?wait={seconds}", timeout=seconds + 30)
            at = time.time()
        body = r.json()
        outcomes.append((r.headers["X-Wait"], at, _epoch(body["completed_at"])))

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(wait_for, job_id) for job_id in jobs]
        wait_until(
            lambda: (
                api.waiters.waiting == min(clients, api.waiters.limit)
                and len(outcomes) == clients - api.waiters.waiting
            ),
            what="waiters settled",
        )
        busy_at_once = sum(1 for o in outcomes if o[0] == "busy")
        held = api.waiters.waiting
        # meanwhile: polls and submits from another client
        latencies: dict[str, list[float]] = {"poll": [], "submit": []}
        with requests.Session() as other:
            for i in range(100):
                kind = "submit" if i % 5 == 0 else "poll"
                started = time.monotonic()
                if kind == "submit":
                    r = other.post(
                        f"{svc.url}/api/submit", json={"model": MODEL, "prompt": "x"}, timeout=10
                    )
                else:
                    r = other.get(f"{svc.url}/api/job/{jobs[i % clients]}", timeout=10)
                assert r.status_code == 200, r.text
                latencies[kind].append(time.monotonic() - started)
        still_held = api.waiters.waiting
        sim.set_gate(False)
        for future in futures:
            future.result(seconds + 30)
    woken = [at - done for outcome, at, done in outcomes if outcome == "finished"]
    return {
        "clients": clients,
        "limit": api.waiters.limit,
        "held": held,
        "still_held": still_held,
        "busy_at_once": busy_at_once,
        "outcomes": Counter(o[0] for o in outcomes),
        "poll_ms": _ms(latencies["poll"]),
        "submit_ms": _ms(latencies["submit"]),
        "wake_ms": _ms(woken),
    }


def _epoch(iso: str | None) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else 0.0


def _ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered) * 1000, 1),
        "max": round(ordered[-1] * 1000, 1),
    }


@pytest.mark.parametrize(
    ("threads", "waiters", "clients"),
    [(16, 8, 24), (160, 150, 180)],
    ids=["defaults-16-threads-8-waiters", "160-threads-150-waiters"],
)
def test_waiters_beyond_the_cap_answer_at_once_and_others_keep_being_served(
    sim: Any, make_service: Any, threads: int, waiters: int, clients: int
) -> None:
    svc: Service = make_service(sim, HTTP_THREADS=threads, MAX_WAITERS=waiters, QUEUE_MAX_SIZE=1000)
    seen = measure_waiters(svc, sim, clients)
    print(f"\nwaiters measured: {seen}")
    assert seen["held"] == seen["still_held"] == waiters
    assert seen["busy_at_once"] == clients - waiters
    # the held ones answered as their jobs finished, none by timeout
    assert seen["outcomes"] == Counter({"finished": waiters, "busy": clients - waiters})
    # submits and polls kept being answered while every waiter place was taken
    assert seen["poll_ms"]["max"] < 1000 and seen["submit_ms"]["max"] < 1000, seen


# ------------------------------------------------------------ without HTTP


def test_waiters_wake_only_for_their_job() -> None:
    waiters = JobWaiters(limit=4)
    views = {"a": b'{"status":"running"}', "b": b'{"status":"running"}'}
    results: dict[str, tuple[bytes, WaitOutcome]] = {}

    def wait(job_id: str) -> None:
        results[job_id] = waiters.wait(job_id, 10, views.__getitem__)

    threads = [threading.Thread(target=wait, args=(j,)) for j in "ab"]
    for t in threads:
        t.start()
    wait_until(lambda: waiters.waiting == 2, what="both waiting")
    views["a"] = b'{"status":"complete"}'
    waiters.notify({"a"})
    threads[0].join(5)
    assert results["a"] == (b'{"status":"complete"}', WaitOutcome.FINISHED)
    assert threads[1].is_alive() and waiters.waiting == 1
    views["b"] = b'{"status":"failed"}'
    waiters.notify(None)  # any job may have changed
    threads[1].join(5)
    assert results["b"][1] is WaitOutcome.FINISHED and waiters.waiting == 0


def test_waiters_cap_refuses_and_counts() -> None:
    waiters = JobWaiters(limit=0)
    view = b'{"status":"pending"}'
    assert waiters.wait("a", 10, lambda _: view) == (view, WaitOutcome.BUSY)
    assert waiters.refused == 1
    waiters.close()
    assert waiters.wait("a", 10, lambda _: view) == (view, WaitOutcome.STOPPING)


def test_waiters_time_out_on_the_clock_given() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # every reading moves a second on
        return now[0]

    waiters = JobWaiters(limit=1)
    view = b'{"status":"queued"}'
    assert waiters.wait("a", 0.5, lambda _: view, clock=clock) == (view, WaitOutcome.TIMEOUT)


def _job(i: int) -> Job:
    return Job(id=f"job-{i}", model=MODEL, kind=JobKind.GENERATE, priority=Priority.LOW, payload={})


def test_store_tells_listeners_which_jobs_changed_after_commit(tmp_path: Path) -> None:
    store = Store(tmp_path / "jobs.db")
    seen: list[tuple[frozenset[str] | None, str | None]] = []

    def listener(job_ids: frozenset[str] | None) -> None:
        # called after the commit: a fresh read already shows the change
        job = store.get("job-0", payload=False)
        seen.append((job_ids, job.status.value if job else None))

    store.insert_jobs([_job(0), _job(1)])
    store.on_change(listener)
    store.insert_jobs([_job(2)])  # new jobs: nobody can be waiting on them
    assert seen == []
    store.claim(["job-0", "job-1"], now=1.0)
    assert seen == [(frozenset({"job-0", "job-1"}), "running")]
    store.complete("job-0", 1, {"text": "x"}, {}, now=2.0)
    assert seen[-1] == (frozenset({"job-0"}), "complete")
    assert store.mark_queued(runner_of(MODEL, None)) == 1  # job-2
    assert seen[-1][0] == frozenset({"job-2"})
    store.recover(3, now=3.0)
    assert seen[-1][0] is None  # it may touch any job
    store.close()
