"""Bounded load on loopback: 200 concurrent clients submit and poll for a while (30 s by
default, ``MM_LOAD_SECONDS`` to change it locally) against the simulator. Asserts
correctness only (no errors, no lost jobs); throughput is printed, never asserted.

The service and the simulator are subprocesses, so the 200 client threads here do not
share a GIL with the server they measure.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.procs import (
    TERMINAL,
    ServiceProcess,
    integrity_check,
    read_jobs,
    services_fixture,
    sim_fixture,
)

CLIENTS = 200
SECONDS = float(os.environ.get("MM_LOAD_SECONDS", "30"))
MAX_JOBS_PER_CLIENT = 500  # the count bound; the time bound usually ends a client first
MODELS = ("qwen2.5:0.5b", "llama3.2:1b")


sim = sim_fixture("--num-parallel", "4")
services = services_fixture()


@pytest.fixture
def service(services: Callable[..., ServiceProcess]) -> ServiceProcess:
    # QUEUE_MAX_SIZE far above what a run can submit: a 429 here would be an error
    return services(QUEUE_MAX_SIZE=1_000_000).start()


class Client(threading.Thread):
    """Alternates one submit and one poll of its oldest unfinished job until ``end``.

    Records every answer that is not a 2xx (``errors``, by method and status) and every
    request that got no answer (``broken``); ``latencies`` are per request, in seconds.
    """

    def __init__(self, url: str, n: int, end: float, start: threading.Event) -> None:
        super().__init__(name=f"client-{n}", daemon=True)
        self.url = url
        self.n = n
        self.end = end
        self.go = start
        self.accepted: list[str] = []
        self.open: list[str] = []
        self.finished: dict[str, str] = {}
        self.errors: Counter[str] = Counter()
        self.broken: list[str] = []
        self.latencies: list[float] = []
        self.submits = self.polls = 0

    def _request(self, session: requests.Session, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer of a 2xx, else None (and the failure is recorded)."""
        t0 = time.monotonic()
        try:
            r = session.request(method, f"{self.url}{path}", json=body, timeout=60)
        except requests.RequestException as exc:
            self.broken.append(f"{method} {path}: {exc!r}")
            return None
        self.latencies.append(time.monotonic() - t0)
        if not 200 <= r.status_code < 300:
            self.errors[f"{method} {path.split('/')[2]} {r.status_code}"] += 1
            return None
        return r.json()

    def run(self) -> None:
        self.go.wait()
        session = requests.Session()
        try:
            turn = 0
            while time.monotonic() < self.end:
                full = len(self.accepted) >= MAX_JOBS_PER_CLIENT
                if full and not self.open:
                    break
                if not full and (turn % 2 == 0 or not self.open):
                    body = {
                        "model": MODELS[(self.n + turn) % len(MODELS)],
                        "prompt": f"load {self.n} {turn}",
                    }
                    answer = self._request(session, "POST", "/api/submit", body)
                    self.submits += 1
                    if isinstance(answer, dict):
                        self.accepted.append(answer["job_id"])
                        self.open.append(answer["job_id"])
                else:
                    job_id = self.open[0]
                    answer = self._request(session, "GET", f"/api/job/{job_id}")
                    self.polls += 1
                    if isinstance(answer, dict) and answer["status"] in TERMINAL:
                        self.finished[job_id] = answer["status"]
                        self.open.pop(0)
                    elif isinstance(answer, dict):
                        self.open.append(self.open.pop(0))  # poll another one next time
                turn += 1
        finally:
            session.close()


def test_load_200_clients_no_errors_no_lost_jobs(service: ServiceProcess) -> None:
    go = threading.Event()
    t0 = time.monotonic()
    end = t0 + 1.0 + SECONDS  # one second for the threads to start
    clients = [Client(service.url, n, end, go) for n in range(CLIENTS)]
    for client in clients:
        client.start()
    go.set()
    started = time.monotonic()
    for client in clients:
        client.join(SECONDS + 90)
    elapsed = time.monotonic() - started
    assert not [c.name for c in clients if c.is_alive()], "clients still running"

    broken = [b for c in clients for b in c.broken]
    errors = sum((c.errors for c in clients), Counter())
    accepted = [j for c in clients for j in c.accepted]
    submits = sum(c.submits for c in clients)
    polls = sum(c.polls for c in clients)
    latencies = sorted(x for c in clients for x in c.latencies)
    finished_seen = sum(len(c.finished) for c in clients)
    p50 = latencies[len(latencies) // 2] if latencies else 0.0
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else 0.0
    print(
        f"\n{CLIENTS} clients, {elapsed:.1f}s: {submits} submits, {polls} polls"
        f" ({(submits + polls) / elapsed:.0f} req/s, {len(accepted) / elapsed:.0f} jobs/s),"
        f" {finished_seen} seen finished by their client; latency p50 {p50 * 1000:.0f} ms,"
        f" p99 {p99 * 1000:.0f} ms"
    )
    assert not broken, f"{len(broken)} request(s) without an answer, e.g. {broken[:3]}"
    assert not errors, f"non-2xx answers: {dict(errors)}"
    assert len(set(accepted)) == len(accepted) == submits

    counts = service.wait_idle(60)
    print(f"store after the run: {counts}")
    service.signal(signal.SIGTERM)
    assert service.wait(30) == 0, service.tail()
    assert integrity_check(service.db_path) == "ok"
    rows = read_jobs(service.db_path)
    lost = set(accepted) - rows.keys()
    assert not lost, f"{len(lost)} accepted job(s) missing, e.g. {sorted(lost)[:3]}"
    assert len(rows) == len(accepted), "the store holds jobs nobody submitted"
    not_done = Counter(r["status"] for r in rows.values() if r["status"] != "complete")
    assert not not_done, f"jobs not complete: {dict(not_done)}"
    assert all(json.loads(r["result"]) for r in rows.values())
    for c in clients:
        for job_id, status in c.finished.items():
            assert status == rows[job_id]["status"] == "complete", job_id
