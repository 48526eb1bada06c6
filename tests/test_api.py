"""The internal API under concurrent clients, over real HTTP: the queue limit holds
exactly, and every acknowledged submit is stored once."""

from __future__ import annotations

import threading
from typing import Any

import requests

from tests.conftest import Service

CLIENTS = 16


def submit_all(svc: Service, per_client: int) -> list[requests.Response]:
    """``CLIENTS`` clients, each on its own connection, submit ``per_client`` jobs at once."""
    start = threading.Barrier(CLIENTS)
    answers: list[requests.Response] = []

    def client(c: int) -> None:
        with requests.Session() as session:
            start.wait()
            for i in range(per_client):
                body = {"model": "qwen2.5:0.5b", "prompt": f"client {c} job {i}"}
                answers.append(session.post(f"{svc.url}/api/submit", json=body, timeout=30))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return answers


def stored_ids(svc: Service) -> set[str]:
    r = svc.session.get(f"{svc.url}/api/jobs?limit=1000", timeout=10)
    return {j["job_id"] for j in r.json()["jobs"]}


def test_api_concurrent_submits_never_pass_queue_max_size(sim: Any, make_service: Any) -> None:
    # no NVML and no VRAM budget: nothing loads, so every accepted job stays waiting
    svc: Service = make_service(sim, nvml=False, VRAM_BUDGET_MB=0, QUEUE_MAX_SIZE=24)
    answers = submit_all(svc, per_client=4)
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 24 + [429] * (CLIENTS * 4 - 24)
    accepted = {r.json()["job_id"] for r in answers if r.status_code == 200}
    assert stored_ids(svc) == accepted  # a refused submit stored nothing


def test_api_concurrent_submits_are_each_acknowledged_once_and_stored(
    sim: Any, make_service: Any
) -> None:
    svc: Service = make_service(sim, nvml=False, VRAM_BUDGET_MB=0)
    answers = submit_all(svc, per_client=10)
    assert {r.status_code for r in answers} == {200}
    accepted = [r.json()["job_id"] for r in answers]
    assert len(set(accepted)) == len(accepted) == CLIENTS * 10
    assert stored_ids(svc) == set(accepted)
    waiting = svc.session.get(f"{svc.url}/api/stats", timeout=10).json()["queue"]["waiting"]
    assert waiting == len(accepted)  # every one is in the scheduler's queue too
