"""The Ollama simulator's names, request fields, thinking, tool calls and log probabilities,
over real HTTP (OLLAMA_FACTS.md §1.1-1.6, Ollama 0.21 ``api/types.go``).

Long answers and clients that go away: ``test_fake_ollama_cancel.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import requests

from modelmanager.simulator import CATALOG, FakeOllama

TIMEOUT = 10.0
HF = "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "required": ["city", "unit"],
            "properties": {
                "city": {"type": "string", "description": "the city"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
        },
    },
}
USER_ASKS = [{"role": "user", "content": "What is the weather in Paris?"}]
PARIS_CALL = {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}


@pytest.fixture
def sim(make_sim: Callable[..., FakeOllama]) -> FakeOllama:
    return make_sim()


def post(sim: FakeOllama, path: str, body: Any, **kw: Any) -> requests.Response:
    kw.setdefault("timeout", TIMEOUT)
    return requests.post(sim.url + path, json=body, **kw)


def ndjson(resp: requests.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


def listed(sim: FakeOllama, path: str) -> list[str]:
    return [m["name"] for m in requests.get(sim.url + path, timeout=TIMEOUT).json()["models"]]


# ----- names ---------------------------------------------------------------------------


def test_names_resolve_case_insensitively_to_one_runner_each(sim: FakeOllama) -> None:
    spellings = [
        "HF.CO/bartowski/llama-3.2-1b-instruct-gguf:q4_k_m",
        HF,
        "Qwen2.5:0.5B",
        "library/qwen2.5:0.5b",
        "registry.ollama.ai/library/qwen2.5:0.5b",
        "qwen2.5:0.5b",
    ]
    for name in spellings:
        resp = post(sim, "/api/generate", {"model": name, "prompt": "hi", "stream": False})
        assert resp.status_code == 200, resp.text
        assert resp.json()["model"] == name  # echoed exactly as sent
    assert sim.stats()["loads"] == 2
    assert sorted(listed(sim, "/api/ps")) == sorted([HF, "qwen2.5:0.5b"])
    assert HF in listed(sim, "/api/tags")
    chat = post(sim, "/api/chat", {"model": "Qwen2.5:0.5B", "messages": USER_ASKS, "stream": False})
    assert chat.json()["model"] == "Qwen2.5:0.5B"
    embed = post(sim, "/api/embed", {"model": "QWEN2.5:0.5b", "input": "x"})
    assert embed.json()["model"] == "QWEN2.5:0.5b" and sim.stats()["loads"] == 2


def test_hf_model_details_and_sizes(sim: FakeOllama) -> None:
    tags = {
        m["name"]: m for m in requests.get(sim.url + "/api/tags", timeout=TIMEOUT).json()["models"]
    }
    assert tags[HF]["size"] == 807_694_464
    assert tags[HF]["details"]["quantization_level"] == "Q4_K_M"
    show = post(sim, "/api/show", {"model": HF.lower()}).json()
    assert show["capabilities"] == ["completion", "tools"]
    assert post(sim, "/api/generate", {"model": HF, "keep_alive": "1h"}).status_code == 200
    (entry,) = requests.get(sim.url + "/api/ps", timeout=TIMEOUT).json()["models"]
    assert entry["name"] == entry["model"] == HF
    assert entry["size_vram"] == CATALOG[HF].vram_bytes == 1_000_000_000
    assert entry["context_length"] == 4096


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/generate", {"model": "bad name!", "prompt": "x"}),
        ("POST", "/api/chat", {"model": "a/b/c/d", "messages": USER_ASKS}),
        ("POST", "/api/show", {"model": "x:y:z"}),
        ("POST", "/api/pull", {"model": "no spaces"}),
        ("DELETE", "/api/delete", {"model": "bad name!"}),
    ],
)
def test_invalid_names_are_400(sim: FakeOllama, method: str, path: str, body: Any) -> None:
    resp = requests.request(method, sim.url + path, json=body, timeout=TIMEOUT)
    assert (resp.status_code, resp.json()) == (400, {"error": "invalid model name"})


def test_copy_keeps_the_destination_spelling_and_delete_takes_any_spelling(
    sim: FakeOllama,
) -> None:
    resp = post(sim, "/api/copy", {"source": "Qwen2.5:0.5B", "destination": "MyModel:Latest"})
    assert (resp.status_code, resp.content) == (200, b"")
    names = listed(sim, "/api/tags")
    assert names[0] == "MyModel:Latest" and "qwen2.5:0.5b" in names  # newest first
    tags = {
        m["name"]: m for m in requests.get(sim.url + "/api/tags", timeout=TIMEOUT).json()["models"]
    }
    assert tags["MyModel:Latest"]["digest"] == tags["qwen2.5:0.5b"]["digest"]
    answer = post(sim, "/api/generate", {"model": "mymodel", "prompt": "x", "stream": False})
    assert answer.status_code == 200 and answer.json()["model"] == "mymodel"
    # copying onto an existing name (any case) overwrites it and keeps its spelling
    again = post(sim, "/api/copy", {"source": "smollm:360m", "destination": "MYMODEL"})
    assert again.status_code == 200
    assert listed(sim, "/api/tags").count("MyModel:Latest") == 1
    assert post(sim, "/api/show", {"model": "mymodel"}).json()["details"]["family"] == "llama"
    gone = requests.delete(
        sim.url + "/api/delete", json={"model": "mymodel:LATEST"}, timeout=TIMEOUT
    )
    assert (gone.status_code, gone.content) == (200, b"")
    assert "MyModel:Latest" not in listed(sim, "/api/tags") and "qwen2.5:0.5b" in listed(
        sim, "/api/tags"
    )
    missing = post(sim, "/api/generate", {"model": "MyModel", "prompt": "x"})
    assert (missing.status_code, missing.json()) == (404, {"error": "model 'MyModel' not found"})


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"source": "ghost", "destination": "x"}, 404, 'model "ghost" not found'),
        (
            {"source": "qwen2.5:0.5b", "destination": "bad name"},
            400,
            'destination "bad name" is invalid',
        ),
        ({"source": "a b", "destination": "x"}, 400, 'source "a b" is invalid'),
        (
            {"source": 1, "destination": "x"},
            400,
            "json: cannot unmarshal number into Go struct field CopyRequest.source of type string",
        ),
    ],
)
def test_copy_errors(sim: FakeOllama, body: Any, status: int, message: str) -> None:
    resp = post(sim, "/api/copy", body)
    assert (resp.status_code, resp.json()) == (status, {"error": message})


def test_a_copy_shares_the_runner_of_its_weights(make_sim: Callable[..., FakeOllama]) -> None:
    """Ollama keys runners by the weights file: a copy of a loaded model uses its runner,
    and /api/ps lists the name the runner was loaded under."""
    sim = make_sim()
    post(sim, "/api/copy", {"source": "qwen2.5:0.5b", "destination": "MyModel:Latest"})
    assert post(sim, "/api/generate", {"model": "MyModel:Latest", "keep_alive": "1h"}).ok
    assert listed(sim, "/api/ps") == ["MyModel:Latest"]
    assert post(sim, "/api/generate", {"model": "qwen2.5:0.5b", "prompt": "x", "stream": False}).ok
    assert sim.stats()["loads"] == 1 and listed(sim, "/api/ps") == ["MyModel:Latest"]
    unload = post(sim, "/api/generate", {"model": "qwen2.5:0.5b", "keep_alive": 0})
    assert unload.json()["done_reason"] == "unload"


# ----- request fields ------------------------------------------------------------------


def test_every_generate_field_is_accepted(sim: FakeOllama) -> None:
    body = {
        "model": "qwen3:0.6b",
        "prompt": "Why is the sky blue?",
        "suffix": "",
        "system": "Be brief.",
        "template": "{{ .Prompt }}",
        "context": [1, 2, 3],
        "stream": False,
        "raw": False,
        "format": "json",
        "keep_alive": "5m",
        "images": ["aGVsbG8="],
        "options": {"num_ctx": 4096, "temperature": 0.2, "seed": 7, "stop": ["\n"]},
        "think": "low",
        "truncate": True,
        "shift": False,
        "logprobs": False,
        "top_logprobs": 0,
    }
    resp = post(sim, "/api/generate", body)
    assert resp.status_code == 200, resp.text
    assert json.loads(resp.json()["response"]) and resp.json()["thinking"]


def test_every_chat_and_embed_field_is_accepted(sim: FakeOllama) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?", "images": ["aGVsbG8="]},
        {
            "role": "assistant",
            "content": "",
            "thinking": "I should call the tool.",
            "tool_calls": [{"id": "call_1", "function": PARIS_CALL}],
        },
        {"role": "tool", "content": "22C", "tool_name": "get_weather", "tool_call_id": "call_1"},
    ]
    body = {
        "model": "qwen3:0.6b",
        "messages": messages,
        "tools": [WEATHER_TOOL],
        "format": {"type": "object", "properties": {"answer": {"type": "string"}}},
        "options": {"num_predict": 40},
        "stream": False,
        "keep_alive": 60,
        "think": True,
        "truncate": False,
        "shift": True,
        "logprobs": True,
        "top_logprobs": 20,
    }
    resp = post(sim, "/api/chat", body)
    assert resp.status_code == 200, resp.text
    embed = {
        "model": "all-minilm",
        "input": ["a", "b"],
        "truncate": True,
        "dimensions": 8,
        "options": {"num_ctx": 512},
        "keep_alive": "1m",
    }
    doc = post(sim, "/api/embed", embed).json()
    assert [len(v) for v in doc["embeddings"]] == [8, 8]
    legacy = {"model": "all-minilm", "prompt": "a", "options": {}, "keep_alive": -1}
    assert len(post(sim, "/api/embeddings", legacy).json()["embedding"]) == 384


STRUCT = {
    "/api/generate": "GenerateRequest",
    "/api/chat": "ChatRequest",
    "/api/embed": "EmbedRequest",
    "/api/embeddings": "EmbeddingRequest",
}
ASSISTANT = {"role": "assistant", "content": ""}


def calls(function: dict[str, Any]) -> dict[str, Any]:
    """``messages`` with one assistant message making one tool call of ``function``."""
    return {"messages": [ASSISTANT | {"tool_calls": [{"function": function}]}]}


@pytest.mark.parametrize(
    ("path", "extra", "kind", "field", "gotype"),
    [
        ("/api/generate", {"suffix": 1}, "number", "suffix", "string"),
        ("/api/generate", {"context": ["a"]}, "string", "context", "int"),
        ("/api/generate", {"images": "abc"}, "string", "images", "[]api.ImageData"),
        ("/api/generate", {"images": [1]}, "number", "images", "api.ImageData"),
        ("/api/generate", {"truncate": "yes"}, "string", "truncate", "bool"),
        ("/api/generate", {"shift": 1}, "number", "shift", "bool"),
        ("/api/generate", {"logprobs": "y"}, "string", "logprobs", "bool"),
        ("/api/generate", {"top_logprobs": 1.5}, "number 1.5", "top_logprobs", "int"),
        ("/api/generate", {"top_logprobs": "3"}, "string", "top_logprobs", "int"),
        ("/api/generate", {"options": []}, "array", "options", "map[string]interface {}"),
        (
            "/api/chat",
            {"messages": [{"role": "user", "content": "x", "images": "a"}]},
            "string",
            "messages.images",
            "[]api.ImageData",
        ),
        (
            "/api/chat",
            {"messages": [{"role": "tool", "content": "x", "tool_call_id": 5}]},
            "number",
            "messages.tool_call_id",
            "string",
        ),
        (
            "/api/chat",
            {"messages": [ASSISTANT | {"tool_calls": {}}]},
            "object",
            "messages.tool_calls",
            "[]api.ToolCall",
        ),
        (
            "/api/chat",
            calls({"index": "0"}),
            "string",
            "messages.tool_calls.function.index",
            "int",
        ),
        (
            "/api/chat",
            calls({"arguments": "{}"}),
            "string",
            "messages.tool_calls.function.arguments",
            "api.ToolCallFunctionArguments",
        ),
        ("/api/chat", {"tools": "x"}, "string", "tools", "api.Tools"),
        (
            "/api/chat",
            {"tools": [{"function": {"name": 5}}]},
            "number",
            "tools.function.name",
            "string",
        ),
        (
            "/api/chat",
            {"tools": [{"function": {"parameters": {"required": "city"}}}]},
            "string",
            "tools.function.parameters.required",
            "[]string",
        ),
        ("/api/embed", {"dimensions": "8"}, "string", "dimensions", "int"),
        ("/api/embed", {"truncate": "no"}, "string", "truncate", "bool"),
        ("/api/embeddings", {"prompt": 5}, "number", "prompt", "string"),
    ],
)
def test_wrong_field_types_get_gos_message(
    sim: FakeOllama, path: str, extra: dict[str, Any], kind: str, field: str, gotype: str
) -> None:
    base: dict[str, Any] = {"model": "qwen2.5:0.5b"}
    base |= {
        "/api/generate": {"prompt": "x"},
        "/api/chat": {"messages": USER_ASKS},
        "/api/embed": {"input": "x"},
        "/api/embeddings": {"prompt": "x"},
    }[path]
    resp = post(sim, path, base | extra)
    where = f"{STRUCT[path]}.{field}"
    message = f"json: cannot unmarshal {kind} into Go struct field {where} of type {gotype}"
    assert (resp.status_code, resp.json()) == (400, {"error": message})


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
@pytest.mark.parametrize("top", [-1, 21, 1000])
def test_top_logprobs_out_of_range_is_400_before_the_model_is_looked_up(
    sim: FakeOllama, path: str, top: int
) -> None:
    body = {"model": "ghost", "prompt": "x", "messages": USER_ASKS, "top_logprobs": top}
    resp = post(sim, path, body)
    assert (resp.status_code, resp.json()) == (
        400,
        {"error": "top_logprobs must be between 0 and 20"},
    )


def test_think_max_is_a_level(sim: FakeOllama) -> None:
    """Ollama accepts "max" beside high, medium and low (api.ThinkValue)."""
    body = {"model": "qwen3:0.6b", "prompt": "x", "think": "max", "stream": False}
    resp = post(sim, "/api/generate", body)
    assert resp.status_code == 200 and resp.json()["thinking"]


CHOICES = '"high", "medium", "low", "max", true, or false'


@pytest.mark.parametrize(
    ("think", "message"),
    [
        ("top", f'invalid think value: "top" (must be {CHOICES})'),
        ("HIGH", f'invalid think value: "HIGH" (must be {CHOICES})'),
        (1, f"think must be a boolean or string ({CHOICES})"),
        ({}, f"think must be a boolean or string ({CHOICES})"),
    ],
)
def test_bad_think_values_are_400(sim: FakeOllama, think: object, message: str) -> None:
    resp = post(sim, "/api/generate", {"model": "qwen3:0.6b", "prompt": "x", "think": think})
    assert (resp.status_code, resp.json()) == (400, {"error": message})


def test_raw_mode_refuses_template_system_and_context(sim: FakeOllama) -> None:
    body = {"model": "qwen2.5:0.5b", "prompt": "x", "raw": True, "stream": False}
    plain = post(sim, "/api/generate", body)
    assert plain.status_code == 200 and "context" not in plain.json()  # raw: no context
    resp = post(sim, "/api/generate", body | {"system": "s"})
    assert (resp.status_code, resp.json()) == (
        400,
        {"error": "raw mode does not support template, system, or context"},
    )


# ----- thinking ------------------------------------------------------------------------


def test_thinking_model_streams_thinking_before_content(sim: FakeOllama) -> None:
    body = {"model": "qwen3:0.6b", "prompt": "Why is the sky blue?"}
    lines = ndjson(post(sim, "/api/generate", body))
    chunks, final = lines[:-1], lines[-1]
    kinds = ["thinking" if c.get("thinking") else "response" for c in chunks]
    first_answer = kinds.index("response")
    assert first_answer > 0 and set(kinds[first_answer:]) == {"response"}
    assert all(c["response"] == "" for c in chunks[:first_answer])
    assert "thinking" not in final and final["eval_count"] == len(chunks)
    whole = post(sim, "/api/generate", body | {"stream": False}).json()
    assert whole["thinking"] == "".join(c.get("thinking", "") for c in chunks)
    assert whole["response"] == "".join(c["response"] for c in chunks)
    assert list(whole)[:5] == ["model", "created_at", "response", "thinking", "done"]


def test_think_false_and_levels(sim: FakeOllama) -> None:
    def answer(think: object, model: str = "qwen3:0.6b") -> dict[str, Any]:
        body = {"model": model, "prompt": "Explain", "stream": False}
        if think is not None:
            body["think"] = think
        resp = post(sim, "/api/generate", body)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    assert "thinking" not in answer(False)
    assert answer(None)["thinking"] == answer(True)["thinking"] == answer("medium")["thinking"]
    assert len(answer("low")["thinking"]) < len(answer("medium")["thinking"])
    assert len(answer("medium")["thinking"]) < len(answer("high")["thinking"])
    assert (
        answer(False)["response"] == answer(True)["response"]
    )  # thinking precedes the same answer
    assert answer(None, "deepseek-r1:1.5b")["thinking"]
    assert "thinking" not in answer(False, "llama3.2:1b")


def test_chat_thinking_goes_in_the_message(sim: FakeOllama) -> None:
    body = {"model": "deepseek-r1:1.5b", "messages": USER_ASKS, "think": "high"}
    chunks = ndjson(post(sim, "/api/chat", body))[:-1]
    thinking = [c for c in chunks if c["message"].get("thinking")]
    assert thinking and chunks.index(thinking[-1]) == len(thinking) - 1
    assert all(c["message"]["content"] == "" for c in thinking)
    whole = post(sim, "/api/chat", body | {"stream": False}).json()
    assert whole["message"]["thinking"] == "".join(c["message"].get("thinking", "") for c in chunks)
    assert list(whole["message"]) == ["role", "content", "thinking"]


@pytest.mark.parametrize("think", [True, "high", "low"])
@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_thinking_on_a_model_that_cannot_is_400(sim: FakeOllama, think: object, path: str) -> None:
    body = {"model": "Llama3.2:1B", "prompt": "x", "messages": USER_ASKS, "think": think}
    resp = post(sim, path, body)
    assert (resp.status_code, resp.json()) == (
        400,
        {"error": '"Llama3.2:1B" does not support thinking'},
    )
    assert post(sim, path, body | {"think": False, "stream": False}).status_code == 200


# ----- tools ---------------------------------------------------------------------------


def test_user_turn_with_tools_gets_a_tool_call(sim: FakeOllama) -> None:
    body = {
        "model": "qwen2.5:0.5b",
        "messages": USER_ASKS,
        "tools": [WEATHER_TOOL],
        "stream": False,
    }
    doc = post(sim, "/api/chat", body).json()
    message = doc["message"]
    assert message["role"] == "assistant" and message["content"] == ""
    (call,) = message["tool_calls"]
    assert set(call) == {"id", "function"} and re.fullmatch(r"call_[a-z0-9]{8}", call["id"])
    function = call["function"]
    assert list(function) == ["index", "name", "arguments"]
    assert function["index"] == 0 and function["name"] == "get_weather"
    args = function["arguments"]
    assert isinstance(args["city"], str) and args["city"]
    assert args["unit"] in ("celsius", "fahrenheit")
    assert set(args) <= {"city", "unit", "days"}
    assert "days" not in args or isinstance(args["days"], int)
    assert doc["done_reason"] == "stop" and doc["eval_count"] > 0
    assert post(sim, "/api/chat", body).json()["message"] == message  # deterministic
    lines = ndjson(post(sim, "/api/chat", body | {"stream": True}))
    with_calls = [c for c in lines if c["message"].get("tool_calls")]
    assert [c["message"]["tool_calls"] for c in with_calls] == [[call]]
    assert all(c["message"]["content"] == "" for c in lines)
    assert lines[-1]["done"] is True and "tool_calls" not in lines[-1]["message"]


def test_tool_result_turn_gets_text(sim: FakeOllama) -> None:
    ask = {"model": "qwen3:0.6b", "messages": USER_ASKS, "tools": [WEATHER_TOOL], "stream": False}
    first = post(sim, "/api/chat", ask).json()
    assert first["message"]["thinking"] and first["message"]["tool_calls"]
    follow_up = [
        *USER_ASKS,
        {"role": "assistant", "content": "", "tool_calls": first["message"]["tool_calls"]},
        {"role": "tool", "content": "22C", "tool_name": "get_weather"},
    ]
    body = {"model": "qwen3:0.6b", "messages": follow_up, "tools": [WEATHER_TOOL], "stream": False}
    resp = post(sim, "/api/chat", body)
    assert resp.status_code == 200, resp.text
    message = resp.json()["message"]
    assert message["content"] and "tool_calls" not in message


@pytest.mark.parametrize("model", ["gemma:2b", "deepseek-r1:1.5b"])
def test_tools_on_a_model_without_the_capability_is_400(sim: FakeOllama, model: str) -> None:
    body = {"model": model, "messages": USER_ASKS, "tools": [WEATHER_TOOL]}
    resp = post(sim, "/api/chat", body)
    assert (resp.status_code, resp.json()) == (400, {"error": f'"{model}" does not support tools'})


# ----- logprobs ------------------------------------------------------------------------


def test_logprobs_in_every_chunk_and_the_whole_answer(sim: FakeOllama) -> None:
    body = {"model": "qwen2.5:0.5b", "prompt": "Say something", "logprobs": True, "top_logprobs": 3}
    lines = ndjson(post(sim, "/api/generate", body))
    chunks, final = lines[:-1], lines[-1]
    assert "logprobs" not in final
    for c in chunks:
        (lp,) = c["logprobs"]
        assert list(lp) == ["token", "logprob", "bytes", "top_logprobs"]
        assert lp["token"] == c["response"] and lp["bytes"] == list(c["response"].encode())
        assert lp["logprob"] <= 0
        top = lp["top_logprobs"]
        assert len(top) == 3 and top[0] == {k: lp[k] for k in ("token", "logprob", "bytes")}
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
    whole = post(sim, "/api/generate", body | {"stream": False}).json()
    assert [lp["token"] for lp in whole["logprobs"]] == [c["response"] for c in chunks]
    assert whole["logprobs"] == [c["logprobs"][0] for c in chunks]  # deterministic
    assert len(whole["logprobs"]) == whole["eval_count"]
    plain = post(sim, "/api/generate", body | {"stream": False, "top_logprobs": 0}).json()
    assert "top_logprobs" not in plain["logprobs"][0]
    off = post(sim, "/api/generate", {"model": "qwen2.5:0.5b", "prompt": "x", "stream": False})
    assert "logprobs" not in off.json()


def test_chat_logprobs_cover_thinking_and_tool_tokens(sim: FakeOllama) -> None:
    body = {"model": "qwen3:0.6b", "messages": USER_ASKS, "tools": [WEATHER_TOOL], "logprobs": True}
    whole = post(sim, "/api/chat", body | {"stream": False}).json()
    assert len(whole["logprobs"]) == whole["eval_count"]
    assert list(whole)[:6] == ["model", "created_at", "message", "done", "done_reason", "logprobs"]
    chunks = ndjson(post(sim, "/api/chat", body))[:-1]
    assert sum(len(c["logprobs"]) for c in chunks) == whole["eval_count"]
