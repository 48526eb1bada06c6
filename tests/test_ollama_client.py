"""OllamaClient against ``responses``: exact request bodies, timeouts and error mapping.

Error texts are Ollama's own (see ../shared/OLLAMA_FACTS.md §1.7). A few tests use a
scripted transport adapter instead of ``responses`` to break a body half-way through.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
import responses
from requests.adapters import BaseAdapter
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from modelmanager.abortable import Call
from modelmanager.errors import (
    BackendTimeout,
    BackendUnavailable,
    EndpointNotAvailable,
    LoadTimeout,
    ModelNotFound,
    OllamaBadRequest,
    OllamaError,
    OutOfMemory,
    RequestAborted,
    RunnerCrashed,
    ServerBusy,
    StreamError,
)
from modelmanager.models import LoadedModel
from modelmanager.ollama_client import (
    InferenceResult,
    OllamaClient,
    classify_failure,
    normalize_name,
)
from tests.conftest import free_port

BASE = "http://ollama.test:11434"
GENERATE = f"{BASE}/api/generate"
CHAT = f"{BASE}/api/chat"
EMBED = f"{BASE}/api/embed"
NDJSON = "application/x-ndjson"
MODEL = "llama3.2:latest"

# The final object of a non-streamed generate (docs example, trimmed).
GENERATE_DONE = {
    "model": "llama3.2:latest",
    "created_at": "2023-08-04T19:22:45.499127Z",
    "response": "The sky is blue.",
    "done": True,
    "done_reason": "stop",
    "context": [1, 2, 3],
    "total_duration": 10706818083,
    "load_duration": 6338219291,
    "prompt_eval_count": 26,
    "prompt_eval_duration": 130079000,
    "eval_count": 259,
    "eval_duration": 4232710000,
}
LOAD_DONE = {
    "model": "llama3.2:latest",
    "created_at": "2023-08-04T19:22:45.499127Z",
    "response": "",
    "done": True,
    "done_reason": "load",
}


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


@pytest.fixture
def client() -> Iterator[OllamaClient]:
    c = OllamaClient(BASE, timeout=111.0, load_timeout=999.0, connect_timeout=3.0, info_timeout=7.0)
    yield c
    c.close()


def sent(mock: responses.RequestsMock, index: int = -1) -> Any:
    """The JSON body of a recorded request."""
    body = mock.calls[index].request.body
    assert body is not None
    return json.loads(body)


def timeout_of(mock: responses.RequestsMock, index: int = -1) -> Any:
    """The ``timeout`` argument the transport got (``responses`` records it)."""
    return mock.calls[index].request.req_kwargs["timeout"]  # type: ignore[attr-defined]


def ndjson(*objects: dict[str, Any]) -> str:
    return "".join(json.dumps(obj) + "\n" for obj in objects)


# ------------------------------------------------------------------------------ names


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("llama3.2:1b", "llama3.2:1b"),
        ("library/llama3.2", "library/llama3.2:latest"),
        ("registry.example:5000/ns/model", "registry.example:5000/ns/model:latest"),
        ("registry.example:5000/ns/model:q4", "registry.example:5000/ns/model:q4"),
        ("", ""),
    ],
)
def test_normalize_name_adds_latest_only_when_untagged(given: str, expected: str) -> None:
    assert normalize_name(given) == expected


# -------------------------------------------------------------------- request bodies


def test_generate_sends_every_field_as_given_streamed_with_numeric_keep_alive(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(responses.POST, GENERATE, json=GENERATE_DONE)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    client.generate(
        "llama3.2",
        "Why is the sky blue?",
        keep_alive=300,
        system="Be brief.",
        images=["aGVsbG8="],
        format=schema,
        options={"temperature": 0.2, "seed": 7},
    )
    assert sent(mock) == {
        "model": "llama3.2",
        "prompt": "Why is the sky blue?",
        "stream": True,
        "system": "Be brief.",
        "images": ["aGVsbG8="],
        "format": schema,
        "keep_alive": 300,
        "options": {"temperature": 0.2, "seed": 7},
    }
    assert mock.calls[-1].request.headers["Content-Type"] == "application/json"


def test_generate_leaves_out_unset_fields(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(responses.POST, GENERATE, json=GENERATE_DONE)
    client.generate("llama3.2:1b", "hi", keep_alive=60, format="json")
    assert sent(mock) == {
        "model": "llama3.2:1b",
        "prompt": "hi",
        "stream": True,
        "format": "json",
        "keep_alive": 60,
    }


@pytest.mark.parametrize(
    ("keep_alive", "expected"),
    [(300, 300), (300.0, 300), (2.5, 2.5), (-1, -1), (-1.0, -1), (0, 0)],
)
def test_keep_alive_is_sent_as_a_json_number_of_seconds(
    mock: responses.RequestsMock, client: OllamaClient, keep_alive: float, expected: float
) -> None:
    mock.add(responses.POST, GENERATE, json=GENERATE_DONE)
    client.generate("llama3.2", "hi", keep_alive=keep_alive)
    value = sent(mock)["keep_alive"]
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("keep_alive", "error"),
    [
        ("300", TypeError),
        ("5m", TypeError),
        (True, TypeError),
        (None, TypeError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
    ],
)
def test_keep_alive_that_is_not_a_finite_number_is_refused_before_sending(
    mock: responses.RequestsMock, client: OllamaClient, keep_alive: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="keep_alive"):
        client.generate("llama3.2", "hi", keep_alive=keep_alive)
    assert len(mock.calls) == 0


def test_chat_sends_messages_format_and_options(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(
        responses.POST,
        CHAT,
        json={
            "model": "llama3.2",
            "message": {"role": "assistant", "content": "Hello!"},
            "done": True,
            "done_reason": "stop",
            "eval_count": 3,
        },
    )
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    result = client.chat(
        "llama3.2", messages, keep_alive=-1, format="json", options={"num_predict": 16}
    )
    assert sent(mock) == {
        "model": "llama3.2",
        "messages": messages,
        "stream": True,
        "format": "json",
        "keep_alive": -1,
        "options": {"num_predict": 16},
    }
    assert result.text == "Hello!"
    assert result.model == "llama3.2"  # Ollama echoes the name as it was sent
    assert result.eval_count == 3
    assert result.embeddings is None


@pytest.mark.parametrize("given", ["one text", ["a", "b"]])
def test_embed_sends_input_as_given_and_returns_vectors(
    mock: responses.RequestsMock, client: OllamaClient, given: str | list[str]
) -> None:
    vectors = [[0.1, -0.2, 0.3], [0.0, 1.0, 0.0]]
    mock.add(
        responses.POST,
        EMBED,
        json={
            "model": "nomic-embed-text",
            "embeddings": vectors,
            "total_duration": 14143917,
            "load_duration": 1019500,
            "prompt_eval_count": 8,
        },
    )
    result = client.embed("nomic-embed-text", given, keep_alive=120)
    assert sent(mock) == {"model": "nomic-embed-text", "input": given, "keep_alive": 120}
    assert result.embeddings == vectors
    assert result.text == ""
    assert (result.total_duration_ns, result.load_duration_ns) == (14143917, 1019500)
    assert result.prompt_eval_count == 8


def test_load_sends_an_empty_prompt_with_the_long_timeout(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(responses.POST, GENERATE, json=LOAD_DONE)
    result = client.load("llama3.2", keep_alive=600, options={"num_ctx": 4096})
    assert sent(mock) == {
        "model": "llama3.2",
        "prompt": "",
        "stream": False,
        "keep_alive": 600,
        "options": {"num_ctx": 4096},
    }
    assert timeout_of(mock) == (3.0, 999.0)
    assert result.done_reason == "load"
    assert result.text == ""


def test_load_of_an_embedding_model_sends_an_empty_input_to_embed(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(responses.POST, EMBED, json={"model": "nomic-embed-text:latest", "embeddings": []})
    result = client.load("nomic-embed-text", keep_alive=-1, kind="embed")
    assert sent(mock) == {
        "model": "nomic-embed-text",
        "input": [],
        "stream": False,
        "keep_alive": -1,
    }
    assert timeout_of(mock) == (3.0, 999.0)
    assert result.embeddings == []


def test_load_refuses_keep_alive_zero_and_unknown_kinds(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    with pytest.raises(ValueError, match="unload"):
        client.load("llama3.2", keep_alive=0)
    with pytest.raises(ValueError, match="kind"):
        client.load("llama3.2", keep_alive=60, kind="chat")  # type: ignore[arg-type]
    assert len(mock.calls) == 0


def test_unload_sends_an_empty_prompt_with_keep_alive_zero(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(responses.POST, GENERATE, json={**LOAD_DONE, "done_reason": "unload"})
    client.unload("llama3.2")
    assert sent(mock) == {"model": "llama3.2", "prompt": "", "keep_alive": 0, "stream": False}


def test_show_sends_the_name_as_given(mock: responses.RequestsMock, client: OllamaClient) -> None:
    info = {"details": {"family": "llama"}, "capabilities": ["completion"], "model_info": {}}
    mock.add(responses.POST, f"{BASE}/api/show", json=info)
    assert client.show("Llama3.2") == info
    assert sent(mock) == {"model": "Llama3.2"}


def test_delete_sends_a_delete_with_the_name(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(responses.DELETE, f"{BASE}/api/delete", body="")
    client.delete("llama3.2")
    assert mock.calls[-1].request.method == "DELETE"
    assert sent(mock) == {"model": "llama3.2"}


def test_information_calls_are_gets_without_a_body(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(responses.GET, f"{BASE}/api/version", json={"version": "0.12.3"})
    mock.add(responses.GET, f"{BASE}/api/tags", json={"models": [{"name": "llama3.2:latest"}]})
    assert client.version() == "0.12.3"
    assert client.tags() == [{"name": "llama3.2:latest"}]
    assert [call.request.body for call in mock.calls] == [None, None]


def test_trailing_slash_in_base_url_is_ignored(mock: responses.RequestsMock) -> None:
    mock.add(responses.GET, f"{BASE}/api/version", json={"version": "0.9.6"})
    with OllamaClient(BASE + "/") as c:
        assert c.version() == "0.9.6"
    assert mock.calls[-1].request.url == f"{BASE}/api/version"


@pytest.mark.parametrize("url", ["localhost:11434", "ftp://host", "http://"])
def test_bad_base_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="base URL"):
        OllamaClient(url)


def test_non_positive_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="load_timeout"):
        OllamaClient(BASE, load_timeout=0)


def test_options_that_are_not_json_fail_as_a_bad_request_without_sending(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    with pytest.raises(OllamaBadRequest) as info:
        client.generate("llama3.2", "hi", keep_alive=1, options={"temperature": float("nan")})
    assert info.value.status is None
    assert info.value.model == "llama3.2"  # as the caller spelled it
    assert len(mock.calls) == 0


# ---------------------------------------------------------------------------- timeouts


@pytest.mark.parametrize(
    ("method", "url", "call", "expected"),
    [
        ("GET", "/api/version", lambda c: c.version(), (3.0, 7.0)),
        ("GET", "/api/tags", lambda c: c.tags(), (3.0, 7.0)),
        ("GET", "/api/ps", lambda c: c.ps(), (3.0, 7.0)),
        ("POST", "/api/show", lambda c: c.show("m"), (3.0, 7.0)),
        ("POST", "/api/generate", lambda c: c.generate("m", "p", keep_alive=1), (3.0, 111.0)),
        ("POST", "/api/chat", lambda c: c.chat("m", [], keep_alive=1), (3.0, 111.0)),
        ("POST", "/api/embed", lambda c: c.embed("m", "x", keep_alive=1), (3.0, 111.0)),
        ("POST", "/api/generate", lambda c: c.unload("m"), (3.0, 111.0)),
        ("POST", "/api/generate", lambda c: c.load("m", keep_alive=1), (3.0, 999.0)),
    ],
)
def test_each_call_uses_its_timeout_pair(
    mock: responses.RequestsMock,
    client: OllamaClient,
    method: str,
    url: str,
    call: Any,
    expected: tuple[float, float],
) -> None:
    answer = {
        "version": "1",
        "models": [],
        "response": "",
        "message": {"role": "assistant", "content": ""},
        "embeddings": [],
    }
    mock.add(method, BASE + url, json=answer)
    call(client)
    assert timeout_of(mock) == expected


def test_default_timeouts_are_long_for_load() -> None:
    adapter = ScriptedAdapter(json.dumps(LOAD_DONE).encode(), content_type="application/json")
    session = requests.Session()
    session.mount("http://", adapter)
    OllamaClient(BASE, session=session).load("m", keep_alive=1)
    assert adapter.timeouts == [(5.0, 900.0)]


# ----------------------------------------------------------------------------- results


def test_generate_result_carries_text_and_metrics(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(responses.POST, GENERATE, json=GENERATE_DONE)
    result = client.generate("llama3.2", "Why?", keep_alive=300)
    assert result == InferenceResult(
        model="llama3.2:latest",
        text="The sky is blue.",
        embeddings=None,
        done_reason="stop",
        total_duration_ns=10706818083,
        load_duration_ns=6338219291,
        prompt_eval_count=26,
        prompt_eval_duration_ns=130079000,
        eval_count=259,
        eval_duration_ns=4232710000,
        raw=GENERATE_DONE,
    )
    assert result.metrics() == {
        "total_duration": 10706818083,
        "load_duration": 6338219291,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 130079000,
        "eval_count": 259,
        "eval_duration": 4232710000,
    }


def test_missing_or_odd_metrics_read_zero(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(
        responses.POST,
        GENERATE,
        json={"model": "m", "response": "x", "done": True, "eval_count": "many"},
    )
    result = client.generate("m", "p", keep_alive=1)
    assert (result.eval_count, result.total_duration_ns, result.done_reason) == (0, 0, None)
    assert result.metrics() == {}


def test_ps_normalises_names_into_loaded_models(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(
        responses.GET,
        f"{BASE}/api/ps",
        json={
            "models": [
                {  # a real capture from Ollama 0.34.2
                    "name": "llama3.2:1b",
                    "model": "llama3.2:1b",
                    "size": 1514584145,
                    "digest": "baf6a787fdff",
                    "details": {"family": "llama", "quantization_level": "Q8_0"},
                    "expires_at": "2026-09-26T13:36:53.46-04:00",
                    "size_vram": 1514584145,
                    "context_length": 4096,
                },
                {"model": "nomic-embed-text", "size": 595000000, "size_vram": 0},
            ]
        },
    )
    assert client.ps() == [
        LoadedModel(
            name="llama3.2:1b",
            size_bytes=1514584145,
            vram_bytes=1514584145,
            expires_at="2026-09-26T13:36:53.46-04:00",
            context_length=4096,
            digest="baf6a787fdff",
        ),
        LoadedModel(name="nomic-embed-text:latest", size_bytes=595000000, vram_bytes=0),
    ]


@pytest.mark.parametrize("body", [{"models": []}, {"models": None}, {}])
def test_ps_with_nothing_loaded_is_empty(
    mock: responses.RequestsMock, client: OllamaClient, body: dict[str, Any]
) -> None:
    mock.add(responses.GET, f"{BASE}/api/ps", json=body)
    assert client.ps() == []


# -------------------------------------------------------------------------- streaming


def test_streamed_generate_is_joined_into_one_result(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    final = {**GENERATE_DONE, "response": ""}
    body = ndjson(
        {"model": "llama3.2", "response": "The", "done": False},
        {"model": "llama3.2", "response": " sky", "done": False},
        final,
    )
    mock.add(responses.POST, GENERATE, body=body + "\n", content_type=NDJSON)
    result = client.generate("llama3.2", "Why?", keep_alive=300)
    assert result.text == "The sky"
    assert result.raw == {**final, "response": "The sky"}
    assert (result.done_reason, result.eval_count) == ("stop", 259)


def test_streamed_chat_joins_message_content(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    body = ndjson(
        {"model": "m", "message": {"role": "assistant", "content": "Hel"}, "done": False},
        {"model": "m", "message": {"role": "assistant", "content": "lo"}, "done": False},
        {
            "model": "m",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "eval_count": 2,
        },
    )
    mock.add(responses.POST, CHAT, body=body, content_type=NDJSON)
    result = client.chat("m", [{"role": "user", "content": "hi"}], keep_alive=1)
    assert result.text == "Hello"
    assert result.raw["message"] == {"role": "assistant", "content": "Hello"}
    assert result.eval_count == 2


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "an error was encountered while running the model: unexpected EOF",
            StreamError,
        ),
        (
            "an error was encountered while running the model: CUDA error: out of memory",
            OutOfMemory,
        ),
        (
            "model runner has unexpectedly stopped, this may be due to resource limitations or "
            "an internal error, check ollama server logs for details",
            RunnerCrashed,
        ),
    ],
)
def test_error_line_inside_a_200_stream_raises(
    mock: responses.RequestsMock, client: OllamaClient, text: str, error: type[OllamaError]
) -> None:
    body = ndjson({"model": "m", "response": "The", "done": False}, {"error": text})
    mock.add(responses.POST, GENERATE, body=body, content_type=NDJSON)
    with pytest.raises(error) as info:
        client.generate("m", "p", keep_alive=1)
    assert type(info.value) is error
    assert (info.value.message, info.value.status, info.value.model) == (text, 200, "m")


def test_error_object_in_a_200_json_answer_raises(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(responses.POST, GENERATE, json={"error": "something went wrong"})
    with pytest.raises(StreamError) as info:
        client.generate("m", "p", keep_alive=1)
    assert (info.value.message, info.value.status) == ("something went wrong", 200)


def test_stream_that_ends_before_done_raises_stream_error(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    body = ndjson({"model": "m", "response": "The", "done": False})
    mock.add(responses.POST, GENERATE, body=body, content_type=NDJSON)
    with pytest.raises(StreamError, match="ended before its final"):
        client.generate("m", "p", keep_alive=1)


def test_malformed_stream_line_raises_a_readable_ollama_error(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    body = ndjson({"model": "m", "response": "The", "done": False}) + "{not json\n"
    mock.add(responses.POST, GENERATE, body=body, content_type=NDJSON)
    with pytest.raises(OllamaError) as info:
        client.generate("m", "p", keep_alive=1)
    assert type(info.value) is OllamaError
    assert "not JSON" in info.value.message
    assert "{not json" in info.value.message


# ------------------------------------------------------------------- malformed bodies


@pytest.mark.parametrize(
    ("url", "body", "call", "phrase"),
    [
        (GENERATE, "<html>oops</html>", lambda c: c.generate("m", "p", keep_alive=1), "not JSON"),
        (GENERATE, "[1, 2]", lambda c: c.generate("m", "p", keep_alive=1), "not an object"),
        (GENERATE, '{"done": true}', lambda c: c.generate("m", "p", keep_alive=1), "response"),
        (CHAT, '{"message": null}', lambda c: c.chat("m", [], keep_alive=1), "message content"),
        (EMBED, '{"embeddings": "x"}', lambda c: c.embed("m", "x", keep_alive=1), "embedding"),
        (EMBED, '{"embeddings": [["a"]]}', lambda c: c.embed("m", "x", keep_alive=1), "embedding"),
        (
            f"{BASE}/api/ps",
            '{"models": [{"name": "m", "size": "big"}]}',
            lambda c: c.ps(),
            "malformed model entry",
        ),
        (f"{BASE}/api/ps", '{"models": {}}', lambda c: c.ps(), "not a list"),
        (f"{BASE}/api/version", "{}", lambda c: c.version(), "version"),
    ],
)
def test_malformed_body_raises_ollama_error_not_a_decode_error(
    mock: responses.RequestsMock, client: OllamaClient, url: str, body: str, call: Any, phrase: str
) -> None:
    method = "GET" if url.endswith(("/api/ps", "/api/version")) else "POST"
    mock.add(method, url, body=body, content_type="application/json")
    with pytest.raises(OllamaError) as info:
        call(client)
    assert type(info.value) is OllamaError
    assert not isinstance(info.value, ValueError)
    assert phrase in info.value.message
    assert info.value.status == 200


# ---------------------------------------------------------------------- HTTP errors

NOT_FOUND = "model 'llama3.2' not found"
BUSY = "server busy, please try again.  maximum pending requests exceeded"

ERROR_CASES: list[tuple[int, str, type[OllamaError], str]] = [
    (404, json.dumps({"error": NOT_FOUND}), ModelNotFound, NOT_FOUND),
    (404, "404 page not found", EndpointNotAvailable, "404 page not found"),
    (
        400,
        '{"error":"\\"llama3.2\\" does not support chat"}',
        OllamaBadRequest,
        '"llama3.2" does not support chat',
    ),
    (400, '{"error":"invalid model name"}', OllamaBadRequest, "invalid model name"),
    (503, json.dumps({"error": BUSY}), ServerBusy, BUSY),
    (
        500,
        '{"error":"llama runner process has terminated: CUDA error: out of memory"}',
        OutOfMemory,
        "llama runner process has terminated: CUDA error: out of memory",
    ),
    (
        500,
        '{"error":"llama runner process has terminated: cudaMalloc failed: Out Of Memory"}',
        OutOfMemory,
        "llama runner process has terminated: cudaMalloc failed: Out Of Memory",
    ),
    (
        500,
        '{"error":"model requires more system memory (5.5 GiB) than is available (3.1 GiB)"}',
        OutOfMemory,
        "model requires more system memory (5.5 GiB) than is available (3.1 GiB)",
    ),
    (
        500,
        '{"error":"llama-server reported out-of-memory during startup: failed to load"}',
        OutOfMemory,
        "llama-server reported out-of-memory during startup: failed to load",
    ),
    (
        500,
        '{"error":"llama runner process has terminated: GGML_ASSERT(n > 0) failed"}',
        RunnerCrashed,
        "llama runner process has terminated: GGML_ASSERT(n > 0) failed",
    ),
    (
        500,
        '{"error":"llama runner process no longer running: 1 error loading model"}',
        RunnerCrashed,
        "llama runner process no longer running: 1 error loading model",
    ),
    (
        500,
        '{"error":"model runner has unexpectedly stopped, this may be due to resource '
        'limitations or an internal error, check ollama server logs for details"}',
        RunnerCrashed,
        "model runner has unexpectedly stopped, this may be due to resource limitations or an "
        "internal error, check ollama server logs for details",
    ),
    (
        500,
        '{"error":"llama-server process has terminated: exit status 2"}',
        RunnerCrashed,
        "llama-server process has terminated: exit status 2",
    ),
    (
        500,
        '{"error":"timed out waiting for llama runner to start - progress 0.45 - "}',
        LoadTimeout,
        "timed out waiting for llama runner to start - progress 0.45 - ",
    ),
    (
        500,
        '{"error":"timed out waiting for llama-server to start - progress 0.00 - "}',
        LoadTimeout,
        "timed out waiting for llama-server to start - progress 0.00 - ",
    ),
    (
        500,
        '{"error":"json: cannot unmarshal string"}',
        OllamaError,
        "json: cannot unmarshal string",
    ),
    (500, "Internal Server Error", OllamaError, "Internal Server Error"),
    (500, "", OllamaError, "HTTP 500 with an empty body"),
    (401, '{"error":"unauthorized"}', OllamaBadRequest, "unauthorized"),
    (422, "Unprocessable", OllamaBadRequest, "Unprocessable"),
    (429, "Too Many Requests", ServerBusy, "Too Many Requests"),
    (502, "Bad Gateway", OllamaError, "Bad Gateway"),
]


@pytest.mark.parametrize(("status", "body", "error", "message"), ERROR_CASES)
def test_http_error_maps_to_its_typed_error(
    mock: responses.RequestsMock,
    client: OllamaClient,
    status: int,
    body: str,
    error: type[OllamaError],
    message: str,
) -> None:
    content_type = "application/json; charset=utf-8" if body.startswith("{") else "text/plain"
    mock.add(responses.POST, GENERATE, body=body, status=status, content_type=content_type)
    with pytest.raises(OllamaError) as info:
        client.generate("llama3.2", "hi", keep_alive=1)
    assert type(info.value) is error
    assert info.value.message == message
    assert info.value.status == status
    assert info.value.model == "llama3.2"  # as the caller spelled it


def test_transient_flags_follow_the_error_classes(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(responses.POST, GENERATE, json={"error": BUSY}, status=503)
    mock.add(responses.POST, GENERATE, json={"error": NOT_FOUND}, status=404)
    with pytest.raises(OllamaError) as busy:
        client.generate("llama3.2", "hi", keep_alive=1)
    with pytest.raises(OllamaError) as missing:
        client.generate("llama3.2", "hi", keep_alive=1)
    assert busy.value.transient is True
    assert missing.value.transient is False


@pytest.mark.parametrize(
    ("method", "url", "call", "text"),
    [
        ("POST", "/api/show", lambda c: c.show("x"), "model 'x' not found"),
        ("DELETE", "/api/delete", lambda c: c.delete("x"), "model 'x' not found"),
        (
            "POST",
            "/api/embed",
            lambda c: c.embed("x", "hi", keep_alive=1),
            'model "x" not found, try pulling it first',
        ),
        ("POST", "/api/chat", lambda c: c.chat("x", [], keep_alive=1), "model 'x' not found"),
        ("POST", "/api/generate", lambda c: c.load("x", keep_alive=1), "model 'x' not found"),
    ],
)
def test_unknown_model_is_model_not_found_on_every_endpoint(
    mock: responses.RequestsMock,
    client: OllamaClient,
    method: str,
    url: str,
    call: Any,
    text: str,
) -> None:
    mock.add(method, BASE + url, json={"error": text}, status=404)
    with pytest.raises(ModelNotFound) as info:
        call(client)
    assert (info.value.message, info.value.status, info.value.model) == (text, 404, "x")


def test_old_ollama_without_an_endpoint_is_endpoint_not_available(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(
        responses.GET,
        f"{BASE}/api/ps",
        body="404 page not found",
        status=404,
        content_type="text/plain",
    )
    with pytest.raises(EndpointNotAvailable) as info:
        client.ps()
    assert (info.value.message, info.value.status, info.value.model) == (
        "404 page not found",
        404,
        None,
    )


def test_long_plain_text_error_body_is_cut_short(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    page = "<html>" + "x" * 5000 + "</html>"
    mock.add(responses.POST, GENERATE, body=page, status=502, content_type="text/html")
    with pytest.raises(OllamaError) as info:
        client.generate("llama3.2", "hi", keep_alive=1)
    assert info.value.message == page[:200] + "..."


def test_classify_failure_leaves_ordinary_errors_alone() -> None:
    assert classify_failure("json: cannot unmarshal string") is None
    assert classify_failure("CUDA error: OUT OF MEMORY") is OutOfMemory


# ------------------------------------------------------------------ transport errors


@pytest.mark.parametrize(
    ("raised", "call", "error"),
    [
        (requests.ConnectionError("refused"), "generate", BackendUnavailable),
        (requests.ConnectTimeout("no route"), "generate", BackendUnavailable),
        (requests.ReadTimeout("slow"), "generate", BackendTimeout),
        (requests.ConnectionError("refused"), "load", BackendUnavailable),
        (requests.ConnectTimeout("no route"), "load", BackendUnavailable),
        (requests.ReadTimeout("slow"), "load", LoadTimeout),
        (requests.exceptions.ChunkedEncodingError("broken"), "generate", BackendUnavailable),
        (requests.exceptions.TooManyRedirects("loop"), "generate", OllamaError),
    ],
)
def test_transport_failure_maps_to_its_typed_error(
    mock: responses.RequestsMock,
    client: OllamaClient,
    raised: Exception,
    call: str,
    error: type[OllamaError],
) -> None:
    mock.add(responses.POST, GENERATE, body=raised)
    with pytest.raises(OllamaError) as info:
        if call == "load":
            client.load("llama3.2", keep_alive=60)
        else:
            client.generate("llama3.2", "hi", keep_alive=60)
    assert type(info.value) is error
    assert info.value.status is None
    assert info.value.model == "llama3.2"  # as the caller spelled it
    assert info.value.__cause__ is raised


def test_refused_connection_is_backend_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with OllamaClient(url, connect_timeout=2.0) as c, pytest.raises(BackendUnavailable) as info:
        c.ps()
    assert url in info.value.message
    assert info.value.status is None


class BrokenBody:
    """A urllib3-like body that yields ``first`` and then fails with ``error`` (if any)."""

    def __init__(self, first: bytes, error: Exception | None) -> None:
        self.first = first
        self.error = error

    def stream(self, amt: int, decode_content: bool = True) -> Iterator[bytes]:
        yield self.first
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        pass


class ScriptedAdapter(BaseAdapter):
    """Answers every request with 200 and one scripted body; records the timeouts."""

    def __init__(
        self, first: bytes, error: Exception | None = None, content_type: str = NDJSON
    ) -> None:
        super().__init__()
        self.first = first
        self.error = error
        self.content_type = content_type
        self.timeouts: list[Any] = []

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        self.timeouts.append(timeout)
        resp = requests.Response()
        resp.status_code = 200
        resp.headers["Content-Type"] = self.content_type
        resp.raw = BrokenBody(self.first, self.error)
        resp.request = request
        resp.url = request.url or ""
        return resp

    def close(self) -> None:
        pass


def scripted_client(error: Exception) -> OllamaClient:
    first = ndjson({"model": "m", "response": "The", "done": False}).encode()
    session = requests.Session()
    session.mount("http://", ScriptedAdapter(first, error))
    return OllamaClient(BASE, session=session)


def test_read_timeout_in_the_middle_of_a_stream_is_a_backend_timeout() -> None:
    c = scripted_client(ReadTimeoutError(None, "/api/generate", "Read timed out."))  # type: ignore[arg-type]
    with pytest.raises(BackendTimeout) as info:
        c.generate("m", "p", keep_alive=1)
    assert "300.0 s" in info.value.message


def test_read_timeout_in_the_middle_of_a_load_is_a_load_timeout() -> None:
    c = scripted_client(ReadTimeoutError(None, "/api/generate", "Read timed out."))  # type: ignore[arg-type]
    with pytest.raises(LoadTimeout):
        c.load("m", keep_alive=1)


def test_connection_lost_in_the_middle_of_a_stream_is_backend_unavailable() -> None:
    c = scripted_client(ProtocolError("Connection broken: IncompleteRead(0 bytes read)"))
    with pytest.raises(BackendUnavailable, match="broke during the answer"):
        c.generate("m", "p", keep_alive=1)


# ------------------------------------------------------------------------------- pull

PULL_LINES: list[dict[str, Any]] = [
    {"status": "pulling manifest"},
    {"status": "pulling dde5aa3fc5ff", "digest": "sha256:dde5aa3fc5ff", "total": 2019377376},
    {
        "status": "pulling dde5aa3fc5ff",
        "digest": "sha256:dde5aa3fc5ff",
        "total": 2019377376,
        "completed": 2019377376,
    },
    {"status": "verifying sha256 digest"},
    {"status": "writing manifest"},
    {"status": "success"},
]


def test_pull_streams_and_calls_progress_per_line(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(responses.POST, f"{BASE}/api/pull", body=ndjson(*PULL_LINES), content_type=NDJSON)
    seen: list[dict[str, Any]] = []
    client.pull("llama3.2", progress=seen.append)
    assert seen == PULL_LINES
    assert sent(mock) == {"model": "llama3.2", "stream": True}
    assert mock.calls[-1].request.req_kwargs["stream"] is True  # type: ignore[attr-defined]


def test_pull_without_a_callback_still_checks_for_success(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(responses.POST, f"{BASE}/api/pull", json={"status": "success"})
    client.pull("llama3.2")


def test_pull_of_an_unknown_model_is_model_not_found_despite_200(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    body = ndjson(
        {"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}
    )
    mock.add(responses.POST, f"{BASE}/api/pull", body=body, content_type=NDJSON)
    seen: list[dict[str, Any]] = []
    with pytest.raises(ModelNotFound) as info:
        client.pull("nope", progress=seen.append)
    assert seen == [{"status": "pulling manifest"}]
    assert (info.value.message, info.value.status, info.value.model) == (
        "pull model manifest: file does not exist",
        200,
        "nope",
    )


def test_pull_with_another_error_line_is_a_stream_error(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    text = "max retries exceeded: unexpected EOF"
    body = ndjson(PULL_LINES[0], PULL_LINES[1], {"error": text})
    mock.add(responses.POST, f"{BASE}/api/pull", body=body, content_type=NDJSON)
    with pytest.raises(StreamError) as info:
        client.pull("llama3.2")
    assert (info.value.message, info.value.status) == (text, 200)


def test_pull_that_stops_before_success_is_a_stream_error(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(responses.POST, f"{BASE}/api/pull", body=ndjson(*PULL_LINES[:3]), content_type=NDJSON)
    with pytest.raises(StreamError, match="without success"):
        client.pull("llama3.2")


def test_pull_progress_exception_propagates_unchanged(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(responses.POST, f"{BASE}/api/pull", body=ndjson(*PULL_LINES), content_type=NDJSON)

    class Stop(Exception):
        pass

    def progress(line: dict[str, Any]) -> None:
        raise Stop

    with pytest.raises(Stop):
        client.pull("llama3.2", progress=progress)


# ------------------------------------------------------------------- options as given


def test_options_reach_ollama_as_each_request_gives_them(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    """No runner option is ever replaced or dropped: a job that asks for num_ctx 16384
    gets it, whatever an earlier request used (Ollama reloads the runner if it must)."""
    mock.add(responses.POST, GENERATE, json=GENERATE_DONE)
    mock.add(
        responses.POST,
        CHAT,
        json={"model": "m", "message": {"role": "assistant", "content": ""}, "done": True},
    )
    client.generate("llama3.2", "a", keep_alive=1, options={"num_ctx": 2048, "temperature": 0})
    client.generate("llama3.2", "b", keep_alive=1, options={"num_ctx": 16384, "seed": 1})
    client.generate("llama3.2:latest", "c", keep_alive=1)
    client.chat("Llama3.2", [], keep_alive=1, options={"num_batch": 1024, "top_k": 5})
    assert [sent(mock, i).get("options") for i in range(4)] == [
        {"num_ctx": 2048, "temperature": 0},
        {"num_ctx": 16384, "seed": 1},
        None,
        {"num_batch": 1024, "top_k": 5},
    ]


def test_load_sends_the_runner_options_it_is_given(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(responses.POST, EMBED, json={"model": "e", "embeddings": []})
    client.load("e", keep_alive=1, kind="embed", options={"num_ctx": 2048, "num_batch": 256})
    client.embed("e", "x", keep_alive=1, options={"num_ctx": 8192})
    assert sent(mock, 0)["options"] == {"num_ctx": 2048, "num_batch": 256}
    assert sent(mock, 1)["options"] == {"num_ctx": 8192}


def test_every_ollama_field_is_forwarded_unchanged(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(
        responses.POST,
        CHAT,
        json={"model": "m", "message": {"role": "assistant", "content": "ok"}, "done": True},
    )
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]},
        {"role": "tool", "content": "22C", "tool_name": "f"},
    ]
    client.chat(
        "m",
        messages,
        keep_alive=1,
        tools=tools,
        think=False,
        logprobs=True,
        top_logprobs=3,
        truncate=True,
        shift=None,
    )
    body = sent(mock)
    assert body["tools"] == tools and body["messages"] == messages
    assert (body["think"], body["logprobs"], body["top_logprobs"], body["truncate"]) == (
        False,
        True,
        3,
        True,
    )
    assert "shift" not in body  # None means "not set"


# ------------------------------------------------------------------------- session


def test_own_session_pools_connections_for_a_thread_pool() -> None:
    c = OllamaClient(BASE, pool_size=48)
    adapter = c._session.get_adapter(BASE)
    assert isinstance(adapter, requests.adapters.HTTPAdapter)
    assert adapter.poolmanager.connection_pool_kw["maxsize"] == 48
    assert c._session.trust_env is False
    c.close()


def test_concurrent_requests_to_one_endpoint_each_send_their_own_body(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(responses.POST, GENERATE, json=GENERATE_DONE)
    prompts = [f"prompt {i} " + "x" * i for i in range(32)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda p: client.generate("m", p, keep_alive=1), prompts))
    requests_sent = [call.request for call in mock.calls]
    assert sorted(json.loads(r.body)["prompt"] for r in requests_sent) == sorted(prompts)
    for request in requests_sent:
        assert request.headers["Content-Length"] == str(len(request.body))
        assert request.headers["Content-Type"] == "application/json"


def test_requests_without_a_body_send_no_body_headers(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(responses.POST, GENERATE, json=GENERATE_DONE)
    mock.add(responses.GET, f"{BASE}/api/ps", json={"models": []})
    client.generate("m", "p", keep_alive=1)
    client.ps()
    ps = mock.calls[-1].request
    assert ps.body is None
    assert "Content-Type" not in ps.headers
    assert "Content-Length" not in ps.headers


def test_a_given_sessions_headers_and_url_credentials_reach_every_request(
    mock: responses.RequestsMock,
) -> None:
    session = requests.Session()
    session.headers["X-Team"] = "inference"
    url = "http://user:secret@ollama.test:11434"
    mock.add(responses.POST, f"{url}/api/generate", json=GENERATE_DONE)
    mock.add(responses.GET, f"{url}/api/ps", json={"models": []})
    client = OllamaClient(url, session=session)
    client.generate("m", "one", keep_alive=1)
    client.generate("m", "two", keep_alive=1)
    client.ps()
    assert [sent(mock, 0)["prompt"], sent(mock, 1)["prompt"]] == ["one", "two"]
    for call in mock.calls:
        assert call.request.headers["X-Team"] == "inference"
        assert call.request.headers["Authorization"].startswith("Basic ")


def test_close_closes_only_a_session_the_client_built(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[str] = []
    given = requests.Session()
    monkeypatch.setattr(given, "close", lambda: closed.append("given"))
    OllamaClient(BASE, session=given).close()
    own = OllamaClient(BASE)
    monkeypatch.setattr(own._session, "close", lambda: closed.append("own"))
    with own:
        pass
    assert closed == ["own"]


def test_refused_connection_is_marked_as_never_reaching_ollama() -> None:
    client = OllamaClient(f"http://127.0.0.1:{free_port()}", connect_timeout=2.0)
    with pytest.raises(BackendUnavailable) as info:
        client.generate("qwen2.5:0.5b", "hi", keep_alive=60)
    assert info.value.reached is False


# --------------------------------------------------------------------- silence, abort


def test_a_timeout_after_progress_is_transient_and_before_it_is_not() -> None:
    mid = scripted_client(ReadTimeoutError(None, "/api/generate", "Read timed out."))  # type: ignore[arg-type]
    with pytest.raises(BackendTimeout) as stalled:
        mid.generate("m", "p", keep_alive=1)
    assert stalled.value.chunks == 1 and stalled.value.transient


def test_silence_before_any_answer_is_a_timeout_that_is_not_transient() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:  # accepts, never answers
        port = server.getsockname()[1]
        c = OllamaClient(f"http://127.0.0.1:{port}", timeout=0.3)
        with pytest.raises(BackendTimeout) as info:
            c.generate("m", "p", keep_alive=1)
        c.close()
    assert info.value.chunks == 0 and not info.value.transient
    assert "0.3 s" in info.value.message


@pytest.mark.parametrize("when", ["waiting", "before"])
def test_abort_ends_a_call_from_another_thread_at_once(when: str) -> None:
    """A call blocked waiting for Ollama's first byte returns RequestAborted as soon as
    another thread aborts it, and the server sees the connection close."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        c = OllamaClient(f"http://127.0.0.1:{port}", timeout=30)
        call = Call()
        if when == "before":
            call.abort()  # aborted before it even connects
        result: list[BaseException] = []

        def run() -> None:
            try:
                c.generate("m", "p", keep_alive=1, call=call)
            except BaseException as exc:
                result.append(exc)

        worker = threading.Thread(target=run)
        started = time.monotonic()
        worker.start()
        conn, _ = server.accept()
        if when == "waiting":
            conn.settimeout(5)
            assert conn.recv(65536).startswith(b"POST /api/generate")  # the request is in
            call.abort()
        worker.join(timeout=5)
        assert not worker.is_alive()
        assert time.monotonic() - started < 3
        conn.settimeout(5)
        while conn.recv(65536):  # drain what was sent; then the close is seen
            pass
        conn.close()
        c.close()
    assert len(result) == 1 and isinstance(result[0], RequestAborted)


# ------------------------------------------------------------------------ older servers

EMBEDDINGS = f"{BASE}/api/embeddings"


def test_load_through_the_legacy_embeddings_endpoint(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(responses.POST, EMBEDDINGS, json={"embedding": []})
    result = client.load("nomic-embed-text", keep_alive=-1, kind="embeddings")
    assert sent(mock) == {
        "model": "nomic-embed-text",
        "prompt": "",
        "stream": False,
        "keep_alive": -1,
    }
    assert timeout_of(mock) == (3.0, 999.0) and result.embeddings == []


def test_embeddings_returns_the_legacy_vector_as_it_is(
    mock: responses.RequestsMock, client: OllamaClient
) -> None:
    mock.add(responses.POST, EMBEDDINGS, json={"embedding": [3, 4.5, -1]})
    vector = client.embeddings("nomic-embed-text", "hi", keep_alive=60, options={"seed": 1})
    assert vector == [3.0, 4.5, -1.0]
    assert sent(mock) == {
        "model": "nomic-embed-text",
        "prompt": "hi",
        "options": {"seed": 1},
        "keep_alive": 60,
    }
    mock.add(responses.POST, EMBEDDINGS, json={"embedding": ["x"]})
    with pytest.raises(OllamaError, match="no embedding vector"):
        client.embeddings("nomic-embed-text", "hi", keep_alive=60)


@pytest.mark.parametrize(
    ("status", "body", "content_type", "present"),
    [
        (404, "404 page not found", "text/plain", False),  # Go's answer for a missing route
        (400, '{"error":"invalid model name"}', "application/json", True),
        (404, '{"error":"model \\"\\" not found, try pulling it first"}', "application/json", True),
        (200, '{"models":[]}', "application/json", True),
        (500, '{"error":"boom"}', "application/json", True),
    ],
)
def test_probe_tells_a_missing_route_from_any_other_answer(
    mock: responses.RequestsMock,
    client: OllamaClient,
    status: int,
    body: str,
    content_type: str,
    present: bool,
) -> None:
    mock.add(
        responses.POST, f"{BASE}/api/pull", body=body, status=status, content_type=content_type
    )
    assert client.probe("POST", "/api/pull") is present
    assert sent(mock) == {}  # refused before Ollama does anything
    assert timeout_of(mock) == (3.0, 7.0)


def test_probe_of_a_server_that_does_not_answer_raises() -> None:
    with OllamaClient(f"http://127.0.0.1:{free_port()}") as c, pytest.raises(BackendUnavailable):
        c.probe("GET", "/api/ps")
