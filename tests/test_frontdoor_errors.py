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
