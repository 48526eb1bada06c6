"""The Ollama simulator's fault injection and ``/_sim/`` controls, and its clean shutdown."""

from __future__ import annotations

import errno
import json
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from modelmanager.simulator import ERR_QUEUE_FULL, ERR_RUNNER_STOPPED, FakeOllama
from tests.conftest import wait_until

TIMEOUT = 10.0


@pytest.fixture
def sim(make_sim: Callable[..., FakeOllama]) -> FakeOllama:
    """A bare simulator: no fake-NVML state file, the default GPU."""
    return make_sim()


def post(sim: FakeOllama, path: str, body: Any, **kw: Any) -> requests.Response:
    kw.setdefault("timeout", TIMEOUT)
    return requests.post(sim.url + path, json=body, **kw)


def generate(sim: FakeOllama, stream: bool = False, **kw: Any) -> requests.Response:
    body = {"model": "smollm:360m", "prompt": "hi", "stream": stream}
    return post(sim, "/api/generate", body, **kw)


def connect_refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED


# ----- faults --------------------------------------------------------------------------


def test_http_fault_hits_the_next_n_matching_requests(sim: FakeOllama) -> None:
    sim.inject_fault(count=2, status=503, error=ERR_QUEUE_FULL, endpoint="/api/generate")
    chat = post(sim, "/api/chat", {"model": "smollm:360m", "messages": [], "stream": False})
    assert chat.status_code == 200  # another endpoint: not affected
    for _ in range(2):
        resp = generate(sim)
        assert (resp.status_code, resp.json()) == (503, {"error": ERR_QUEUE_FULL})
    assert generate(sim).status_code == 200
    log = [e for e in sim.stats()["request_log"] if e["endpoint"] == "/api/generate"]
    assert [(e["status"], e.get("fault")) for e in log] == [
        (503, "http"),
        (503, "http"),
        (200, None),
    ]


def test_fault_without_endpoint_matches_any_inference_endpoint(sim: FakeOllama) -> None:
    sim.inject_fault(count=3)
    assert requests.get(sim.url + "/api/ps", timeout=TIMEOUT).status_code == 200
    embed = post(sim, "/api/embed", {"model": "all-minilm", "input": "x"})
    chat = post(sim, "/api/chat", {"model": "smollm:360m", "messages": []})
    gen = generate(sim)
    for resp in (embed, chat, gen):
        assert (resp.status_code, resp.json()) == (500, {"error": ERR_RUNNER_STOPPED})
    assert generate(sim).status_code == 200


def test_stream_fault_sends_a_chunk_then_an_error_line(sim: FakeOllama) -> None:
    sim.inject_fault(
        count=2, mode="stream", error="an error was encountered while running the model: boom"
    )
    resp = generate(sim, stream=True)
    assert resp.status_code == 200
    lines = [json.loads(line) for line in resp.text.splitlines()]
    assert len(lines) == 2
    assert lines[0]["done"] is False and lines[0]["model"] == "smollm:360m"
    assert lines[1] == {"error": "an error was encountered while running the model: boom"}
    whole = generate(sim, stream=False)  # the same fault without streaming is a 500
    assert whole.status_code == 500
    assert whole.json() == {"error": "an error was encountered while running the model: boom"}


def test_hang_fault_answers_nothing_then_closes(sim: FakeOllama) -> None:
    sim.inject_fault(count=2, mode="hang", seconds=0.3)
    with pytest.raises(requests.ReadTimeout):
        generate(sim, timeout=0.1)
    started = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        generate(sim)
    assert time.monotonic() - started >= 0.28
    assert generate(sim).status_code == 200


def test_close_fault_drops_the_connection(sim: FakeOllama) -> None:
    sim.inject_fault(mode="close", endpoint="/api/embed")
    started = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        post(sim, "/api/embed", {"model": "all-minilm", "input": "x"})
    assert time.monotonic() - started < 2.0
    assert sim.stats()["request_log"][-1]["fault"] == "close"
    assert post(sim, "/api/embed", {"model": "all-minilm", "input": "x"}).status_code == 200


def test_refuse_connections_then_listen_again_on_the_same_port(sim: FakeOllama) -> None:
    port = sim.port
    with requests.Session() as session:  # a kept-alive connection must not survive either
        assert session.get(sim.url + "/api/version", timeout=TIMEOUT).status_code == 200
        sim.refuse_connections(0.5)
        assert connect_refused(port)
        with pytest.raises(requests.ConnectionError):
            session.get(sim.url + "/api/version", timeout=TIMEOUT)
        wait_until(lambda: not connect_refused(port), what="listening again")
        assert sim.port == port
        assert session.get(sim.url + "/api/version", timeout=TIMEOUT).status_code == 200


def test_latency_delays_every_api_answer(sim: FakeOllama) -> None:
    sim.set_latency(0.2)
    started = time.monotonic()
    assert requests.get(sim.url + "/api/tags", timeout=TIMEOUT).status_code == 200
    assert time.monotonic() - started >= 0.19
    started = time.monotonic()
    requests.get(sim.url + "/_sim/stats", timeout=TIMEOUT)  # controls are not delayed
    assert time.monotonic() - started < 0.15
    sim.set_latency(0)
    started = time.monotonic()
    requests.get(sim.url + "/api/tags", timeout=TIMEOUT)
    assert time.monotonic() - started < 0.15


def test_disabled_endpoint_answers_plain_404(sim: FakeOllama) -> None:
    sim.disable_endpoint("/api/embed")
    resp = post(sim, "/api/embed", {"model": "all-minilm", "input": "x"})
    assert (resp.status_code, resp.text) == (404, "404 page not found")
    legacy = post(sim, "/api/embeddings", {"model": "all-minilm", "prompt": "x"})
    assert legacy.status_code == 200
    sim.enable_endpoint("/api/embed")
    assert post(sim, "/api/embed", {"model": "all-minilm", "input": "x"}).status_code == 200


def test_gate_holds_requests_until_opened(sim: FakeOllama) -> None:
    sim.set_gate(True)
    with ThreadPoolExecutor(max_workers=2) as pool:
        held = pool.submit(generate, sim)
        embed = pool.submit(post, sim, "/api/embed", {"model": "all-minilm", "input": "x"})
        wait_until(lambda: sim.stats()["gated"] == 2)
        assert not held.done() and not embed.done()
        assert sim.stats()["in_flight"] == 2
        sim.set_gate(False)
        assert held.result(timeout=TIMEOUT).status_code == 200
        assert embed.result(timeout=TIMEOUT).status_code == 200
    assert sim.stats()["gated"] == 0
    wait_until(lambda: sim.stats()["in_flight"] == 0)  # handlers finish just after replying


# ----- controls over HTTP --------------------------------------------------------------


def test_controls_over_http(sim: FakeOllama) -> None:
    def control(path: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(sim.url + "/_sim/" + path, json=body, timeout=TIMEOUT)

    assert (
        control(
            "faults", {"count": 1, "status": 500, "error": "boom", "endpoint": "/api/generate"}
        ).status_code
        == 200
    )
    assert generate(sim).json() == {"error": "boom"}
    gpu = control("gpu", {"other_mb": 1234}).json()
    assert gpu["other_mb"] == 1234 and gpu["used_mb"] == 1234
    assert requests.get(sim.url + "/_sim/gpu", timeout=TIMEOUT).json()["free_mb"] == 24576 - 1234
    control("gate", {"closed": True})
    assert sim.stats()["gate_closed"] is True
    control("gate", {"closed": False})
    control("latency", {"seconds": 0.0})
    control("disable", {"endpoint": "/api/chat"})
    chat = post(sim, "/api/chat", {"model": "smollm:360m", "messages": []})
    assert chat.status_code == 404
    control("disable", {"endpoint": "/api/chat", "enabled": True})
    assert post(sim, "/api/chat", {"model": "smollm:360m", "messages": []}).status_code == 200
    stats = requests.get(sim.url + "/_sim/stats", timeout=TIMEOUT).json()
    assert stats["loads"] == 1 and stats["requests_by_endpoint"]["/api/chat"] == 2
    assert control("faults", {"mode": "explode"}).status_code == 400
    assert control("gpu", {}).status_code == 400
    assert requests.get(sim.url + "/_sim/nothing", timeout=TIMEOUT).status_code == 404
    assert control("reset", {"everything": True}).json() == {"ok": True}
    stats = requests.get(sim.url + "/_sim/stats", timeout=TIMEOUT).json()
    assert stats["loads"] == 0 and stats["request_log"] == [] and stats["other_mb"] == 0


def test_refuse_over_http_answers_first(sim: FakeOllama) -> None:
    resp = requests.post(sim.url + "/_sim/refuse", json={"seconds": 0.3}, timeout=TIMEOUT)
    assert resp.json() == {"ok": True}
    assert connect_refused(sim.port)
    wait_until(lambda: not connect_refused(sim.port))


def test_stats_counters_and_reset(sim: FakeOllama) -> None:
    generate(sim)
    post(sim, "/api/generate", {"model": "ghost", "prompt": "x"})
    sim.inject_fault(count=5)
    wait_until(lambda: sim.stats()["in_flight"] == 0)  # handlers finish just after replying
    stats = sim.stats()
    assert stats["requests_by_endpoint"] == {"/api/generate": 2}
    assert stats["requests_by_status"] == {"200": 1, "404": 1}
    assert stats["loads"] == 1
    assert stats["peak_vram_mb"] > 0 and len(stats["faults_pending"]) == 1
    assert [e["model"] for e in stats["request_log"]] == ["smollm:360m", "ghost"]
    times = [e["t"] for e in stats["request_log"]]
    assert times == sorted(times) and times[0] <= time.monotonic()
    sim.reset()
    stats = sim.stats()
    assert stats["loads"] == 0 and stats["requests_by_status"] == {}
    assert stats["faults_pending"] == [] and stats["load_events"] == []
    assert generate(sim).status_code == 200  # the fault was cleared
    assert stats["peak_vram_mb"] > 0  # still loaded: the peak restarts from current use


def test_fault_arguments_are_validated(sim: FakeOllama) -> None:
    for kwargs in ({"mode": "nope"}, {"count": 0}, {"status": 42}, {"endpoint": "api/x"}):
        with pytest.raises(ValueError):
            sim.inject_fault(**kwargs)


# ----- lifecycle -----------------------------------------------------------------------


def test_stop_is_clean_idempotent_and_fails_waiting_requests() -> None:
    before = {t.ident for t in threading.enumerate()}
    sim = FakeOllama(time_scale=0.02).start()
    port = sim.port
    sim.set_gate(True)
    with requests.Session() as idle:
        assert idle.get(sim.url + "/api/version", timeout=TIMEOUT).status_code == 200
        with ThreadPoolExecutor(max_workers=1) as pool:
            held = pool.submit(generate, sim)
            wait_until(lambda: sim.stats()["gated"] == 1)
            started = time.monotonic()
            sim.stop()
            assert time.monotonic() - started < 2.0
            try:
                status = held.result(timeout=TIMEOUT).status_code
            # refused or reset, or its 500 cut short as the listener closes: failed too
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                status = 0
            assert status in (0, 500)
    sim.stop()
    assert connect_refused(port)
    leftover = [t.name for t in threading.enumerate() if t.ident not in before]
    assert leftover == []


def test_context_manager_starts_and_stops() -> None:
    with FakeOllama(time_scale=0.02) as sim:
        assert requests.get(sim.url + "/", timeout=TIMEOUT).text == "Ollama is running"
        port = sim.port
    assert connect_refused(port)
