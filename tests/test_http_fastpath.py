"""The WSGI fast path answers exactly as the Flask routes behind it do."""

from __future__ import annotations

import json
from typing import Any

import pytest
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
