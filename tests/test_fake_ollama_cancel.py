"""Long answers at the model's pace, and clients that go away (OLLAMA_FACTS.md §1.7, §2.2).

A client that closes its connection mid-generation, while queued or while waiting for a
slot has its work stopped at once, its slot freed for the next request, and is counted
(``cancelled``) and logged with status 499, as Ollama logs a cancelled request. Requests
are sent on raw sockets so a test decides exactly when the client goes away.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from modelmanager.simulator import CATALOG, FakeOllama
from tests.conftest import wait_until

TIMEOUT = 10.0
#: How long, at most, a second request may wait once the first one's client has gone.
PROMPT_S = 1.0


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def post(sim: FakeOllama, path: str, body: Any, **kw: Any) -> requests.Response:
    kw.setdefault("timeout", TIMEOUT)
    return requests.post(sim.url + path, json=body, **kw)


def send_raw(sim: FakeOllama, path: str, body: dict[str, Any]) -> socket.socket:
    """Send one HTTP request on a fresh connection and return the socket, unread."""
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", sim.port), timeout=TIMEOUT)
    sock.sendall(head.encode() + data)
    return sock


def read_chunks(sock: socket.socket, count: int) -> bytes:
    """Read from ``sock`` until ``count`` NDJSON lines have arrived."""
    data = b""
    while data.count(b"}\n") < count:
        more = sock.recv(65536)
        assert more, "connection closed early"
        data += more
    return data


def cancelled_entries(sim: FakeOllama) -> list[dict[str, Any]]:
    return [e for e in sim.stats()["request_log"] if e["status"] == 499]


LONG = {"model": "smollm:360m", "prompt": "a long story", "options": {"num_predict": 2000}}


# ----- long answers --------------------------------------------------------------------


def test_num_predict_is_honoured_at_any_length(make_sim: Callable[..., FakeOllama]) -> None:
    sim = make_sim()  # time_scale 0.02: smollm:360m makes a token in 0.06 ms
    doc = post(sim, "/api/generate", LONG | {"stream": False}).json()
    assert doc["eval_count"] == 2000 and doc["done_reason"] == "length"
    assert len(doc["context"]) == doc["prompt_eval_count"] + 2000
    token_s = CATALOG["smollm:360m"].token_seconds * 0.02
    assert doc["eval_duration"] / 1e9 >= 2000 * token_s * 0.9
    chat = {"model": "smollm:360m", "messages": [{"role": "user", "content": "go on"}]}
    chat_doc = post(sim, "/api/chat", chat | {"stream": False, "options": {"num_predict": 300}})
    assert chat_doc.json()["eval_count"] == 300
    # without num_predict the natural, deterministic length (16 to 64 tokens) stays
    for prompt in ("a", "b", "c", "d"):
        body = {"model": "smollm:360m", "prompt": prompt, "stream": False}
        first, second = (
            post(sim, "/api/generate", body).json(),
            post(sim, "/api/generate", body).json(),
        )
        assert 16 <= first["eval_count"] <= 64 and first["done_reason"] == "stop"
        assert first["response"] == second["response"]


def test_a_long_stream_flushes_one_chunk_per_token(make_sim: Callable[..., FakeOllama]) -> None:
    """1,000 tokens of llama3.2:1b at time_scale 0.2 (1 ms each): the client sees them
    arrive steadily, never a long silence followed by a burst."""
    sim = make_sim(time_scale=0.2)
    body = {"model": "llama3.2:1b", "prompt": "go", "options": {"num_predict": 1000}}
    assert post(sim, "/api/generate", {"model": "llama3.2:1b", "keep_alive": "1h"}).ok
    arrivals: list[float] = []
    lines: list[dict[str, Any]] = []
    started = time.monotonic()
    with post(sim, "/api/generate", body, stream=True) as resp:
        for line in resp.iter_lines():
            if line:
                arrivals.append(time.monotonic())
                lines.append(json.loads(line))
    total = arrivals[-1] - started
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(lines) == 1001 and lines[-1]["done_reason"] == "length"
    assert lines[-1]["eval_count"] == 1000
    assert total >= 1000 * 0.001  # the model's pace, not faster
    assert arrivals[0] - started < total / 4  # the first token comes early ...
    assert max(gaps) < 0.5, f"longest silence {max(gaps):.3f}s of {total:.2f}s"  # ... and so on
    halfway = started + total / 2
    assert 0.25 < sum(t < halfway for t in arrivals) / len(arrivals) < 0.75


# ----- clients that go away ------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_leaving_mid_generation_frees_the_slot(
    make_sim: Callable[..., FakeOllama], stream: bool
) -> None:
    """``--num-parallel 1``: the abandoned generation (6 s of tokens at time_scale 1) stops
    at once; the next request for the model starts right away."""
    sim = make_sim(time_scale=1.0, num_parallel=1)
    assert post(sim, "/api/generate", {"model": "smollm:360m", "keep_alive": "1h"}).ok
    sock = send_raw(sim, "/api/generate", LONG | {"stream": stream})
    if stream:
        read_chunks(sock, 5)
    wait_until(lambda: sim.stats()["generating"] == 1, what="generation running")
    closed = time.monotonic()
    sock.close()
    wait_until(lambda: sim.stats()["generating"] == 0, timeout=PROMPT_S, what="work stopped")
    stopped = time.monotonic() - closed
    body = {
        "model": "smollm:360m",
        "prompt": "next",
        "stream": False,
        "options": {"num_predict": 3},
    }
    resp = post(sim, "/api/generate", body)
    assert resp.status_code == 200 and resp.json()["eval_count"] == 3
    assert time.monotonic() - closed < PROMPT_S, f"work stopped after {stopped:.3f}s"
    stats = sim.stats()
    assert stats["cancelled"] == 1
    (entry,) = cancelled_entries(sim)
    assert entry["endpoint"] == "/api/generate" and entry["model"] == "smollm:360m"
    assert stats["requests_by_status"] == {"200": 2, "499": 1}
    wait_until(lambda: sim.stats()["runners"][0]["refcount"] == 0, what="slot and runner free")


def test_a_client_leaving_while_queued_leaves_the_queue(
    make_sim: Callable[..., FakeOllama], pool: ThreadPoolExecutor
) -> None:
    sim = make_sim(max_loaded_models=1)
    assert post(sim, "/api/generate", {"model": "smollm:360m", "keep_alive": "1h"}).ok
    sim.set_gate(True)
    busy = pool.submit(post, sim, "/api/generate", {"model": "smollm:360m", "prompt": "x"})
    wait_until(lambda: sim.stats()["gated"] == 1)
    head = send_raw(sim, "/api/generate", {"model": "tinyllama:1.1b", "prompt": "x"})
    wait_until(lambda: sim.stats()["queued"] == 1, what="waiting to evict smollm")
    behind = send_raw(sim, "/api/chat", {"model": "qwen2.5:0.5b", "messages": []})
    wait_until(lambda: sim.stats()["queue_depth"] == 1, what="queued behind it")
    behind.close()
    wait_until(lambda: sim.stats()["queue_depth"] == 0, timeout=PROMPT_S, what="left the queue")
    head.close()
    wait_until(lambda: sim.stats()["queued"] == 0, timeout=PROMPT_S, what="head left")
    assert sim.stats()["cancelled"] == 2
    assert {e["endpoint"] for e in cancelled_entries(sim)} == {"/api/generate", "/api/chat"}
    sim.set_gate(False)
    assert busy.result(timeout=TIMEOUT).status_code == 200
    assert [e["model"] for e in sim.stats()["load_events"]] == ["smollm:360m"]  # none started


def test_a_client_leaving_while_waiting_for_a_slot(
    make_sim: Callable[..., FakeOllama], pool: ThreadPoolExecutor
) -> None:
    sim = make_sim(num_parallel=1)
    assert post(sim, "/api/generate", {"model": "smollm:360m", "keep_alive": "1h"}).ok
    sim.set_gate(True)
    busy = pool.submit(post, sim, "/api/generate", {"model": "smollm:360m", "prompt": "x"})
    wait_until(lambda: sim.stats()["gated"] == 1)
    waiting = send_raw(sim, "/api/generate", {"model": "smollm:360m", "prompt": "y"})
    wait_until(lambda: sim.stats()["in_flight"] == 2, what="second request waits for the slot")
    waiting.close()
    wait_until(lambda: sim.stats()["in_flight"] == 1, timeout=PROMPT_S, what="it gave up")
    assert sim.stats()["cancelled"] == 1 and sim.stats()["runners"][0]["refcount"] == 1
    sim.set_gate(False)
    assert busy.result(timeout=TIMEOUT).status_code == 200
    wait_until(lambda: sim.stats()["runners"][0]["refcount"] == 0)


def test_a_client_leaving_a_pull_stops_the_download(make_sim: Callable[..., FakeOllama]) -> None:
    sim = make_sim(time_scale=1.0)
    sock = send_raw(sim, "/api/pull", {"model": "qwen2.5:3b"})  # ~10 s of download
    read_chunks(sock, 3)
    sock.close()
    wait_until(lambda: sim.stats()["cancelled"] == 1, timeout=PROMPT_S, what="pull stopped")
    tags = requests.get(sim.url + "/api/tags", timeout=TIMEOUT).json()["models"]
    assert "qwen2.5:3b" not in [m["name"] for m in tags]
    assert sim.stats()["in_flight"] == 0
