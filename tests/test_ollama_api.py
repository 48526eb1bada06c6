"""Ollama's API on the manager's port, driven by the official ``ollama`` Python client,
unchanged, over real HTTP against the simulator: answers as Ollama gives them, each
request a job of the shared queue (priorities, grouping, VRAM rules), disconnects that
cancel, and what differs on purpose (model management)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest
import requests

from tests.conftest import Service, wait_until

TEXT = "qwen2.5:0.5b"
THINKER = "qwen3:0.6b"
EMBEDDER = "nomic-embed-text"
KEY = "k" * 24
LOW_KEY = "l" * 24

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city"],
        },
    },
}
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


_CLIENTS: list[ollama.Client] = []


def client(svc: Service, timeout: float = 30, **headers: str) -> ollama.Client:
    """The official client pointed at the manager, as a user would (closed after the
    test)."""
    made = ollama.Client(host=svc.url, headers=headers or None, timeout=timeout)
    _CLIENTS.append(made)
    return made


def direct(sim: Any) -> ollama.Client:
    return client(sim)


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def jobs(svc: Service, **query: Any) -> list[dict[str, Any]]:
    r = requests.get(f"{svc.url}/api/jobs", params=query, timeout=10)
    assert r.status_code == 200, r.text
    return list(r.json()["jobs"])


def sim_stats(sim: Any) -> dict[str, Any]:
    return dict(requests.get(f"{sim.url}/_sim/stats", timeout=5).json())


@pytest.fixture
def svc(sim: Any, make_service: Any) -> Service:
    service: Service = make_service(sim)
    return service


# ---------------------------------------------------------------- the real client


def test_generate_streaming_and_not_answers_as_ollama(sim: Any, svc: Service) -> None:
    c = client(svc)
    whole = c.generate(model=TEXT, prompt="Say hello")
    assert whole.done and whole.done_reason == "stop" and whole.model == TEXT
    assert whole.response == direct(sim).generate(model=TEXT, prompt="Say hello").response
    assert whole.context and whole.eval_count and whole.total_duration
    assert whole.load_duration is not None and whole.total_duration >= whole.load_duration
    parts = list(c.generate(model=TEXT, prompt="Say hello", stream=True))
    assert len(parts) > 3 and all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.response for p in parts) == whole.response
    listed = jobs(svc, limit=2)
    assert [j["source"] for j in listed] == ["ollama", "ollama"]
    assert listed[0]["status"] == "complete" and listed[0]["result"] == whole.response


def test_chat_streaming_and_not_with_thinking(svc: Service) -> None:
    c = client(svc)
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    whole = c.chat(model=THINKER, messages=messages, think=True)
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.message.thinking
    parts = list(c.chat(model=THINKER, messages=messages, think=True, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == whole.message.thinking
    assert "".join(p.message.content for p in parts) == whole.message.content
    quiet = c.chat(model=THINKER, messages=messages, think=False)
    assert not quiet.message.thinking
    with pytest.raises(ollama.ResponseError) as err:  # Ollama's own 400, relayed
        c.chat(model=TEXT, messages=messages, think=True)
    assert err.value.status_code == 400 and "does not support thinking" in err.value.error


def test_chat_with_tools_and_the_tool_answer(svc: Service) -> None:
    c = client(svc)
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = c.chat(model=TEXT, messages=messages, tools=[WEATHER_TOOL])
    calls = first.message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    assert isinstance(calls[0].function.arguments["city"], str)
    messages += [first.message, {"role": "tool", "content": "21 C", "tool_name": "get_weather"}]
    second = c.chat(model=TEXT, messages=messages, tools=[WEATHER_TOOL])
    assert second.message.content and not second.message.tool_calls
    streamed = list(c.chat(model=TEXT, messages=messages[:1], tools=[WEATHER_TOOL], stream=True))
    assert any(p.message.tool_calls for p in streamed)


def test_structured_output(svc: Service) -> None:
    c = client(svc)
    answer = c.generate(model=TEXT, prompt="A person", format=SCHEMA)
    person = json.loads(answer.response)
    assert isinstance(person["name"], str) and isinstance(person["age"], int)
    chat = c.chat(model=TEXT, messages=[{"role": "user", "content": "x"}], format="json")
    assert isinstance(json.loads(chat.message.content), dict)


def test_embed_embeddings_list_show_ps_version(sim: Any, svc: Service) -> None:
    c = client(svc)
    embedded = c.embed(model=EMBEDDER, input=["one", "two"])
    assert len(embedded.embeddings) == 2 and embedded.model == EMBEDDER
    assert embedded.embeddings == direct(sim).embed(model=EMBEDDER, input=["one", "two"]).embeddings
    assert abs(sum(x * x for x in embedded.embeddings[0]) - 1) < 1e-6
    assert len(c.embed(model=EMBEDDER, input="one", dimensions=8).embeddings[0]) == 8
    legacy = c.embeddings(model=EMBEDDER, prompt="one")
    assert legacy.embedding == pytest.approx(embedded.embeddings[0])
    names = {m.model for m in c.list().models}
    assert {TEXT, "nomic-embed-text:latest"} <= names
    assert c.list().models == direct(sim).list().models
    shown = c.show(TEXT)
    assert "tools" in (shown.capabilities or []) and shown.modelinfo
    assert [m.model for m in c.ps().models] == ["nomic-embed-text:latest"]
    version = requests.get(f"{svc.url}/api/version", timeout=5).json()
    assert version == requests.get(f"{sim.url}/api/version", timeout=5).json()


def test_unknown_fields_are_ignored_and_options_passed_on(svc: Service) -> None:
    body = {"model": TEXT, "prompt": "hi", "stream": False, "future_field": {"x": 1}}
    body["options"] = {"num_predict": 5, "some_new_option": True}
    r = requests.post(f"{svc.url}/api/generate", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()["done_reason"] == "length" and r.json()["eval_count"] == 5


def test_streams_ndjson_by_default(svc: Service) -> None:
    r = requests.post(
        f"{svc.url}/api/chat",
        json={"model": TEXT, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert len(lines) > 2 and lines[-1]["done"] is True and not lines[0]["done"]


# -------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("path", "body", "status", "text"),
    [
        ("/api/generate", {"model": "nope:1b", "prompt": "x"}, 404, "model 'nope:1b' not found"),
        (
            "/api/chat",
            {"model": "nope", "messages": [{"role": "user"}]},
            404,
            "model 'nope' not found",
        ),
        (
            "/api/embed",
            {"model": "nope", "input": "x"},
            404,
            'model "nope" not found, try pulling it first',
        ),
        ("/api/generate", {"prompt": "x"}, 404, "model '' not found"),
        ("/api/chat", {"model": "", "messages": []}, 400, "model is required"),
        ("/api/embeddings", {"prompt": "x"}, 400, "model is required"),
        ("/api/generate", {"model": "-a", "prompt": "x"}, 400, "invalid model name"),
        ("/api/generate", {"model": TEXT, "prompt": 5}, 400, "'prompt' must be a string"),
        ("/api/chat", {"model": TEXT, "messages": "hi"}, 400, "'messages' must be a list"),
        ("/api/embed", {"model": EMBEDDER, "input": [1, 2]}, 400, "invalid input type"),
        (
            "/api/generate",
            {"model": TEXT, "prompt": "x", "options": {"num_ctx": "big"}},
            400,
            "'options.num_ctx' must be an integer",
        ),
        (
            "/api/generate",
            {"model": TEXT, "prompt": "x", "keep_alive": "300"},
            400,
            "'keep_alive' must be",
        ),
        ("/api/show", {"model": "nope"}, 404, "model 'nope' not found"),
    ],
)
def test_errors_in_ollamas_shape_and_status(
    svc: Service, path: str, body: dict[str, Any], status: int, text: str
) -> None:
    r = requests.post(svc.url + path, json=body, timeout=30)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and r.json()["error"].startswith(text)


def test_bad_bodies_and_priority_header_are_400(svc: Service) -> None:
    for data in (b"", b"{", b"[1]", b'{"model": NaN}'):
        r = requests.post(f"{svc.url}/api/generate", data=data, timeout=10)
        assert r.status_code == 400 and isinstance(r.json()["error"], str), data
    r = requests.post(
        f"{svc.url}/api/generate",
        json={"model": TEXT, "prompt": "x"},
        headers={"X-Priority": "urgent"},
        timeout=10,
    )
    assert r.status_code == 400 and "X-Priority" in r.json()["error"]
    assert jobs(svc) == []  # nothing was queued


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/pull"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("POST", "/api/push"),
    ],
)
def test_model_management_is_refused_naming_what_to_use(
    sim: Any, svc: Service, method: str, path: str
) -> None:
    r = requests.request(method, svc.url + path, json={"model": "qwen2.5:3b"}, timeout=10)
    assert r.status_code == 403
    assert path in r.json()["error"] and "/api/v1/models" in r.json()["error"]
    if path in ("/api/pull", "/api/delete"):  # the manager's own endpoint for it, named
        instead = "POST /api/v1/models/download" if path == "/api/pull" else "DELETE /api/v1/models"
        assert instead in r.json()["error"]
    assert sim_stats(sim)["requests_by_endpoint"].get(path) is None  # never passed on


def test_pull_through_the_client_raises_with_the_message(svc: Service) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client(svc).pull("qwen2.5:3b")
    assert err.value.status_code == 403 and "/api/v1/models" in err.value.error


def test_api_keys_guard_the_doors_and_set_default_priorities(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(
        sim, API_KEY=KEY, API_KEYS=f"{LOW_KEY}:low", DEFAULT_PRIORITY="high"
    )
    r = requests.post(f"{svc.url}/api/generate", json={"model": TEXT, "prompt": "x"}, timeout=10)
    assert r.status_code == 401 and isinstance(r.json()["error"], str)
    with pytest.raises(ollama.ResponseError) as err:
        client(svc).list()
    assert err.value.status_code == 401
    client(svc, Authorization=f"Bearer {KEY}").generate(model=TEXT, prompt="a")
    client(svc, Authorization=f"Bearer {LOW_KEY}").generate(model=TEXT, prompt="b")
    client(svc, Authorization=f"Bearer {LOW_KEY}", **{"X-Priority": "normal"}).generate(
        model=TEXT, prompt="c"
    )
    auth = {"Authorization": f"Bearer {KEY}"}
    listed = requests.get(f"{svc.url}/api/jobs", headers=auth, timeout=10).json()["jobs"]
    assert [j["priority"] for j in reversed(listed)] == ["high", "low", "normal"]


def test_the_ollama_client_sends_the_key_from_ollama_api_key(
    sim: Any, make_service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the README says: OLLAMA_HOST and OLLAMA_API_KEY, no code changed."""
    svc: Service = make_service(sim, API_KEY=KEY)
    monkeypatch.setenv("OLLAMA_HOST", svc.url)
    monkeypatch.setenv("OLLAMA_API_KEY", KEY)
    with ollama.Client() as c:
        assert c.generate(model=TEXT, prompt="x").done


# ------------------------------------------------------------- load and unload


def test_empty_prompt_preloads_as_a_job_and_keep_alive_0_unloads(sim: Any, svc: Service) -> None:
    c = client(svc, **{"X-Priority": "low"})
    loaded = c.generate(model=TEXT, prompt="", stream=True)  # one object even when streaming
    assert not isinstance(loaded, ollama.GenerateResponse)
    (reply,) = list(loaded)
    assert reply.done and reply.done_reason == "load" and reply.response == ""
    assert TEXT in sim.loaded_models()
    (job,) = jobs(svc)
    assert (job["source"], job["priority"], job["status"]) == ("ollama", "low", "complete")
    chat = c.chat(model=THINKER, messages=[])
    assert chat.done_reason == "load" and chat.message.content == ""
    assert c.embed(model=EMBEDDER, input=[]).embeddings == []
    assert c.embeddings(model=EMBEDDER, prompt="").embedding == []
    gone = c.generate(model=TEXT, prompt="", keep_alive=0)
    assert gone.done_reason == "unload"
    wait_until(lambda: TEXT not in sim.loaded_models(), what="unloaded")
    assert c.chat(model=THINKER, messages=[], keep_alive=0).done_reason == "unload"
    wait_until(lambda: THINKER not in sim.loaded_models(), what="unloaded")
    assert len(jobs(svc)) == 4  # the unloads were no jobs
    with pytest.raises(ollama.ResponseError) as err:
        c.generate(model="nope", prompt="", keep_alive=0)
    assert err.value.status_code == 404


def test_unload_waits_for_work_that_needs_the_model(sim: Any, svc: Service) -> None:
    c = client(svc)
    c.generate(model=TEXT, prompt="")
    sim.set_gate(True)
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(c.generate(model=TEXT, prompt="held")))
    t.start()
    wait_until(lambda: any(j["status"] == "running" for j in jobs(svc)), what="running")
    assert c.generate(model=TEXT, prompt="", keep_alive=0).done_reason == "unload"
    time.sleep(0.3)  # the scheduler had time to act; the running job holds the model
    assert TEXT in sim.loaded_models()
    sim.set_gate(False)
    t.join(30)
    assert out and out[0].done_reason == "stop"
    wait_until(lambda: TEXT not in sim.loaded_models(), what="unloaded after the job")


# ------------------------------------------------------------- the shared queue


def test_two_clients_on_models_that_do_not_fit_together(
    make_sim: Any, make_service: Any, gpu_state: Any
) -> None:
    """A GPU that holds one of the two models at a time: no OOM, one load per model."""
    sim = make_sim(vram_mb=4608, nvml_state=str(gpu_state))
    svc: Service = make_service(sim, VRAM_SAFETY_MARGIN_MB=64)
    errors: list[BaseException] = []

    def program(model: str) -> None:
        c = client(svc)

        def one(i: int) -> None:
            try:
                c.generate(model=model, prompt=f"{model} {i}", options={"num_predict": 4})
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    programs = [threading.Thread(target=program, args=(m,)) for m in ("phi3:mini", "gemma:2b")]
    for p in programs:
        p.start()
    for p in programs:
        p.join(90)
    assert not errors
    stats = sim_stats(sim)
    assert stats["ooms"] == 0 and stats["crashes"] == 0
    assert stats["loads"] == 2
    assert stats["peak_vram_mb"] <= 4608
    assert [j["status"] for j in jobs(svc)] == ["complete"] * 12


def test_high_priority_request_overtakes_a_low_backlog(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim, MAX_CONCURRENT_PER_MODEL=1)
    c = client(svc)
    c.generate(model=TEXT, prompt="")  # loaded
    sim.set_gate(True)
    done: list[str] = []
    lock = threading.Lock()

    def ask(prompt: str, priority: str) -> None:
        client(svc, **{"X-Priority": priority}).generate(model=TEXT, prompt=prompt)
        with lock:
            done.append(prompt)

    threads = [threading.Thread(target=ask, args=(f"low {i}", "low")) for i in range(8)]
    for t in threads:
        t.start()
    wait_until(lambda: len(jobs(svc, limit=20)) == 9, what="backlog queued")
    urgent = threading.Thread(target=ask, args=("urgent", "high"))
    urgent.start()
    wait_until(lambda: len(jobs(svc, limit=20)) == 10, what="urgent queued")
    sim.set_gate(False)
    for t in [*threads, urgent]:
        t.join(60)
    # the low job already sent to Ollama (one slot, plus DISPATCH_AHEAD) may finish first
    assert done.index("urgent") <= 2, done
    high = next(j for j in jobs(svc, limit=20) if j["priority"] == "high")
    assert high["source"] == "ollama" and high["status"] == "complete"


# ------------------------------------------------------------- disconnects


def _sim_cancelled_generate(sim: Any) -> list[dict[str, Any]]:
    log = sim_stats(sim)["request_log"]
    return [e for e in log if e.get("endpoint") == "/api/generate" and e.get("status") == 499]


def test_client_leaving_mid_stream_cancels_its_job_and_frees_the_slot(
    sim: Any, svc: Service
) -> None:
    c = client(svc)
    c.generate(model=TEXT, prompt="")
    sim.set_gate(True, after_tokens=3)
    stream = c.generate(model=TEXT, prompt="long", stream=True, options={"num_predict": 500})
    first = [next(stream) for _ in range(3)]
    assert all(not p.done for p in first)
    stream.close()  # the client goes away mid-answer
    wait_until(lambda: sim_stats(sim)["cancelled"] >= 1, what="Ollama saw the abort")
    assert _sim_cancelled_generate(sim)
    job = wait_until(lambda: next((j for j in jobs(svc) if j["status"] == "cancelled"), None))
    assert job["source"] == "ollama"
    sim.set_gate(False)
    assert c.generate(model=TEXT, prompt="next").done  # the slot is free


def one_running(sim: Any, make_service: Any) -> tuple[Service, ollama.Client, threading.Thread]:
    """A service that runs one job of TEXT at a time, with one job held running (the
    simulator's gate closed) by ``holder``, a thread of the client ``c``."""
    svc: Service = make_service(sim, MAX_CONCURRENT_PER_MODEL=1, DISPATCH_AHEAD=0)
    c = client(svc)
    c.generate(model=TEXT, prompt="")
    sim.set_gate(True)
    holder = threading.Thread(target=lambda: c.generate(model=TEXT, prompt="held"))
    holder.start()
    wait_until(lambda: any(j["status"] == "running" for j in jobs(svc)), what="running")
    return svc, c, holder


def test_client_leaving_while_queued_cancels_its_job(sim: Any, make_service: Any) -> None:
    svc, _, holder = one_running(sim, make_service)
    impatient = client(svc, timeout=0.5)
    with pytest.raises(httpx.TimeoutException):
        impatient.generate(model=TEXT, prompt="waits")
    waiting = wait_until(
        lambda: next((j for j in jobs(svc) if j["status"] == "cancelled"), None),
        what="the queued job cancelled",
    )
    assert waiting["started_at"] is None
    sim.set_gate(False)
    holder.join(30)
    assert {j["status"] for j in jobs(svc)} == {"complete", "cancelled"}


# --------------------------------------------------------------- failures


def test_failure_before_the_first_chunk_is_retried_unseen(sim: Any, svc: Service) -> None:
    c = client(svc)
    c.generate(model=TEXT, prompt="")
    sim.inject_fault(count=1, status=500, endpoint="/api/generate", mode="http")
    parts = list(c.generate(model=TEXT, prompt="retry me", stream=True))
    assert parts[-1].done and parts[-1].done_reason == "stop"
    assert jobs(svc)[0]["attempts"] == 2


def test_failure_mid_stream_ends_in_band_and_is_not_retried(sim: Any, svc: Service) -> None:
    c = client(svc)
    c.generate(model=TEXT, prompt="")
    sim.inject_fault(count=1, endpoint="/api/generate", mode="stream")
    with pytest.raises(ollama.ResponseError) as err:
        list(c.generate(model=TEXT, prompt="breaks", stream=True))
    assert "unexpected EOF" in err.value.error
    # the client has part of the answer: the job fails, it is not run again
    job = wait_until(lambda: next((j for j in jobs(svc) if j["status"] == "failed"), None))
    assert job["attempts"] == 1 and "unexpected EOF" in job["error"]
    # not streaming, the same break is retried and the client gets the whole answer
    sim.inject_fault(count=1, endpoint="/api/generate", mode="stream")
    assert c.generate(model=TEXT, prompt="breaks").done_reason == "stop"
    assert jobs(svc)[0]["attempts"] == 2


def test_full_queue_answers_ollamas_503(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim, QUEUE_MAX_SIZE=1)
    sim.set_gate(True)
    holder = threading.Thread(target=lambda: client(svc).generate(model=TEXT, prompt="held"))
    holder.start()
    wait_until(lambda: len(jobs(svc)) == 1, what="queued")
    r = requests.post(f"{svc.url}/api/generate", json={"model": TEXT, "prompt": "x"}, timeout=10)
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert r.json() == {
        "error": "server busy, please try again.  maximum pending requests exceeded"
    }
    sim.set_gate(False)
    holder.join(30)


def test_wrong_method_is_405(svc: Service) -> None:
    r = requests.get(f"{svc.url}/api/generate", timeout=10)
    assert r.status_code == 405 and "POST" in r.headers["Allow"]


def test_ollama_host_in_the_environment_points_the_client_here(
    sim: Any, svc: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", svc.url)
    c = ollama.Client()
    _CLIENTS.append(c)
    assert c.generate(model=TEXT, prompt="via OLLAMA_HOST").done
    assert jobs(svc)[0]["source"] == "ollama"


def test_durations_include_the_wait_in_the_managers_queue(sim: Any, make_service: Any) -> None:
    svc, c, holder = one_running(sim, make_service)
    out: list[Any] = []
    waiter = threading.Thread(target=lambda: out.append(c.generate(model=TEXT, prompt="w")))
    waiter.start()
    wait_until(lambda: len(jobs(svc)) == 3, what="queued behind")
    time.sleep(0.5)  # the time it waits in the manager's queue, measured below
    sim.set_gate(False)
    holder.join(30)
    waiter.join(30)
    assert out[0].load_duration >= 0.4e9 and out[0].total_duration >= out[0].load_duration


def test_beyond_max_open_requests_the_answer_is_503(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim, MAX_OPEN_REQUESTS=1)
    client(svc).generate(model=TEXT, prompt="")
    sim.set_gate(True)
    holder = threading.Thread(target=lambda: client(svc).generate(model=TEXT, prompt="held"))
    holder.start()
    wait_until(lambda: any(j["status"] == "running" for j in jobs(svc)), what="running")
    with pytest.raises(ollama.ResponseError) as err:
        client(svc).chat(model=TEXT, messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 503 and "server busy" in err.value.error
    assert requests.get(f"{svc.url}/api/tags", timeout=10).status_code == 200  # not counted
    sim.set_gate(False)
    holder.join(30)
    assert client(svc).generate(model=TEXT, prompt="again").done  # the slot came back


def test_a_chunked_body_takes_flasks_route_to_the_same_answer(svc: Service) -> None:
    body = json.dumps({"model": TEXT, "prompt": "Say hello", "stream": False}).encode()
    chunked = requests.post(
        f"{svc.url}/api/generate", data=iter([body[:10], body[10:]]), timeout=30
    )
    sized = requests.post(f"{svc.url}/api/generate", data=body, timeout=30)
    assert chunked.status_code == sized.status_code == 200
    assert chunked.json()["response"] == sized.json()["response"]
    bad = requests.post(f"{svc.url}/api/generate", data=iter([b"{"]), timeout=30)
    assert bad.status_code == 400 and isinstance(bad.json()["error"], str)


def test_a_stopping_service_sends_waiting_clients_away(sim: Any, make_service: Any) -> None:
    svc, _, holder = one_running(sim, make_service)
    out: list[BaseException] = []

    def wait_in_queue() -> None:
        try:
            client(svc).generate(model=TEXT, prompt="queued")
        except BaseException as exc:
            out.append(exc)

    waiter = threading.Thread(target=wait_in_queue)
    waiter.start()
    wait_until(lambda: len(jobs(svc)) == 3, what="queued")
    svc.manager.api.accepting = False  # what a SIGTERM does first
    waiter.join(10)
    assert isinstance(out[0], ollama.ResponseError) and out[0].status_code == 503
    assert "stopping" in out[0].error
    assert jobs(svc)[0]["status"] == "cancelled"  # it will not run after a restart
    sim.set_gate(False)
    holder.join(30)


def test_closing_the_server_stops_its_threads() -> None:
    from config import Config
    from modelmanager.http_api import create_app
    from modelmanager.server import build_server

    config = Config.load(environ={}, overrides={"HTTP_PORT": 0})
    server = build_server(create_app(None, config), config)  # type: ignore[arg-type]
    pool = server.task_dispatcher
    assert len(pool.threads) == config.HTTP_THREADS + config.MAX_OPEN_REQUESTS
    server.close()
    wait_until(lambda: not pool.threads, what="threads stopped")


def test_closing_the_server_closes_its_open_connections() -> None:
    """A keep-alive client's connection ends when the server closes (it was left open,
    owned by nobody, until the client went)."""
    import http.client

    from config import Config
    from modelmanager.server import bound_address, build_server

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    config = Config.load(environ={}, overrides={"HTTP_PORT": 0})
    server = build_server(app, config)
    runner = threading.Thread(target=server.run, daemon=True)
    runner.start()
    conn = http.client.HTTPConnection(*bound_address(server), timeout=10)
    try:
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"ok"  # the connection stays open (keep-alive)
        server.close()
        assert conn.sock is not None
        assert conn.sock.recv(1) == b""  # closed by the server: end of stream
    finally:
        conn.close()
    runner.join(10)
    assert not runner.is_alive()


@pytest.mark.parametrize(
    ("environ", "text"),
    [
        ({"MM_DEFAULT_PRIORITY": "urgent"}, "DEFAULT_PRIORITY must be high, normal or low"),
        ({"MM_API_KEYS": "short"}, "at least 16 characters"),
        ({"MM_API_KEYS": f"{KEY}:soon"}, "must be high, normal or low"),
        ({"MM_MAX_OPEN_REQUESTS": "0"}, "MAX_OPEN_REQUESTS must be at least 1"),
    ],
)
def test_front_door_settings_are_checked_at_startup(environ: dict[str, str], text: str) -> None:
    from config import Config
    from modelmanager.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        Config.load(environ=environ)
    assert text in str(err.value) and "soon" not in str(err.value)


def test_api_keys_parse_with_their_priorities() -> None:
    from config import Config

    config = Config.load(
        environ={"MM_API_KEY": KEY, "MM_API_KEYS": f" {LOW_KEY}:LOW , {'h' * 20}:high,{'n' * 16}"}
    )
    assert config.api_keys == {KEY: None, LOW_KEY: "low", "h" * 20: "high", "n" * 16: None}


# ------------------------------------------------- Ollama's older field names


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({"name": TEXT}, 200, None),
        ({"model": "", "name": TEXT}, 200, None),
        ({"model": None, "name": TEXT, "verbose": False}, 200, None),
        ({"model": TEXT, "name": "nope"}, 200, None),  # model wins, as in Ollama
        ({"name": "nope"}, 404, "model 'nope' not found"),
        ({"name": ""}, 400, "model is required"),
        ({}, 400, "model is required"),
        ({"name": 5}, 400, "name"),
    ],
)
def test_show_reads_ollamas_older_name_field(
    svc: Service, body: dict[str, Any], status: int, text: str | None
) -> None:
    """``api/types.go`` ShowRequest keeps the deprecated ``Name``; ``ShowHandler`` reads it
    when ``Model`` is empty. Older clients (and scripts) still send it."""
    r = requests.post(f"{svc.url}/api/show", json=body, timeout=30)
    assert r.status_code == status, r.text
    if text is None:
        by_model = client(svc).show(TEXT)
        assert r.json()["model_info"] == by_model.modelinfo
        assert r.json()["details"]["family"] == by_model.details.family
    else:
        assert set(r.json()) == {"error"} and text in r.json()["error"]
