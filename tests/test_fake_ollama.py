"""The Ollama simulator's HTTP API against OLLAMA_FACTS.md §1: shapes, texts, status codes.

Scheduler, residency and GPU behaviour: ``test_fake_ollama_scheduler.py``; fault injection
and the ``/_sim/`` controls: ``test_fake_ollama_faults.py``.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from modelmanager.simulator import (
    CATALOG,
    VERSION,
    FakeOllama,
    canonical_name,
    parse_go_duration,
    parse_keep_alive,
)
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0
CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
SEED_MODELS = [
    "smollm:360m",
    "all-minilm:latest",
    "nomic-embed-text:latest",
    "qwen2.5:0.5b",
    "tinyllama:1.1b",
    "smollm:1.7b",
    "llama3.2:1b",
    "gemma:2b",
    "qwen2.5:1.5b",
    "phi3:mini",
]
METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


@pytest.fixture
def sim(make_sim: Callable[..., FakeOllama]) -> FakeOllama:
    """A bare simulator: no fake-NVML state file, the default GPU."""
    return make_sim()


def post(sim: FakeOllama, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("timeout", TIMEOUT)
    if isinstance(body, bytes):
        return requests.post(sim.url + path, data=body, **kwargs)
    return requests.post(sim.url + path, json=body, **kwargs)


def ndjson(resp: requests.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


def assert_metrics(obj: dict[str, Any]) -> None:
    for key in METRICS:
        assert isinstance(obj[key], int) and obj[key] > 0, key


# ----- conventions ---------------------------------------------------------------------


def test_root_answers_ollama_is_running(sim: FakeOllama) -> None:
    resp = requests.get(sim.url + "/", timeout=TIMEOUT)
    assert (resp.status_code, resp.text) == (200, "Ollama is running")
    head = requests.head(sim.url + "/", timeout=TIMEOUT)
    assert head.status_code == 200 and head.text == ""
    assert requests.get(sim.url + "/api/version", timeout=TIMEOUT).json() == {"version": VERSION}


def test_unknown_path_and_wrong_method_are_plain_404(sim: FakeOllama) -> None:
    for resp in (
        requests.get(sim.url + "/api/nothing", timeout=TIMEOUT),
        requests.get(sim.url + "/api/generate", timeout=TIMEOUT),
        requests.put(sim.url + "/api/tags", timeout=TIMEOUT),
    ):
        assert resp.status_code == 404
        assert resp.text == "404 page not found"
        assert resp.headers["Content-Type"].startswith("text/plain")


# ----- generate ------------------------------------------------------------------------


def test_generate_non_streaming_shape(sim: FakeOllama) -> None:
    resp = post(sim, "/api/generate", {"model": "llama3.2:1b", "prompt": "Why?", "stream": False})
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    doc = resp.json()
    assert list(doc)[:4] == ["model", "created_at", "response", "done"]
    assert doc["model"] == "llama3.2:1b"
    assert CREATED_AT.match(doc["created_at"])
    assert doc["done"] is True and doc["done_reason"] == "stop"
    assert isinstance(doc["response"], str) and len(doc["response"].split()) >= 16
    assert_metrics(doc)
    assert doc["eval_count"] >= 16
    assert len(doc["context"]) == doc["prompt_eval_count"] + doc["eval_count"]


def test_generate_streams_ndjson_by_default(sim: FakeOllama) -> None:
    body = {"model": "llama3.2:1b", "prompt": "Tell me a story"}
    resp = post(sim, "/api/generate", body)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    lines = ndjson(resp)
    chunks, final = lines[:-1], lines[-1]
    assert all(
        c["done"] is False and set(c) == {"model", "created_at", "response", "done"} for c in chunks
    )
    assert final["done"] is True and final["response"] == "" and final["done_reason"] == "stop"
    assert_metrics(final)
    assert final["eval_count"] == len(chunks)
    whole = post(sim, "/api/generate", {**body, "stream": False}).json()
    assert "".join(c["response"] for c in chunks) == whole["response"]


def test_generate_output_is_deterministic_and_seed_varies_it(sim: FakeOllama) -> None:
    def text(prompt: str, **options: Any) -> str:
        body = {"model": "qwen2.5:0.5b", "prompt": prompt, "stream": False, "options": options}
        return str(post(sim, "/api/generate", body).json()["response"])

    assert text("same prompt") == text("same prompt")
    assert text("same prompt") != text("other prompt")
    assert text("same prompt", seed=1) != text("same prompt", seed=2)
    assert text("same prompt", seed=1) == text("same prompt", seed=1)


def test_generate_num_predict_caps_tokens_with_length_reason(sim: FakeOllama) -> None:
    body = {"model": "qwen2.5:0.5b", "prompt": "x", "stream": False, "options": {"num_predict": 3}}
    doc = post(sim, "/api/generate", body).json()
    assert doc["eval_count"] == 3 and doc["done_reason"] == "length"


def test_generate_json_format_yields_json_text(sim: FakeOllama) -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    for fmt in ("json", schema):
        body = {"model": "qwen2.5:0.5b", "prompt": "x", "stream": False, "format": fmt}
        doc = json.loads(post(sim, "/api/generate", body).json()["response"])
        assert isinstance(doc, dict)
    assert set(doc) == {"age"} and isinstance(doc["age"], int)


def test_empty_prompt_loads_with_one_object_even_when_streaming(sim: FakeOllama) -> None:
    resp = post(sim, "/api/generate", {"model": "Llama3.2:1B"})
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    doc = resp.json()
    assert set(doc) == {"model", "created_at", "response", "done", "done_reason"}
    assert (doc["model"], doc["response"], doc["done"], doc["done_reason"]) == (
        "Llama3.2:1B",
        "",
        True,
        "load",
    )
    assert sim.loaded_models() == ["llama3.2:1b"]


# ----- chat ----------------------------------------------------------------------------


def test_chat_shapes_stream_and_non_stream(sim: FakeOllama) -> None:
    body = {"model": "qwen2.5:1.5b", "messages": [{"role": "user", "content": "Hi there"}]}
    lines = ndjson(post(sim, "/api/chat", body))
    chunks, final = lines[:-1], lines[-1]
    assert chunks and all(
        c["message"]["role"] == "assistant" and c["done"] is False for c in chunks
    )
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["done"] is True and final["done_reason"] == "stop" and "context" not in final
    assert_metrics(final)
    whole = post(sim, "/api/chat", {**body, "stream": False}).json()
    assert whole["message"]["content"] == "".join(c["message"]["content"] for c in chunks)
    assert "context" not in whole


def test_chat_empty_messages_load_and_unload(sim: FakeOllama) -> None:
    loaded = post(sim, "/api/chat", {"model": "qwen2.5:1.5b", "messages": []}).json()
    assert loaded["message"] == {"role": "assistant", "content": ""}
    assert loaded["done_reason"] == "load"
    body = {"model": "qwen2.5:1.5b", "messages": [], "keep_alive": 0}
    unloaded = post(sim, "/api/chat", body).json()
    assert unloaded["done_reason"] == "unload"


# ----- embeddings ----------------------------------------------------------------------


def test_embed_returns_normalised_deterministic_vectors(sim: FakeOllama) -> None:
    body = {"model": "nomic-embed-text", "input": ["first text", "second text"]}
    doc = post(sim, "/api/embed", body).json()
    assert set(doc) == {
        "model",
        "embeddings",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
    }
    assert doc["model"] == "nomic-embed-text"
    vectors = doc["embeddings"]
    assert len(vectors) == 2 and all(len(v) == 768 for v in vectors)
    for vector in vectors:
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, abs_tol=1e-5)
    assert vectors[0] != vectors[1]
    single = post(sim, "/api/embed", {"model": "nomic-embed-text", "input": "first text"}).json()
    assert single["embeddings"] == [vectors[0]]
    minilm = post(sim, "/api/embed", {"model": "all-minilm", "input": "x"}).json()
    assert len(minilm["embeddings"][0]) == 384


def test_embeddings_legacy_is_one_raw_vector(sim: FakeOllama) -> None:
    raw = post(sim, "/api/embeddings", {"model": "nomic-embed-text", "prompt": "hello"}).json()
    assert set(raw) == {"embedding"}
    norm = math.sqrt(sum(x * x for x in raw["embedding"]))
    assert norm > 2.0  # not normalised
    unit = post(sim, "/api/embed", {"model": "nomic-embed-text", "input": "hello"}).json()
    cosine = sum(a * b for a, b in zip(raw["embedding"], unit["embeddings"][0], strict=True))
    assert math.isclose(cosine / norm, 1.0, abs_tol=1e-5)


def test_embed_empty_input_loads_model(sim: FakeOllama) -> None:
    doc = post(sim, "/api/embed", {"model": "all-minilm", "input": []}).json()
    assert doc == {"model": "all-minilm", "embeddings": []}
    assert post(sim, "/api/embeddings", {"model": "all-minilm", "prompt": ""}).json() == {
        "embedding": []
    }
    assert sim.loaded_models() == ["all-minilm:latest"]


def test_embed_input_errors(sim: FakeOllama) -> None:
    bad = post(sim, "/api/embed", {"model": "all-minilm", "input": [1, 2]})
    assert (bad.status_code, bad.json()) == (400, {"error": "invalid input type"})
    long_text = "word " * 600  # all-minilm has a 512-token context
    body = {"model": "all-minilm", "input": long_text, "truncate": False}
    too_long = post(sim, "/api/embed", body)
    assert too_long.status_code == 400
    assert too_long.json() == {"error": "the input length exceeds the context length"}
    truncated = post(sim, "/api/embed", {"model": "all-minilm", "input": long_text}).json()
    assert truncated["prompt_eval_count"] == 512


def test_embed_accepts_a_completion_model(sim: FakeOllama) -> None:
    doc = post(sim, "/api/embed", {"model": "llama3.2:1b", "input": "x"}).json()
    assert len(doc["embeddings"][0]) == CATALOG["llama3.2:1b"].embedding_length


# ----- listing endpoints ---------------------------------------------------------------


def test_ps_shape_uses_canonical_names(sim: FakeOllama) -> None:
    assert requests.get(sim.url + "/api/ps", timeout=TIMEOUT).json() == {"models": []}
    post(sim, "/api/generate", {"model": "LLAMA3.2:1b", "keep_alive": "1h"})
    (entry,) = requests.get(sim.url + "/api/ps", timeout=TIMEOUT).json()["models"]
    spec = CATALOG["llama3.2:1b"]
    assert list(entry) == [
        "name",
        "model",
        "size",
        "digest",
        "details",
        "expires_at",
        "size_vram",
        "context_length",
    ]
    assert entry["name"] == entry["model"] == "llama3.2:1b"
    assert entry["size"] == entry["size_vram"] == spec.vram_bytes == 1_514_584_145
    assert entry["digest"] == spec.digest and len(spec.digest) == 64
    assert entry["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "1.2B",
        "quantization_level": "Q8_0",
    }
    assert entry["context_length"] == 4096
    assert CREATED_AT.match(entry["expires_at"])


def test_tags_lists_installed_models_only(sim: FakeOllama) -> None:
    models = requests.get(sim.url + "/api/tags", timeout=TIMEOUT).json()["models"]
    names = [m["name"] for m in models]
    assert set(SEED_MODELS) <= set(names)
    assert {"llama3.1:8b", "qwen2.5:7b", "llava:7b", "llama3.1:70b"} <= set(names)
    assert not {n for n, s in CATALOG.items() if not s.installed} & set(names)
    by_name = {m["name"]: m for m in models}
    llama = by_name["llama3.2:1b"]
    assert set(llama) == {"name", "model", "modified_at", "size", "digest", "details"}
    assert llama["size"] == 1_321_098_329
    assert by_name["nomic-embed-text:latest"]["size"] == 274_302_450
    stamps = [datetime.fromisoformat(m["modified_at"]) for m in models]
    assert stamps == sorted(stamps, reverse=True)


def test_show_reports_details_capabilities_and_model_info(sim: FakeOllama) -> None:
    doc = post(sim, "/api/show", {"model": "llama3.2:1b"}).json()
    assert {
        "modelfile",
        "parameters",
        "template",
        "details",
        "model_info",
        "capabilities",
        "modified_at",
    } <= set(doc)
    assert doc["capabilities"] == ["completion", "tools"]
    info = doc["model_info"]
    assert info["general.architecture"] == "llama"
    assert info["llama.context_length"] == 131072
    assert info["llama.block_count"] == 16 and info["llama.attention.head_count_kv"] == 8
    embed = post(sim, "/api/show", {"name": "nomic-embed-text"}).json()
    assert embed["capabilities"] == ["embedding"]
    assert embed["model_info"]["nomic-bert.embedding_length"] == 768
    vision = post(sim, "/api/show", {"model": "llava:7b"}).json()
    assert "vision" in vision["capabilities"]


# ----- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/api/generate",
            {"model": "No/Such:Thing", "prompt": "x"},
            "model 'No/Such:Thing' not found",
        ),
        (
            "/api/chat",
            {"model": "nosuch", "messages": [{"role": "user", "content": "x"}]},
            "model 'nosuch' not found",
        ),
        ("/api/show", {"model": "nosuch"}, "model 'nosuch' not found"),
        (
            "/api/embed",
            {"model": "nosuch", "input": "x"},
            'model "nosuch" not found, try pulling it first',
        ),
        (
            "/api/embeddings",
            {"model": "nosuch", "prompt": "x"},
            'model "nosuch" not found, try pulling it first',
        ),
        ("/api/generate", {"model": "", "prompt": "x"}, "model '' not found"),
        ("/api/embed", {"model": "", "input": "x"}, 'model "" not found, try pulling it first'),
        (
            "/api/generate",
            {"model": "qwen2.5:3b", "prompt": "x"},
            "model 'qwen2.5:3b' not found",
        ),  # in the registry, not installed
    ],
)
def test_unknown_model_is_404_with_ollamas_text(
    sim: FakeOllama, path: str, body: dict[str, Any], message: str
) -> None:
    resp = post(sim, path, body)
    assert resp.status_code == 404
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert resp.json() == {"error": message}


def test_delete_unknown_model_is_404(sim: FakeOllama) -> None:
    resp = requests.delete(sim.url + "/api/delete", json={"model": "ghost"}, timeout=TIMEOUT)
    assert (resp.status_code, resp.json()) == (404, {"error": "model 'ghost' not found"})


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/api/generate",
            {"model": "nomic-embed-text", "prompt": "x"},
            '"nomic-embed-text" does not support generate',
        ),
        (
            "/api/chat",
            {"model": "all-minilm", "messages": [{"role": "user", "content": "x"}]},
            '"all-minilm" does not support chat',
        ),
        (
            "/api/generate",
            {"model": "phi3:mini", "prompt": "x", "think": True},
            '"phi3:mini" does not support thinking',
        ),
        (
            "/api/chat",
            {"model": "gemma:2b", "messages": [], "tools": [{"type": "function"}]},
            '"gemma:2b" does not support tools',
        ),
        ("/api/chat", {"model": "x", "messages": []}, None),
        ("/api/chat", {"messages": []}, "model is required"),
        ("/api/embeddings", {"prompt": "x"}, "model is required"),
        ("/api/generate", {"model": "bad name!", "prompt": "x"}, "invalid model name"),
    ],
)
def test_bad_requests_are_400(
    sim: FakeOllama, path: str, body: dict[str, Any], message: str | None
) -> None:
    resp = post(sim, path, body)
    if message is None:  # a control case: a plain unknown model is a 404, not a 400
        assert resp.status_code == 404
        return
    assert (resp.status_code, resp.json()) == (400, {"error": message})


@pytest.mark.parametrize(
    "path",
    ["/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/show", "/api/pull"],
)
def test_empty_body_is_missing_request_body(sim: FakeOllama, path: str) -> None:
    resp = post(sim, path, b"")
    assert (resp.status_code, resp.json()) == (400, {"error": "missing request body"})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"model": }', "invalid character '}' looking for beginning of value"),
        (b"{bad", "invalid character 'b' looking for beginning of object key string"),
        (b'{"model" "x"}', "invalid character '\"' after object key"),
        (b'{"model": "x" "prompt": "y"}', "invalid character '\"' after object key:value pair"),
        (b'{"model": "x"', "unexpected EOF"),
        (b"[1, 2]", "json: cannot unmarshal array into Go value of type api.GenerateRequest"),
        (
            b'{"model": 5}',
            "json: cannot unmarshal number into Go struct field GenerateRequest.model"
            " of type string",
        ),
        (
            b'{"model": "x", "stream": "yes"}',
            "json: cannot unmarshal string into Go struct field GenerateRequest.stream"
            " of type bool",
        ),
    ],
)
def test_malformed_json_gets_gos_decoder_message(sim: FakeOllama, raw: bytes, message: str) -> None:
    resp = post(sim, "/api/generate", raw)
    assert (resp.status_code, resp.json()) == (400, {"error": message})


@pytest.mark.parametrize(
    ("keep_alive", "message"),
    [
        ("300", 'time: missing unit in duration "300"'),
        ("5x", 'time: unknown unit "x" in duration "5x"'),
        ("", 'time: invalid duration ""'),
        (True, "Unsupported type: 'bool'"),
        ({"a": 1}, "Unsupported type: 'map[string]interface {}'"),
    ],
)
def test_bad_keep_alive_is_400(sim: FakeOllama, keep_alive: object, message: str) -> None:
    body = {"model": "llama3.2:1b", "prompt": "x", "keep_alive": keep_alive}
    resp = post(sim, "/api/generate", body)
    assert (resp.status_code, resp.json()) == (400, {"error": message})


def test_option_with_wrong_type_is_500(sim: FakeOllama) -> None:
    body = {"model": "llama3.2:1b", "prompt": "x", "options": {"num_ctx": "big"}}
    resp = post(sim, "/api/generate", body)
    assert resp.status_code == 500
    assert resp.json() == {"error": 'option "num_ctx" must be of type integer'}


def test_unknown_fields_and_options_are_ignored(sim: FakeOllama) -> None:
    body = {
        "model": "llama3.2:1b",
        "prompt": "x",
        "stream": False,
        "bogus": 1,
        "options": {"no_such_option": 3},
    }
    assert post(sim, "/api/generate", body).status_code == 200


# ----- pull and delete -----------------------------------------------------------------


def test_pull_streams_progress_in_order_and_installs(sim: FakeOllama) -> None:
    assert post(sim, "/api/show", {"model": "qwen2.5:3b"}).status_code == 404
    resp = post(sim, "/api/pull", {"model": "qwen2.5:3b"})
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/x-ndjson"
    lines = ndjson(resp)
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = lines[1:-3]
    assert all(re.fullmatch(r"pulling [0-9a-f]{12}", line["status"]) for line in layers)
    seen: dict[str, list[dict[str, Any]]] = {}
    for line in layers:
        assert line["status"] == "pulling " + line["digest"][7:19]
        seen.setdefault(line["digest"], []).append(line)
    assert len(seen) == 5
    for progress in seen.values():
        assert "completed" not in progress[0]  # omitted while 0
        assert progress[-1]["completed"] == progress[-1]["total"]
    assert sum(p[-1]["total"] for p in seen.values()) == CATALOG["qwen2.5:3b"].disk_bytes
    tags = requests.get(sim.url + "/api/tags", timeout=TIMEOUT).json()["models"]
    assert tags[0]["name"] == "qwen2.5:3b"  # newest first
    body = {"model": "qwen2.5:3b", "prompt": "x", "stream": False}
    assert post(sim, "/api/generate", body).status_code == 200


def test_pull_of_installed_model_and_non_streaming(sim: FakeOllama) -> None:
    lines = ndjson(post(sim, "/api/pull", {"model": "llama3.2:1b"}))
    layers = [line for line in lines if "digest" in line]
    assert len(layers) == 5 and all(line["completed"] == line["total"] for line in layers)
    resp = post(sim, "/api/pull", {"model": "gemma2:2b", "stream": False})
    assert (resp.status_code, resp.json()) == (200, {"status": "success"})


def test_pull_unknown_model(sim: FakeOllama) -> None:
    resp = post(sim, "/api/pull", {"model": "no-such-model"})
    assert resp.status_code == 200
    assert ndjson(resp) == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]
    resp = post(sim, "/api/pull", {"model": "no-such-model", "stream": False})
    assert resp.status_code == 500
    assert resp.json() == {"error": "pull model manifest: file does not exist"}


def test_delete_removes_model_but_not_its_runner(sim: FakeOllama) -> None:
    post(sim, "/api/generate", {"model": "tinyllama:1.1b"})
    resp = requests.delete(
        sim.url + "/api/delete", json={"model": "tinyllama:1.1b"}, timeout=TIMEOUT
    )
    assert (resp.status_code, resp.content) == (200, b"")
    names = [
        m["name"] for m in requests.get(sim.url + "/api/tags", timeout=TIMEOUT).json()["models"]
    ]
    assert "tinyllama:1.1b" not in names
    assert sim.loaded_models() == ["tinyllama:1.1b"]  # DELETE does not unload
    gen = post(sim, "/api/generate", {"model": "tinyllama:1.1b", "prompt": "x"})
    assert (gen.status_code, gen.json()) == (404, {"error": "model 'tinyllama:1.1b' not found"})
    again = requests.delete(
        sim.url + "/api/delete", json={"model": "tinyllama:1.1b"}, timeout=TIMEOUT
    )
    assert again.status_code == 404


def test_deleting_in_one_simulator_leaves_others_and_catalog_alone(
    make_sim: Callable[..., FakeOllama],
) -> None:
    first, second = make_sim(), make_sim()
    requests.delete(first.url + "/api/delete", json={"model": "gemma:2b"}, timeout=TIMEOUT)
    assert post(second, "/api/show", {"model": "gemma:2b"}).status_code == 200
    assert CATALOG["gemma:2b"].installed


# ----- parsing helpers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (300, 300.0),
        (1.5, 1.5),
        (0, 0.0),
        (-1, math.inf),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("0s", 0.0),
        ("0", 0.0),
        ("300ms", 0.3),
        ("-1m", math.inf),
        ("1.5s", 1.5),
        (None, None),
    ],
)
def test_parse_keep_alive(value: object, seconds: float | None) -> None:
    result = parse_keep_alive(value)
    if seconds is None or math.isinf(seconds):
        assert result == seconds
    else:
        assert result is not None and math.isclose(result, seconds)


def test_parse_go_duration_errors() -> None:
    with pytest.raises(ValueError, match=r'^time: missing unit in duration "300"$'):
        parse_go_duration("300")
    with pytest.raises(ValueError, match=r"^time: invalid duration"):
        parse_go_duration(".")


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("LLAMA3.2:1B", "llama3.2:1b"),
        ("library/phi3:mini", "phi3:mini"),
        ("registry.ollama.ai/library/phi3:mini", "phi3:mini"),
        ("me/model", "me/model:latest"),
        ("bad name", None),
        ("", None),
    ],
)
def test_canonical_name(name: str, canonical: str | None) -> None:
    assert canonical_name(name) == canonical


# ----- the program ---------------------------------------------------------------------


def test_runs_as_a_program_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "gpu.state"
    cmd = [
        sys.executable,
        str(ROOT / "tools" / "fake_ollama.py"),
        "--port",
        str(port),
        "--time-scale",
        "0.02",
        "--vram-mb",
        "8192",
        "--nvml-state",
        str(state),
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == f"fake ollama listening on http://127.0.0.1:{port}"
            base = f"http://127.0.0.1:{port}"
            assert requests.get(base + "/api/ps", timeout=TIMEOUT).json() == {"models": []}
            assert "gpu0.total_mb=8192" in state.read_text()
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            assert time.monotonic() - started < 5
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_program_rejects_bad_arguments() -> None:
    cmd = [
        sys.executable,
        str(ROOT / "tools" / "fake_ollama.py"),
        "--port",
        "0",
        "--keep-alive",
        "5 minutes",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "time: unknown unit" in done.stderr
