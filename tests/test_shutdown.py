"""SIGTERM is a warm stop: refuse new work (503), let running jobs finish up to
SHUTDOWN_TIMEOUT, keep waiting jobs stored for the next start, exit 0.

The service runs as a subprocess against the simulator; the simulator's gate holds
generations so jobs are deterministically "running" when the signal arrives.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
import requests

from tests.conftest import wait_until
from tests.procs import (
    ServiceProcess,
    SimProcess,
    integrity_check,
    read_jobs,
    services_fixture,
    sim_fixture,
)

MODEL = "qwen2.5:0.5b"


sim = sim_fixture("--num-parallel", "2")
services = services_fixture()


def hold_running(
    svc: ServiceProcess, sim: SimProcess, n_jobs: int, n_running: int
) -> tuple[list[str], set[str]]:
    """Submit ``n_jobs`` with the gate closed; once ``n_running`` of them are running (held
    in the simulator) and the rest wait, return all the ids and the running ones."""
    sim.gate(True)
    ids = [svc.submit(model=MODEL, prompt=f"shutdown {i}") for i in range(n_jobs)]

    def held() -> bool:
        statuses = [svc.job(i)["status"] for i in ids]
        return statuses.count("running") == n_running and sim.stats()["gated"] == n_running

    wait_until(held, 20, what=f"{n_running} jobs held running")
    return ids, {i for i in ids if svc.job(i)["status"] == "running"}


def assert_rerun_after_restart(
    svc: ServiceProcess, sim: SimProcess, ids: list[str], running: set[str]
) -> None:
    """Open the gate and restart: every job completes, the ones that were ``running`` when
    the service stopped on a second attempt, the rest on their first."""
    sim.gate(False)
    svc.start()
    svc.wait_idle(20)
    for i in ids:
        body = svc.job(i)
        assert body["status"] == "complete", body
        assert body["attempts"] == (2 if i in running else 1), body


def refused_submit(svc: ServiceProcess, accepted: list[str]) -> list[requests.Response]:
    """One submit: ``[response]`` if refused, else ``[]`` with its id added to ``accepted``
    (the signal may land a moment after it was sent). A list because a 503 ``Response`` is
    falsy."""
    r = svc.session.post(
        f"{svc.url}/api/submit", json={"model": MODEL, "prompt": "late"}, timeout=10
    )
    if r.status_code == 200:
        accepted.append(r.json()["job_id"])
        return []
    return [r]


def test_shutdown_sigterm_drains_running_jobs_and_keeps_waiting_ones(
    sim: SimProcess, services: Callable[..., ServiceProcess]
) -> None:
    svc = services(MAX_CONCURRENT_PER_MODEL=2, OLLAMA_NUM_PARALLEL=2, SHUTDOWN_TIMEOUT=30).start()
    ids, running = hold_running(svc, sim, n_jobs=5, n_running=2)

    svc.signal(signal.SIGTERM)
    late: list[str] = []
    [r] = wait_until(lambda: refused_submit(svc, late), 10, what="submits refused after SIGTERM")
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) > 0
    error = r.json()["error"]
    assert set(error) == {"code", "message", "details"} and "shutting down" in error["message"]
    batch = svc.session.post(
        f"{svc.url}/api/submit_batch", json={"jobs": [{"model": MODEL, "prompt": "x"}]}, timeout=10
    )
    assert batch.status_code == 503 and "Retry-After" in batch.headers, batch.text
    health = svc.health()
    assert health["accepting"] is False and health["status"] == "degraded", health
    # reads still work while draining
    assert {svc.job(i)["status"] for i in running} == {"running"}
    assert svc.alive(), "exited before its running jobs finished"

    sim.gate(False)  # the running jobs finish; then the process exits on its own
    assert svc.wait(20) == 0, svc.tail()
    assert integrity_check(svc.db_path) == "ok"
    rows = read_jobs(svc.db_path)
    for i in running:
        assert (rows[i]["status"], rows[i]["attempts"]) == ("complete", 1), rows[i]
    waiting = [i for i in ids if i not in running] + late
    for i in waiting:
        assert (rows[i]["status"], rows[i]["attempts"]) in {("pending", 0), ("queued", 0)}, rows[i]
    drained = {i: rows[i]["completed_at"] for i in running}

    svc.start()
    svc.wait_idle(20)
    for i in waiting:
        body = svc.job(i)
        assert (body["status"], body["attempts"]) == ("complete", 1), body
    svc.signal(signal.SIGTERM)
    assert svc.wait(20) == 0, svc.tail()
    rows = read_jobs(svc.db_path)
    assert {i: rows[i]["completed_at"] for i in running} == drained  # not run again


def test_shutdown_sigterm_past_timeout_leaves_held_jobs_to_rerun(
    sim: SimProcess, services: Callable[..., ServiceProcess]
) -> None:
    """Jobs still running at SHUTDOWN_TIMEOUT are left "running" in the store; the next
    start reruns them (a second attempt) and the jobs that waited run once."""
    # REQUEST_TIMEOUT short: the process lingers until its held requests time out (see
    # the next test), which must not make this one slow
    svc = services(
        MAX_CONCURRENT_PER_MODEL=2, OLLAMA_NUM_PARALLEL=2, SHUTDOWN_TIMEOUT=0.5, REQUEST_TIMEOUT=3
    ).start()
    ids, running = hold_running(svc, sim, n_jobs=3, n_running=2)

    svc.signal(signal.SIGTERM)
    assert svc.wait(20) == 0, svc.tail()  # the gate stays closed: they never finish
    assert "will rerun" in svc.output()
    rows = read_jobs(svc.db_path)
    assert {(rows[i]["status"], rows[i]["attempts"]) for i in running} == {("running", 1)}
    assert_rerun_after_restart(svc, sim, ids, running)


def test_shutdown_sigterm_exits_within_shutdown_timeout_with_jobs_held(
    sim: SimProcess, services: Callable[..., ServiceProcess]
) -> None:
    svc = services(SHUTDOWN_TIMEOUT=1, REQUEST_TIMEOUT=60).start()
    ids, _ = hold_running(svc, sim, n_jobs=1, n_running=1)
    svc.signal(signal.SIGTERM)
    assert svc.wait(1 + 7) == 0, svc.tail()  # SHUTDOWN_TIMEOUT plus a wide margin
    assert read_jobs(svc.db_path)[ids[0]]["status"] == "running"


def test_shutdown_sigkill_during_drain_loses_nothing(
    sim: SimProcess, services: Callable[..., ServiceProcess]
) -> None:
    """A stop that escalates to SIGKILL mid-drain: the next start reruns what ran."""
    svc = services(MAX_CONCURRENT_PER_MODEL=2, OLLAMA_NUM_PARALLEL=2, SHUTDOWN_TIMEOUT=30).start()
    ids, running = hold_running(svc, sim, n_jobs=4, n_running=2)
    svc.signal(signal.SIGTERM)
    wait_until(lambda: svc.health()["accepting"] is False, 10, what="draining")
    svc.sigkill()
    assert integrity_check(svc.db_path) == "ok"
    assert_rerun_after_restart(svc, sim, ids, running)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_shutdown_signal_when_idle_exits_at_once(
    sim: SimProcess, services: Callable[..., ServiceProcess], sig: signal.Signals
) -> None:
    svc = services().start()
    job_id = svc.submit(model=MODEL, prompt="one")
    svc.wait_idle(20)
    svc.signal(sig)
    assert svc.wait(10) == 0, svc.tail()
    assert read_jobs(svc.db_path)[job_id]["status"] == "complete"
