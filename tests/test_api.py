"""The internal API over real HTTP: under concurrent clients the queue limit holds
exactly and every acknowledged submit is stored once; ``/api/jobs`` pages through any
number of jobs, each exactly once."""

from __future__ import annotations

import threading
from typing import Any

import requests

from modelmanager.contract import MAX_LIST
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


def _submit_batch(svc: Service, n: int, tag: str) -> list[str]:
    jobs = [{"model": "qwen2.5:0.5b", "prompt": f"{tag} {i}"} for i in range(n)]
    r = svc.session.post(f"{svc.url}/api/submit_batch", json={"jobs": jobs}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    return list(r.json()["job_ids"])


def _page(svc: Service, query: str) -> dict[str, Any]:
    r = svc.session.get(f"{svc.url}/api/jobs?{query}", timeout=30)
    assert r.status_code == 200, r.text[:300]
    body: dict[str, Any] = r.json()
    assert sorted(body) == ["count", "jobs", "next_cursor"]
    assert body["count"] == len(body["jobs"])
    return body


def _all_pages(svc: Service, query: str, between: Any = None) -> tuple[list[str], int]:
    """Job ids of every page of ``query``, following ``next_cursor``, and the page count;
    ``between()`` runs after the first page."""
    ids: list[str] = []
    cursor, pages = None, 0
    while True:
        body = _page(svc, query + (f"&cursor={cursor}" if cursor else ""))
        ids += [job["job_id"] for job in body["jobs"]]
        pages += 1
        if pages == 1 and between is not None:
            between()
        cursor = body["next_cursor"]
        if cursor is None:
            return ids, pages


def test_api_jobs_pages_through_2500_jobs_each_exactly_once(sim: Any, make_service: Any) -> None:
    # nothing loads (no NVML, no budget): every job stays pending while we page
    svc: Service = make_service(sim, nvml=False, VRAM_BUDGET_MB=0, QUEUE_MAX_SIZE=10_000)
    submitted = _submit_batch(svc, 1000, "a") + _submit_batch(svc, 1500, "b")
    newest_first = submitted[::-1]

    ids, pages = _all_pages(svc, f"limit={MAX_LIST}")
    assert (ids, pages) == (newest_first, 3)
    ids, pages = _all_pages(svc, "limit=500&status=pending")  # 2,500 / 500: no empty 6th page
    assert (ids, pages) == (newest_first, 5)
    ids, pages = _all_pages(svc, "model=QWEN2.5:0.5b")  # the default limit, 100
    assert (ids, pages) == (newest_first, 25)
    assert _all_pages(svc, "status=complete") == ([], 1)

    # jobs submitted while paging are newer than the cursor: they do not shift the pages
    later: list[str] = []
    ids, _ = _all_pages(svc, "limit=700", lambda: later.extend(_submit_batch(svc, 300, "c")))
    assert ids == newest_first
    assert _page(svc, "limit=300")["jobs"][0]["job_id"] == later[-1]
