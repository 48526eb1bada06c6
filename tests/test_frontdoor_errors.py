"""Errors on the front doors, as a user of the official ``ollama`` and ``openai`` clients
meets them, over real HTTP: each door answers in its own API's shape whatever part of
the service refuses the request (waitress, Flask's routing, the API key check, the
door itself), and an Ollama that cannot be reached is a short sentence with
``Retry-After``, not urllib3's text."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import ollama
import openai
import pytest
import requests

from tests.conftest import Service, free_port

TEXT = "qwen2.5:0.5b"
KEY = "k" * 24

_CLOSE: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLOSE:
        _CLOSE.pop().close()


def ollama_client(url: str, **headers: str) -> ollama.Client:
    made = ollama.Client(host=url, headers=headers or None, timeout=30)
    _CLOSE.append(made)
    return made


def openai_client(url: str, key: str = "unused") -> openai.OpenAI:
    made = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)
    _CLOSE.append(made)
    return made


def assert_openai_error(r: requests.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


# ------------------------------------------------------------- Ollama unreachable


@pytest.fixture
def nowhere(make_service: Any) -> Service:
    """A service whose Ollama is a port nothing listens on."""
    backend = SimpleNamespace(url=f"http://127.0.0.1:{free_port()}")
    service: Service = make_service(backend, nvml=False)
    return service


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/tags", None),
        ("GET", "/api/ps", None),
        ("GET", "/api/version", None),
        ("POST", "/api/show", {"model": TEXT}),
        ("POST", "/api/show", {"name": TEXT}),
    ],
)
def test_ollama_passthrough_with_ollama_down_is_a_short_503(
    nowhere: Service, method: str, path: str, body: Any
) -> None:
    r = requests.request(method, nowhere.url + path, json=body, timeout=30)
    assert r.status_code == 503, r.text
    text = r.json()["error"]
    assert text.startswith("cannot reach Ollama at http://127.0.0.1:")
    assert text.endswith(": connection refused")
    for noise in ("HTTPConnectionPool", "Max retries", "NewConnectionError", "object at 0x"):
        assert noise not in text
    assert r.headers["Retry-After"].isdigit()


def test_the_clients_see_the_sentence_when_ollama_is_down(nowhere: Service) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        ollama_client(nowhere.url).list()
    assert err.value.status_code == 503
    assert err.value.error.endswith("connection refused")
    with pytest.raises(openai.APIStatusError) as failed:
        openai_client(nowhere.url).models.list()
    assert failed.value.status_code == 503
    assert failed.value.response.headers["Retry-After"].isdigit()
    error = assert_openai_error(failed.value.response, 503)
    assert error["message"].endswith("connection refused")
    with pytest.raises(openai.APIStatusError) as failed:
        openai_client(nowhere.url).models.retrieve(TEXT)
    assert failed.value.status_code == 503
    assert "connection refused" in failed.value.message


def test_an_ollama_that_never_answers_is_timed_out(
    make_service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend that accepts the connection and then says nothing."""
    from modelmanager.frontdoors import shared

    monkeypatch.setattr(shared, "INFO_TIMEOUT", (0.5, 0.5))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        backend = SimpleNamespace(url=f"http://127.0.0.1:{silent.getsockname()[1]}")
        svc: Service = make_service(backend, nvml=False)
        r = requests.get(f"{svc.url}/api/version", timeout=30)
    assert r.status_code == 503, r.text
    assert r.json()["error"].endswith(": timed out")
    assert r.headers["Retry-After"].isdigit()


def test_unreachable_names_the_cause_in_a_few_words() -> None:
    from modelmanager.frontdoors.shared import unreachable

    def failed(url: str, timeout: float = 2) -> requests.RequestException:
        try:
            requests.get(url, timeout=timeout)
        except requests.RequestException as exc:
            return exc
        raise AssertionError("an answer came")

    assert unreachable(failed(f"http://127.0.0.1:{free_port()}/")) == "connection refused"
    assert unreachable(failed("http://no-such-host.invalid/")) == (
        "its host name cannot be resolved"
    )
    assert unreachable(requests.ReadTimeout("read timed out")) == "timed out"
    assert unreachable(requests.exceptions.InvalidURL("x")) == "the URL is not valid"


# ------------------------------------------------------------- each door's shape

OVERSIZED = 33 * 1024 * 1024  # bytes: over MAX_BODY_BYTES (32 MiB)


@pytest.fixture
def svc(sim: Any, make_service: Any) -> Service:
    service: Service = make_service(sim)
    return service


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/embed", "/api/show"])
def test_oversized_body_on_ollamas_paths_is_a_413_in_ollamas_shape(
    svc: Service, path: str, chunked: bool
) -> None:
    data = b'{"model": "m", "prompt": "' + b"x" * OVERSIZED + b'"}'
    step = 1 << 20
    body: Any = (data[i : i + step] for i in range(0, len(data), step)) if chunked else data
    r = requests.post(svc.url + path, data=body, timeout=120)
    assert r.status_code == 413, r.text[:300]
    assert set(r.json()) == {"error"} and isinstance(r.json()["error"], str)
    assert str(32 * 1024 * 1024) in r.json()["error"]


def test_oversized_prompt_through_the_ollama_client_raises_a_text_error(svc: Service) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        ollama_client(svc.url).generate(model=TEXT, prompt="x" * OVERSIZED)
    assert err.value.status_code == 413
    assert isinstance(err.value.error, str) and "larger than" in err.value.error


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_oversized_body_under_v1_is_a_413_in_openais_shape(
    svc: Service, path: str, chunked: bool
) -> None:
    data = b'{"model": "m", "input": "' + b"x" * OVERSIZED + b'"}'
    step = 1 << 20
    body: Any = (data[i : i + step] for i in range(0, len(data), step)) if chunked else data
    r = requests.post(svc.url + path, data=body, timeout=120)
    error = assert_openai_error(r, 413)
    assert error["type"] == "invalid_request_error"


def test_oversized_message_through_the_openai_client(svc: Service) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        openai_client(svc.url).chat.completions.create(
            model=TEXT, messages=[{"role": "user", "content": "x" * OVERSIZED}]
        )
    assert err.value.status_code == 413
    assert isinstance(err.value.body, dict) and "larger than" in err.value.body["message"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/generate", "POST"),
        ("GET", "/api/chat", "POST"),
        ("PUT", "/api/embed", "POST"),
        ("GET", "/api/show", "POST"),
        ("POST", "/api/tags", "GET"),
        ("DELETE", "/api/ps", "GET"),
        ("GET", "/api/pull", "POST"),
        ("POST", "/api/delete", "DELETE"),
    ],
)
def test_wrong_method_on_ollamas_paths_is_gins_405(
    svc: Service, method: str, path: str, allowed: str
) -> None:
    """Ollama's router (Gin, ``HandleMethodNotAllowed = true``) answers a wrong method with
    its own plain-text 405; the ollama client reads it as the error's text."""
    r = requests.request(method, svc.url + path, timeout=10)
    assert r.status_code == 405, r.text
    assert r.text == "405 method not allowed"
    assert r.headers["Content-Type"].startswith("text/plain")
    assert allowed in {m.strip() for m in r.headers["Allow"].split(",")}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/completions", "POST"),
        ("GET", "/v1/embeddings", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/v1/models/qwen2.5:0.5b", "GET"),
    ],
)
def test_wrong_method_under_v1_is_a_405_in_openais_shape(
    svc: Service, method: str, path: str, allowed: str
) -> None:
    r = requests.request(method, svc.url + path, timeout=10)
    error = assert_openai_error(r, 405)
    assert error["type"] == "invalid_request_error" and method in error["message"]
    assert allowed in {m.strip() for m in r.headers["Allow"].split(",")}


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(
    "path", ["/v1/responses", "/v1/messages", "/v1/audio/transcriptions", "/v1/nope", "/v1/"]
)
def test_unknown_paths_under_v1_are_a_404_in_openais_shape(
    svc: Service, method: str, path: str
) -> None:
    r = requests.request(method, svc.url + path, json={"model": TEXT}, timeout=10)
    error = assert_openai_error(r, 404)
    assert f"{method} {path}" in error["message"]
    assert "/v1/chat/completions" in error["message"]  # what is served instead


def test_the_openai_client_on_an_unserved_endpoint(svc: Service) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        openai_client(svc.url).responses.create(model=TEXT, input="Hi")
    assert isinstance(err.value.body, dict) and "/v1/responses" in err.value.body["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("HEAD", "/api/blobs/sha256:" + "0" * 64),
        ("POST", "/api/blobs/sha256:" + "0" * 64),
        ("GET", "/api/status"),
        ("POST", "/api/me"),
        ("POST", "/api/experimental/web_search"),
    ],
)
def test_ollamas_paths_the_door_does_not_serve_are_a_404_in_ollamas_shape(
    svc: Service, method: str, path: str
) -> None:
    r = requests.request(method, svc.url + path, timeout=10)
    assert r.status_code == 404
    if method != "HEAD":
        assert set(r.json()) == {"error"} and path in r.json()["error"]


def test_job_api_paths_keep_the_job_api_shape(svc: Service) -> None:
    r = requests.get(f"{svc.url}/api/submit", timeout=10)
    assert r.status_code == 405 and r.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    r = requests.get(f"{svc.url}/api/v1/nope", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    r = requests.post(f"{svc.url}/api/submit", data=b"x" * OVERSIZED, timeout=120)
    assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


# -------------------------------------------------------------------- API keys


@pytest.fixture
def keyed(sim: Any, make_service: Any) -> Service:
    service: Service = make_service(sim, API_KEY=KEY)
    return service


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/qwen2.5:0.5b"),
        ("POST", "/v1/responses"),  # no such route: the key is checked first
    ],
)
def test_wrong_key_under_v1_is_openais_401(keyed: Service, method: str, path: str) -> None:
    r = requests.request(
        method, keyed.url + path, json={}, headers={"Authorization": "Bearer no"}, timeout=10
    )
    error = assert_openai_error(r, 401)
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"


def test_the_openai_client_with_a_wrong_key(keyed: Service) -> None:
    with pytest.raises(openai.AuthenticationError) as err:
        openai_client(keyed.url, key="wrong").models.list()
    assert err.value.code == "invalid_api_key"
    openai_client(keyed.url, key=KEY).models.list()


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/generate"), ("POST", "/api/show"), ("GET", "/api/tags"), ("GET", "/api/ps")],
)
def test_wrong_key_on_ollamas_paths_is_a_text_error(keyed: Service, method: str, path: str) -> None:
    r = requests.request(method, keyed.url + path, json={"model": TEXT}, timeout=10)
    assert r.status_code == 401
    assert set(r.json()) == {"error"} and isinstance(r.json()["error"], str)
    with pytest.raises(ollama.ResponseError) as err:
        ollama_client(keyed.url).ps()
    assert err.value.status_code == 401 and "API key" in err.value.error
    r = requests.get(f"{keyed.url}/api/jobs", timeout=10)  # the job API's own shape
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"


# ------------------------------------------------------------ Ollama's own limits

BIG = 2 * 1024 * 1024  # characters: over the job API's 1 MiB per text field


def test_a_prompt_over_1_mib_is_taken_as_ollama_takes_it(sim: Any, svc: Service) -> None:
    c = ollama_client(svc.url)
    answer = c.generate(model=TEXT, prompt="word " * (BIG // 5))
    assert answer.done and answer.response
    chat = c.chat(model=TEXT, messages=[{"role": "user", "content": "é" * BIG}])
    assert chat.done and chat.message.content
    embedded = c.embed(model="nomic-embed-text", input=["x" * BIG, "y"])
    assert len(embedded.embeddings) == 2
    reply = openai_client(svc.url).chat.completions.create(
        model=TEXT, messages=[{"role": "user", "content": "z" * BIG}]
    )
    assert reply.choices[0].message.content


@pytest.mark.parametrize("num_ctx", [131073, 262144, 1 << 20])
def test_long_contexts_are_not_refused(sim: Any, svc: Service, num_ctx: int) -> None:
    """Ollama caps no ``num_ctx`` (the runner clamps it to the model's training context);
    the door takes up to 1,048,576 tokens, and the VRAM estimate clamps it the same way."""
    answer = ollama_client(svc.url).generate(model=TEXT, prompt="hi", options={"num_ctx": num_ctx})
    assert answer.done and answer.response


def test_num_ctx_past_the_doors_cap_is_a_400_naming_it(svc: Service) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        ollama_client(svc.url).generate(model=TEXT, prompt="hi", options={"num_ctx": 1 << 40})
    assert err.value.status_code == 400
    assert "num_ctx" in err.value.error and "1048576" in err.value.error


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"caf\xe9 au lait", "caf\ufffd au lait"),  # Latin-1, not UTF-8
        (b"\xff\xfe", "\ufffd\ufffd"),
        (b"\\ud800 alone", "\ufffd alone"),  # a lone surrogate, escaped
        (b"pair \\ud83d\\ude00 kept", "pair \U0001f600 kept"),
        (b"nul \\u0000 kept", "nul \x00 kept"),
    ],
)
def test_text_is_read_as_gos_decoder_reads_it(
    sim: Any, svc: Service, raw: bytes, expected: str
) -> None:
    """Go's ``encoding/json`` replaces invalid UTF-8 and lone surrogates with U+FFFD and
    keeps NUL: such a prompt runs, and what reaches Ollama is what Go would have read."""
    data = b'{"model": "' + TEXT.encode() + b'", "stream": false, "prompt": "' + raw + b'"}'
    r = requests.post(f"{svc.url}/api/generate", data=data, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True
    (job,) = requests.get(f"{svc.url}/api/jobs", timeout=10).json()["jobs"]
    stored = svc.manager.store.get(job["job_id"])  # what was sent on to Ollama
    assert stored is not None and stored.payload["prompt"] == expected
