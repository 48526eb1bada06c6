"""The WSGI fast path answers exactly as the Flask routes behind it do."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import requests
from werkzeug.test import EnvironBuilder, run_wsgi_app

from modelmanager.http_api import FastPaths, create_app
from tests.conftest import Service, wait_until


def _call(wsgi: Any, method: str, path: str, body: bytes | None = None) -> tuple[int, dict, Any]:
    env = EnvironBuilder(
        method=method, path=path, data=body, content_type="application/json"
    ).get_environ()
    chunks, status, headers = run_wsgi_app(wsgi, env)
    payload = json.loads(b"".join(chunks))
    return int(status.split()[0]), dict(headers), payload


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/job/{job}", None),
        ("GET", "/api/job/no-such-job", None),
        ("POST", "/api/submit", b'{"model": "qwen2.5:0.5b", "prompt": "same answer"}'),
        ("POST", "/api/submit", b'{"model": "qwen2.5:0.5b", "promt": "typo"}'),
        ("POST", "/api/submit", b'{"model": "bad name!", "prompt": "x"}'),
        ("POST", "/api/submit", b"{not json"),
        ("POST", "/api/submit", b'{"model": "m", "prompt": NaN}'),
        ("POST", "/api/submit", b"[1, 2]"),
    ],
)
def test_fast_path_matches_flask(
    sim: Any, make_service: Any, method: str, path: str, body: bytes | None
) -> None:
    svc: Service = make_service(sim)
    sim.set_gate(True)  # hold the job at "running" so both answers see the same state
    job = svc.submit(model="qwen2.5:0.5b", prompt="existing")
    wait_until(lambda: svc.job(job)["status"] == "running")
    app = create_app(svc.manager.api, svc.manager.config)
    fast = app.wsgi_app
    assert isinstance(fast, FastPaths)
    path = path.format(job=job)
    f_status, f_headers, f_body = _call(fast, method, path, body)
    s_status, s_headers, s_body = _call(fast.flask_wsgi, method, path, body)
    assert f_status == s_status
    assert f_headers["Content-Type"] == s_headers["Content-Type"]
    if method == "POST" and f_status == 200:  # two submits: two new ids, same shape
        assert f_body.keys() == s_body.keys() and f_body["status"] == s_body["status"]
    else:
        assert f_body == s_body
    sim.set_gate(False)


def test_poll_never_answers_an_older_state_than_one_already_answered(
    sim: Any, make_service: Any
) -> None:
    """Clients poll the same jobs over several connections while they run: once any poll
    has answered a job complete, every poll sent after that answers complete too."""
    svc: Service = make_service(sim)
    ids = [svc.submit(model="qwen2.5:0.5b", prompt=f"poll race {i}") for i in range(12)]
    polls: list[tuple[str, float, float, str]] = []  # job, sent, answered, status
    done = threading.Event()

    def poller() -> None:
        with requests.Session() as session:
            while not done.is_set():
                for job_id in ids:
                    sent = time.monotonic()
                    r = session.get(f"{svc.url}/api/job/{job_id}", timeout=10)
                    polls.append((job_id, sent, time.monotonic(), r.json()["status"]))

    pollers = [threading.Thread(target=poller) for _ in range(4)]
    for p in pollers:
        p.start()
    try:
        svc.wait_done(ids)
        seen = len(polls)
        wait_until(lambda: len(polls) > seen + 4 * len(ids), what="polls after the end")
    finally:
        done.set()
        for p in pollers:
            p.join(timeout=30)
    for job_id in ids:
        mine = [p for p in polls if p[0] == job_id]
        first_complete = min(answered for _, _, answered, status in mine if status == "complete")
        late = {status for _, sent, _, status in mine if sent > first_complete}
        assert late == {"complete"}, f"{job_id}: {late}"
