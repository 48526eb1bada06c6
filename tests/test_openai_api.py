"""The OpenAI-compatible API on the manager's port, driven by the official ``openai``
Python client, unchanged, over real HTTP against the simulator: the field mapping, finish
reasons, usage and error shapes of Ollama's own compatibility layer, over the same queue
as every other job."""

from __future__ import annotations

import base64
import json
import struct
import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests

from tests.conftest import Service, wait_until

TEXT = "qwen2.5:0.5b"
THINKER = "qwen3:0.6b"
EMBEDDER = "nomic-embed-text"
USER = [{"role": "user", "content": "Why is the sky blue?"}]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

_CLIENTS: list[openai.OpenAI] = []


def client(svc: Service, **headers: str) -> openai.OpenAI:
    """The official client pointed at the manager as its README says (closed after the
    test); no retries, so that a failure shows as it is."""
    made = openai.OpenAI(
        base_url=f"{svc.url}/v1",
        api_key="unused",
        default_headers=headers or None,
        max_retries=0,
        timeout=30,
    )
    _CLIENTS.append(made)
    return made


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


@pytest.fixture
def svc(sim: Any, make_service: Any) -> Service:
    service: Service = make_service(sim)
    return service


def jobs(svc: Service) -> list[dict[str, Any]]:
    return list(requests.get(f"{svc.url}/api/jobs", timeout=10).json()["jobs"])


def ollama_chat(sim: Any, **body: Any) -> dict[str, Any]:
    r = requests.post(f"{sim.url}/api/chat", json={**body, "stream": False}, timeout=30)
    return dict(r.json())


# ------------------------------------------------------------------------- chat


def test_chat_completion_streaming_and_not(sim: Any, svc: Service) -> None:
    c = client(svc, **{"X-Priority": "high"})
    done = c.chat.completions.create(model=TEXT, messages=USER)
    assert done.object == "chat.completion" and done.model == TEXT
    assert done.system_fingerprint == "fp_ollama" and done.id.startswith("chatcmpl-")
    choice = done.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    # temperature and top_p default to 1.0, as Ollama's layer sends them
    same = ollama_chat(sim, model=TEXT, messages=USER, options={"temperature": 1.0, "top_p": 1.0})
    assert choice.message.content == same["message"]["content"]
    assert done.usage is not None and done.usage.completion_tokens == same["eval_count"]
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    chunks = list(
        c.chat.completions.create(
            model=TEXT,
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [ch.choices[0].delta.content or "" for ch in chunks if ch.choices]
    assert len(texts) > 3 and "".join(texts) == choice.message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == done.usage
    job = jobs(svc)[0]
    assert (job["source"], job["priority"], job["kind"]) == ("openai", "high", "chat")
    assert done.id == f"chatcmpl-{jobs(svc)[1]['job_id']}"


def test_chat_options_map_onto_ollamas(sim: Any, svc: Service) -> None:
    c = client(svc)
    done = c.chat.completions.create(
        model=TEXT,
        messages=USER,
        max_tokens=7,
        temperature=0.2,
        seed=3,
        stop=["zzz"],
    )
    assert done.choices[0].finish_reason == "length" and done.usage is not None
    assert done.usage.completion_tokens == 7


def test_chat_with_tools(svc: Service) -> None:
    c = client(svc)
    done = c.chat.completions.create(model=TEXT, messages=USER, tools=[WEATHER_TOOL])
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert calls and calls[0].type == "function" and calls[0].function.name == "get_weather"
    assert isinstance(json.loads(calls[0].function.arguments)["city"], str)
    reply: list[Any] = [
        *USER,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": calls[0].id, "content": "21 C"},
    ]
    second = c.chat.completions.create(model=TEXT, messages=reply, tools=[WEATHER_TOOL])
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content
    streamed = list(
        c.chat.completions.create(
            model=TEXT,
            messages=USER,
            tools=[WEATHER_TOOL],
            stream=True,
        )
    )
    assert any(ch.choices[0].delta.tool_calls for ch in streamed)
    assert streamed[-1].choices[0].finish_reason == "tool_calls"


def test_chat_thinking_as_reasoning(svc: Service) -> None:
    c = client(svc)
    done = c.chat.completions.create(model=THINKER, messages=USER, reasoning_effort="low")
    message = done.choices[0].message
    assert message.content and getattr(message, "reasoning", None)
    quiet = c.chat.completions.create(
        model=THINKER,
        messages=USER,
        reasoning_effort="none",
    )
    assert getattr(quiet.choices[0].message, "reasoning", None) is None
    chunks = list(
        c.chat.completions.create(
            model=THINKER,
            messages=USER,
            reasoning_effort="low",
            stream=True,
        )
    )
    reasoning = "".join(getattr(ch.choices[0].delta, "reasoning", None) or "" for ch in chunks)
    assert reasoning == message.reasoning


def test_chat_structured_output(svc: Service) -> None:
    c = client(svc)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    done = c.chat.completions.create(
        model=TEXT,
        messages=USER,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
    )
    person = json.loads(done.choices[0].message.content or "")
    assert isinstance(person["name"], str) and isinstance(person["age"], int)
    as_json = c.chat.completions.create(
        model=TEXT,
        messages=USER,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(as_json.choices[0].message.content or ""), dict)


# -------------------------------------------------------- completions, embeddings


def test_completions_streaming_and_not(sim: Any, svc: Service) -> None:
    c = client(svc)
    done = c.completions.create(model=TEXT, prompt="Say hello")
    assert done.object == "text_completion" and done.choices[0].finish_reason == "stop"
    direct = requests.post(
        f"{sim.url}/api/generate",
        json={"model": TEXT, "prompt": "Say hello", "stream": False},
        timeout=30,
    ).json()
    assert done.choices[0].text == direct["response"]
    assert done.usage is not None and done.usage.completion_tokens == direct["eval_count"]
    chunks = list(
        c.completions.create(
            model=TEXT, prompt="Say hello", stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == done.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens
    limited = c.completions.create(model=TEXT, prompt="Say hello", max_tokens=3, logprobs=2)
    assert limited.choices[0].finish_reason == "length"
    logprobs = limited.choices[0].logprobs
    assert logprobs is not None and len(logprobs.tokens or []) == 3
    assert all(len(alts) <= 2 for alts in logprobs.top_logprobs or [])


def test_embeddings_float_and_base64(sim: Any, svc: Service) -> None:
    c = client(svc)
    default = c.embeddings.create(model=EMBEDDER, input=["one", "two"])  # base64 on the wire
    floats = c.embeddings.create(model=EMBEDDER, input=["one", "two"], encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1] and floats.model == EMBEDDER
    direct = requests.post(
        f"{sim.url}/api/embed", json={"model": EMBEDDER, "input": ["one", "two"]}, timeout=30
    ).json()
    assert floats.data[0].embedding == direct["embeddings"][0]
    assert default.data[0].embedding == pytest.approx(direct["embeddings"][0], abs=1e-6)
    assert floats.usage.prompt_tokens == direct["prompt_eval_count"]
    raw = requests.post(
        f"{svc.url}/v1/embeddings",
        json={"model": EMBEDDER, "input": "one", "encoding_format": "base64"},
        timeout=30,
    ).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert struct.unpack(f"<{len(packed) // 4}f", packed)[0] == pytest.approx(
        direct["embeddings"][0][0], abs=1e-6
    )
    short = c.embeddings.create(model=EMBEDDER, input="one", dimensions=4, encoding_format="float")
    assert len(short.data[0].embedding) == 4


def test_models_list_and_retrieve(sim: Any, svc: Service) -> None:
    c = client(svc)
    listed = c.models.list().data
    tags = requests.get(f"{sim.url}/api/tags", timeout=5).json()["models"]
    assert [m.id for m in listed] == [t["name"] for t in tags]
    assert {m.object for m in listed} == {"model"} and {m.owned_by for m in listed} >= {"library"}
    one = c.models.retrieve(TEXT)
    assert one.id == TEXT and one.created > 0
    hf = c.models.retrieve("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M")
    assert hf.owned_by == "bartowski"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("nope:1b")


# -------------------------------------------------------------------------- errors


def test_errors_in_openais_shape(svc: Service) -> None:
    c = client(svc)
    with pytest.raises(openai.NotFoundError) as missing:
        c.chat.completions.create(model="nope:1b", messages=USER)
    assert missing.value.status_code == 404
    body: Any = missing.value.body
    assert body["type"] == "not_found_error" and "nope:1b" in body["message"]
    with pytest.raises(openai.BadRequestError) as empty:
        c.chat.completions.create(model=TEXT, messages=[])
    assert "too short" in str(empty.value.body)
    for payload, text in (
        ({"model": TEXT, "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": TEXT, "input": []}, "invalid input"),
        ({"model": TEXT}, "invalid input"),
        ({"model": TEXT, "input": [1, 2]}, "invalid input type"),
    ):
        r = requests.post(f"{svc.url}/v1/embeddings", json=payload, timeout=10)
        assert r.status_code == 400 and text in r.json()["error"]["message"], r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = requests.post(
        f"{svc.url}/v1/chat/completions",
        json={"model": TEXT, "messages": USER, "reasoning_effort": "max"},
        timeout=10,
    )
    assert r.status_code == 400 and "invalid reasoning value" in r.json()["error"]["message"]
    r = requests.post(
        f"{svc.url}/v1/chat/completions",
        json={"model": TEXT, "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
        timeout=10,
    )
    assert r.status_code == 400 and r.json()["error"]["message"] == "invalid message format"
    r = requests.post(
        f"{svc.url}/v1/chat/completions",
        json={"model": TEXT, "messages": USER, "unknown": 1, "user": "me", "n": 1},
        timeout=30,
    )
    assert r.status_code == 200  # unknown fields are ignored
    with pytest.raises(openai.BadRequestError):
        client(svc, **{"X-Priority": "asap"}).completions.create(model=TEXT, prompt="x")


def test_api_key_is_the_openai_clients_own(sim: Any, make_service: Any) -> None:
    key = "s" * 32
    svc: Service = make_service(sim, API_KEYS=f"{key}:low")
    with pytest.raises(openai.AuthenticationError) as err:
        client(svc).models.list()
    assert err.value.status_code == 401 and isinstance(err.value.body, dict)
    c = openai.OpenAI(base_url=f"{svc.url}/v1", api_key=key, max_retries=0)
    _CLIENTS.append(c)
    c.completions.create(model=TEXT, prompt="x")
    auth = {"Authorization": f"Bearer {key}"}
    listed = requests.get(f"{svc.url}/api/jobs", headers=auth, timeout=10).json()["jobs"]
    assert [(j["source"], j["priority"]) for j in listed] == [("openai", "low")]


def test_client_leaving_a_stream_cancels_its_job(sim: Any, svc: Service) -> None:
    c = client(svc)
    c.completions.create(model=TEXT, prompt="")  # loads the model
    sim.set_gate(True, after_tokens=2)
    stream = c.chat.completions.create(
        model=TEXT,
        messages=USER,
        stream=True,
        max_tokens=400,
    )
    it = iter(stream)
    next(it), next(it)
    stream.close()
    wait_until(lambda: requests.get(f"{sim.url}/_sim/stats", timeout=5).json()["cancelled"])
    job = wait_until(lambda: next((j for j in jobs(svc) if j["status"] == "cancelled"), None))
    assert job["source"] == "openai"
    sim.set_gate(False)
    assert c.chat.completions.create(model=TEXT, messages=USER).choices


def test_failure_mid_stream_is_an_error_event(sim: Any, svc: Service) -> None:
    c = client(svc)
    c.completions.create(model=TEXT, prompt="")
    sim.inject_fault(count=1, endpoint="/api/chat", mode="stream")
    with pytest.raises(openai.APIError) as err:
        list(c.chat.completions.create(model=TEXT, messages=USER, stream=True))
    assert "unexpected EOF" in str(err.value.message)


def test_two_doors_share_the_queue(svc: Service) -> None:
    """Ollama's and OpenAI's clients at once: one queue, each job with its source."""
    import ollama

    out: list[Any] = []
    o = ollama.Client(host=svc.url)
    threads = [
        threading.Thread(target=lambda: out.append(o.generate(model=TEXT, prompt="a"))),
        threading.Thread(
            target=lambda: out.append(client(svc).completions.create(model=TEXT, prompt="a"))
        ),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    o.close()
    assert len(out) == 2
    assert sorted(j["source"] for j in jobs(svc)) == ["ollama", "openai"]


def test_lenient_where_the_openai_api_is(sim: Any, svc: Service) -> None:
    """max_completion_tokens, a message without content, tool-call arguments that are no
    JSON object, and a model id that cannot be a name."""
    body = {
        "model": TEXT,
        "max_completion_tokens": 4,
        "messages": [
            {"role": "system"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "f", "arguments": "{oops"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "done"},
            {"role": "user", "content": [{"type": "text", "text": "and now?"}]},
        ],
    }
    r = requests.post(f"{svc.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 4
    assert r.json()["choices"][0]["finish_reason"] == "length"
    r = requests.get(f"{svc.url}/v1/models/a..b", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
