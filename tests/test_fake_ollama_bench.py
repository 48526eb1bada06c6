"""What the simulator offers ``tools/bench.py``: ``[bench:<tag>]`` tags and arrival times in
the request log, a configurable log size, and the expected durations a lower bound uses."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from modelmanager.simulator import (
    FakeOllama,
    embed_seconds,
    generate_seconds,
    load_seconds,
)
from modelmanager.simulator.cli import _parse_args

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0


@pytest.fixture
def make_sim() -> Iterator[Callable[..., FakeOllama]]:
    sims: list[FakeOllama] = []

    def factory(**kwargs: Any) -> FakeOllama:
        kwargs.setdefault("time_scale", 0.02)
        sim = FakeOllama(**kwargs).start()
        sims.append(sim)
        return sim

    yield factory
    for sim in sims:
        sim.stop()


def post(sim: FakeOllama, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(sim.url + path, json={"stream": False, **body}, timeout=TIMEOUT)


def test_request_log_records_bench_tags_of_every_inference_kind(
    make_sim: Callable[..., FakeOllama],
) -> None:
    sim = make_sim()
    before = time.monotonic()
    assert post(sim, "/api/generate", {"model": "smollm:360m", "prompt": "[bench:g1] hi"}).ok
    chat = [{"role": "user", "content": "first"}, {"role": "user", "content": "[bench:c.2] x"}]
    assert post(sim, "/api/chat", {"model": "smollm:360m", "messages": chat}).ok
    assert post(sim, "/api/embed", {"model": "all-minilm", "input": ["[bench:e-3] a", "b"]}).ok
    assert post(sim, "/api/embed", {"model": "all-minilm", "input": "[bench:e:4] a"}).ok
    assert post(sim, "/api/generate", {"model": "smollm:360m", "prompt": "untagged"}).ok
    assert post(sim, "/api/generate", {"model": "smollm:360m", "prompt": "x [bench:late]"}).ok
    assert post(sim, "/api/generate", {"model": "smollm:360m", "prompt": "[bench:] empty"}).ok
    log = sim.stats()["request_log"]
    assert [e.get("tag") for e in log] == ["g1", "c.2", "e-3", "e:4", None, None, None]
    # arrival times are this machine's monotonic clock, in order
    times = [e["t"] for e in log]
    assert before <= times[0] and times == sorted(times) and times[-1] <= time.monotonic()


def test_request_log_tags_requests_that_fail(make_sim: Callable[..., FakeOllama]) -> None:
    sim = make_sim()
    sim.inject_fault(count=1, status=500, endpoint="/api/generate")
    resp = post(sim, "/api/generate", {"model": "smollm:360m", "prompt": "[bench:f1] hi"})
    assert resp.status_code == 500
    resp = post(sim, "/api/generate", {"model": "ghost", "prompt": "[bench:f2] hi"})
    assert resp.status_code == 404
    log = sim.stats()["request_log"]
    assert [(e.get("tag"), e["status"]) for e in log] == [("f1", 500), ("f2", 404)]


def test_request_log_size_is_configurable(make_sim: Callable[..., FakeOllama]) -> None:
    sim = make_sim(request_log_size=3)
    for i in range(5):
        assert post(sim, "/api/generate", {"model": "smollm:360m", "prompt": f"[bench:{i}] x"}).ok
    assert [e["tag"] for e in sim.stats()["request_log"]] == ["2", "3", "4"]
    sim.reset()
    assert sim.stats()["request_log"] == []
    assert FakeOllama().request_log_size == 2000
    with pytest.raises(ValueError, match="request_log_size"):
        FakeOllama(request_log_size=0)


def test_request_log_size_option_on_the_command_line() -> None:
    assert _parse_args(["--request-log-size", "50000"]).request_log_size == 50000
    assert _parse_args([]).request_log_size == 2000
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "tools/fake_ollama.py", "--port", str(port), "--request-log-size", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "request_log_size" in done.stderr


def test_expected_durations_match_what_the_simulator_reports(
    make_sim: Callable[..., FakeOllama],
) -> None:
    scale = 0.2
    sim = make_sim(time_scale=scale)
    prompt = "[bench:1] Write about the mountain river and the city market today."
    first = post(sim, "/api/generate", {"model": "llama3.2:1b", "prompt": prompt}).json()
    expected_load = load_seconds("llama3.2:1b", time_scale=scale)
    assert first["load_duration"] / 1e9 == pytest.approx(expected_load, rel=0.15, abs=0.03)
    for num_predict in (None, 3):
        body: dict[str, Any] = {"model": "llama3.2:1b", "prompt": prompt}
        if num_predict:
            body["options"] = {"num_predict": num_predict}
        answer = post(sim, "/api/generate", body).json()
        spent = (answer["prompt_eval_duration"] + answer["eval_duration"]) / 1e9
        expected = generate_seconds(
            "llama3.2:1b", prompt, num_predict=num_predict, time_scale=scale
        )
        assert spent == pytest.approx(expected, rel=0.15, abs=0.02)
    # the reply length the estimate assumes is the simulator's
    assert generate_seconds("llama3.2:1b", prompt, num_predict=3) < generate_seconds(
        "llama3.2:1b", prompt
    )
    # embedding: proportional to the tokens, one slot, tiny next to a load
    assert 0 < embed_seconds("all-minilm", ["a b c"] * 4) < load_seconds("all-minilm")
    assert load_seconds("phi3:mini", num_parallel=2) > load_seconds("phi3:mini")
    assert load_seconds("nomic-embed-text", num_parallel=4) == load_seconds("nomic-embed-text")


def test_answers_are_sent_without_nagle_delay(make_sim: Callable[..., FakeOllama]) -> None:
    """Go (so Ollama) sets TCP_NODELAY; the simulator's handler does as well."""
    from modelmanager.simulator.http import Handler

    assert Handler.disable_nagle_algorithm is True
    sim = make_sim()
    assert post(sim, "/api/generate", {"model": "smollm:360m", "prompt": "hi"}).ok


@pytest.mark.parametrize(
    ("path", "body"),
    [("/api/generate", {"prompt": ""}), ("/api/chat", {"messages": []})],
)
def test_embedding_model_unloads_through_generate_and_chat(
    make_sim: Callable[..., FakeOllama], path: str, body: dict[str, Any]
) -> None:
    """Ollama's generate/chat handlers expire the runner before checking capabilities."""
    sim = make_sim()
    assert post(sim, "/api/embed", {"model": "all-minilm", "input": "load me"}).ok
    assert sim.loaded_models() == ["all-minilm:latest"]
    answer = post(sim, path, {"model": "all-minilm", "keep_alive": 0, **body})
    assert answer.status_code == 200 and answer.json()["done_reason"] == "unload"
    deadline = time.monotonic() + TIMEOUT
    while sim.loaded_models() and time.monotonic() < deadline:
        time.sleep(0.01)  # polling: the unload is asynchronous
    assert sim.loaded_models() == []
    # without keep_alive 0 it is still a capability error
    refused = post(sim, path, {"model": "all-minilm", **body})
    assert refused.status_code == 400 and "does not support" in refused.json()["error"]
