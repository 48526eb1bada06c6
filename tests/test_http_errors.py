"""Bad requests over real HTTP: every error path answers its status in the one error JSON.

The shape is ``{"error": {"code", "message", "details"}}`` and nothing else, with
``details.field`` naming the field at fault where there is one; no 5xx and no stack trace
for anything a client sends. Most cases share one service (module scope) because each is
a single request that changes nothing; the few that need their own settings start their own.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from config import Config
from modelmanager.contract import (
    MAX_BATCH,
    MAX_IDEMPOTENCY_KEY,
    MAX_IMAGE_BYTES,
    MAX_IMAGES,
    MAX_INPUTS,
    MAX_JSON_DEPTH,
    MAX_LIST,
    MAX_MESSAGES,
    MAX_METADATA_BYTES,
    MAX_MODEL_NAME,
    MAX_NUM_CTX,
    MAX_TEXT_BYTES,
)
from modelmanager.http_api import MAX_BODY_BYTES, create_app
from modelmanager.manager import Manager
from modelmanager.server import DRAIN_LIMIT
from tests.conftest import Service, serve_manager
from tools.fake_ollama import FakeOllama

MODEL = "qwen2.5:0.5b"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n tiny").decode()
TRACE_MARKERS = ("Traceback", 'File "', "werkzeug", "site-packages", '.py", line')


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service (budget VRAM, no NVML) for the many one-request cases of this module."""
    sim = FakeOllama(vram_mb=24576, time_scale=0.02).start()
    config = Config.load(
        environ={},
        overrides={
            "OLLAMA_BASE_URL": sim.url,
            "DATA_DIR": str(tmp_path_factory.mktemp("http_errors") / "data"),
            "LOG_FILE": "",
            "HTTP_PORT": 0,
            "VRAM_BUDGET_MB": 24576,
            "SQLITE_SYNCHRONOUS": "NORMAL",
        },
    )
    service = serve_manager(Manager(config).start(), config)
    try:
        yield service
    finally:
        service.stop()
        sim.stop()


def assert_error(
    r: requests.Response, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    """``r`` is ``status`` with the one error JSON (and ``details.field`` == ``field``)."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["Content-Type"] == "application/json", r.headers["Content-Type"]
    for marker in TRACE_MARKERS:
        assert marker not in r.text, r.text[:300]
    body = r.json()
    assert list(body) == ["error"], body
    err = body["error"]
    assert sorted(err) == ["code", "details", "message"], err
    assert err["code"] == code
    assert isinstance(err["message"], str) and err["message"].strip()
    assert isinstance(err["details"], dict)
    if field is not None:
        named = err["details"].get("field", "")
        # narrowed to an element is fine: "input[1]", "messages[0].content"
        assert named == field or named.startswith((f"{field}[", f"{field}.")), (field, err)
    return dict(err)


def job(**fields: Any) -> dict[str, Any]:
    """A valid generate job with ``fields`` replaced (``...`` removes a field)."""
    out: dict[str, Any] = {"model": MODEL, "prompt": "Why is the sky blue?"}
    out.update(fields)
    return {k: v for k, v in out.items() if v is not ...}


def chat(**fields: Any) -> dict[str, Any]:
    return job(**{"prompt": ..., "messages": [{"role": "user", "content": "hi"}], **fields})


def embed(**fields: Any) -> dict[str, Any]:
    return job(**{"prompt": ..., "input": "some text", **fields})


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# ---------------------------------------------------------------- bodies that are not JSON

RAW: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("white space only", b"  \n "),
    ("truncated object", b'{"model": "a"'),
    ("single quotes", b"{'model': 'a'}"),
    ("trailing garbage", b'{"model": "a", "prompt": "x"} extra'),
    ("bare word", b"hello"),
    ("invalid UTF-8", b'{"model": "qwen2.5:0.5b", "prompt": "\xff\xfe"}'),
    ("NaN", b'{"model": "qwen2.5:0.5b", "prompt": "x", "metadata": NaN}'),
    ("Infinity", b'{"model": "qwen2.5:0.5b", "prompt": "x", "metadata": {"a": Infinity}}'),
    ("-Infinity", b'{"model": "qwen2.5:0.5b", "prompt": "x", "format": {"a": -Infinity}}'),
    ("number out of range", b'{"model": "qwen2.5:0.5b", "prompt": "x", "metadata": 1e400}'),
    ("integer of 5000 digits", b'{"model": "a", "prompt": "x", "metadata": ' + b"9" * 5000 + b"}"),
    ("nested 100000 deep", b"[" * 100_000 + b"]" * 100_000),
    ("object nested 5000 deep", b'{"a":' * 5000 + b"1" + b"}" * 5000),
]


@pytest.mark.parametrize("path", ["/api/submit", "/api/submit_batch"])
@pytest.mark.parametrize(("case", "raw"), RAW, ids=[c for c, _ in RAW])
def test_body_that_is_not_json_is_400(svc: Service, path: str, case: str, raw: bytes) -> None:
    r = svc.session.post(
        svc.url + path, data=raw, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert_error(r, 400, "INVALID_REQUEST")


@pytest.mark.parametrize("body", [[], [{"model": MODEL, "prompt": "x"}], "job", 42, None, True])
def test_json_that_is_not_an_object_is_400(svc: Service, body: Any) -> None:
    err = assert_error(_send(svc, "/api/submit", body), 400, "INVALID_REQUEST")
    assert "JSON object" in err["message"]
    assert_error(_send(svc, "/api/submit_batch", body), 400, "INVALID_REQUEST", "jobs")


# --------------------------------------------------------------- every field, each 400

FIELDS: list[tuple[str, Any, str]] = [
    # (case, body, field named in details)
    ("model missing", job(model=...), "model"),
    ("model empty", job(model=""), "model"),
    ("model a number", job(model=7), "model"),
    ("model null", job(model=None), "model"),
    ("model an object", job(model={"name": MODEL}), "model"),
    ("model with a space", job(model="llama 3"), "model"),
    ("model path traversal", job(model="../../etc/passwd"), "model"),
    ("model starting with a dash", job(model="-llama3"), "model"),
    ("model with @digest", job(model="llama3@sha256:abc"), "model"),
    ("model with +build", job(model="llama3:1b+q4"), "model"),
    ("model with four parts", job(model="a/b/c/d"), "model"),
    ("model with a dot in the namespace", job(model="host/name.space/model"), "model"),
    ("model forging a log line", job(model="llama3\n[00:00:00.000] [API] forged"), "model"),
    ("model too long", job(model="m" * (MAX_MODEL_NAME + 1)), "model"),
    ("model a URL with a path", job(model="http://evil/x/y/z"), "model"),
    ("model with a scheme in upper case", job(model="HTTP://evil/x"), "model"),
    ("priority unknown", job(priority="urgent"), "priority"),
    ("priority a number", job(priority=0), "priority"),
    ("priority a list", job(priority=["high"]), "priority"),
    ("kind unknown", job(kind="pull"), "kind"),
    ("kind an object", job(kind={}), "kind"),
    ("no prompt, messages or input", job(prompt=...), "prompt"),
    ("prompt empty", job(prompt=""), "prompt"),
    ("prompt blank", job(prompt=" \t\n"), "prompt"),
    ("prompt a number", job(prompt=1), "prompt"),
    ("prompt null", job(prompt=None), "prompt"),
    ("prompt with NUL", job(prompt="a\x00b"), "prompt"),
    ("prompt a lone surrogate", job(prompt="a\ud800b"), "prompt"),
    ("prompt over the size cap", job(prompt="x" * (MAX_TEXT_BYTES + 1)), "prompt"),
    ("prompt over the cap in UTF-8", job(prompt="€" * (MAX_TEXT_BYTES // 3 + 1)), "prompt"),
    ("system not a string", job(system=1), "system"),
    ("system with NUL", job(system="\x00"), "system"),
    ("system on a chat job", chat(system="brief"), "system"),
    ("kind chat given a prompt", job(kind="chat"), "messages"),
    ("kind embed given a prompt", job(kind="embed"), "input"),
    ("prompt beside messages", chat(prompt="also"), "prompt"),
    ("messages not a list", chat(messages={"role": "user"}), "messages"),
    ("messages empty", chat(messages=[]), "messages"),
    (
        "messages over the count cap",
        chat(messages=[{"role": "user", "content": ""}] * (MAX_MESSAGES + 1)),
        "messages",
    ),
    ("message a string", chat(messages=["hi"]), "messages"),
    ("message role unknown", chat(messages=[{"role": "root", "content": "x"}]), "messages"),
    ("message role missing", chat(messages=[{"content": "x"}]), "messages"),
    ("message extra field", chat(messages=[{"role": "user", "name": "x"}]), "messages"),
    ("message content a list", chat(messages=[{"role": "user", "content": []}]), "messages"),
    (
        "message content with NUL",
        chat(messages=[{"role": "user", "content": "\x00"}]),
        "messages",
    ),
    (
        "message images bad base64",
        chat(messages=[{"role": "user", "content": "x", "images": ["%%%"]}]),
        "messages",
    ),
    ("input empty string", embed(input=""), "input"),
    ("input empty list", embed(input=[]), "input"),
    ("input an object", embed(input={"text": "x"}), "input"),
    ("input item a number", embed(input=["a", 1]), "input"),
    ("input item blank", embed(input=["a", " "]), "input"),
    ("input over the count cap", embed(input=["x"] * (MAX_INPUTS + 1)), "input"),
    ("images on an embed job", embed(images=[PNG]), "images"),
    ("images a string", job(images=PNG), "images"),
    ("images item a number", job(images=[5]), "images"),
    ("images item empty", job(images=[""]), "images"),
    ("images not base64", job(images=["not base64!"]), "images"),
    ("images base64 without padding", job(images=[PNG.rstrip("=") + "A"]), "images"),
    ("images with a newline", job(images=[PNG + "\n"]), "images"),
    ("images over the count cap", job(images=[PNG] * (MAX_IMAGES + 1)), "images"),
    (
        "image over the decoded size cap",
        job(images=["AAAA" * (MAX_IMAGE_BYTES // 3 + 1)]),
        "images",
    ),
    ("format unknown", job(format="yaml"), "format"),
    ("format a list", job(format=["json"]), "format"),
    ("format on an embed job", embed(format="json"), "format"),
    ("format nested too deep", job(format={"a": nested(MAX_JSON_DEPTH)}), "format"),
    ("options a list", job(options=["temperature"]), "options"),
    ("options unknown key", job(options={"temprature": 1}), "options"),
    ("options keep_alive", job(options={"keep_alive": 0}), "options"),
    ("options num_ctx a string", job(options={"num_ctx": "8"}), "options"),
    ("options num_ctx a float", job(options={"num_ctx": 8.5}), "options"),
    ("options num_ctx zero", job(options={"num_ctx": 0}), "options"),
    ("options num_ctx too big", job(options={"num_ctx": MAX_NUM_CTX + 1}), "options"),
    ("options temperature a bool", job(options={"temperature": False}), "options"),
    ("options use_mmap a string", job(options={"use_mmap": "yes"}), "options"),
    ("options stop a string", job(options={"stop": "END"}), "options"),
    ("options stop with null", job(options={"stop": [None]}), "options"),
    ("metadata too big", job(metadata={"x": "y" * MAX_METADATA_BYTES}), "metadata"),
    ("metadata nested too deep", job(metadata=nested(MAX_JSON_DEPTH + 1)), "metadata"),
    ("idempotency_key empty", job(idempotency_key=""), "idempotency_key"),
    ("idempotency_key a number", job(idempotency_key=5), "idempotency_key"),
    (
        "idempotency_key too long",
        job(idempotency_key="k" * (MAX_IDEMPOTENCY_KEY + 1)),
        "idempotency_key",
    ),
    ("idempotency_key a lone surrogate", job(idempotency_key="\udc00"), "idempotency_key"),
    ("unknown field (typo)", job(promt="x"), "promt"),
    ("unknown field temperature", job(temperature=0), "temperature"),
    ("stream on an embed job", embed(stream=False), "stream"),
    ("stream a string", job(stream="false"), "stream"),
    ("keep_alive without a unit", job(keep_alive="300"), "keep_alive"),
    ("keep_alive a bool", job(keep_alive=True), "keep_alive"),
    ("tools on a generate job", job(tools=[]), "tools"),
    ("suffix on a chat job", chat(suffix="x"), "suffix"),
    ("dimensions on a chat job", chat(dimensions=8), "dimensions"),
    ("think unknown", chat(think="hard"), "think"),
    ("top_logprobs over 20", job(top_logprobs=21), "top_logprobs"),
    ("context with a string", job(context=["1"]), "context"),
    ("dimensions zero", embed(dimensions=0), "dimensions"),
    (
        "tool call extra key",
        chat(messages=[{"role": "assistant", "tool_calls": [{"function": {}, "x": 1}]}]),
        "messages",
    ),
    ("tool without type", chat(tools=[{"function": {"name": "f"}}]), "tools"),
]


def _send(svc: Service, path: str, body: Any) -> requests.Response:
    # ensure_ascii keeps lone surrogates as \\udXXX escapes, as a client library would send
    return svc.session.post(
        svc.url + path,
        data=json.dumps(body),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )


@pytest.mark.parametrize(("case", "body", "field"), FIELDS, ids=[c for c, _, _ in FIELDS])
def test_bad_field_is_400_naming_it(svc: Service, case: str, body: Any, field: str) -> None:
    assert_error(_send(svc, "/api/submit", body), 400, "INVALID_REQUEST", field)


@pytest.mark.parametrize(("case", "body", "field"), FIELDS[::7], ids=[c for c, _, _ in FIELDS[::7]])
def test_bad_job_in_a_batch_is_400_naming_its_index_and_field(
    svc: Service, case: str, body: Any, field: str
) -> None:
    batch = {"jobs": [job(), chat(), body, embed()]}
    err = assert_error(_send(svc, "/api/submit_batch", batch), 400, "INVALID_REQUEST", field)
    assert err["details"]["index"] == 2
    assert err["message"].startswith("jobs[2]:")


@pytest.mark.parametrize(
    ("case", "body"),
    [
        ("jobs missing", {}),
        ("jobs misspelt", {"job": [job()]}),
        ("jobs an object", {"jobs": job()}),
        ("jobs empty", {"jobs": []}),
        ("jobs over the count cap", {"jobs": [{}] * (MAX_BATCH + 1)}),
    ],
)
def test_bad_batch_is_400_naming_jobs(svc: Service, case: str, body: Any) -> None:
    assert_error(_send(svc, "/api/submit_batch", body), 400, "INVALID_REQUEST", "jobs")


def test_a_rejected_batch_stores_none_of_its_jobs(svc: Service) -> None:
    key = "batch-all-or-nothing"
    r = _send(svc, "/api/submit_batch", {"jobs": [job(idempotency_key=key), job(model="")]})
    assert_error(r, 400, "INVALID_REQUEST", "model")
    # the first job was not stored: submitting it again creates it (a new id)
    first = _send(svc, "/api/submit", job(idempotency_key=key))
    assert first.status_code == 200
    again = _send(svc, "/api/submit", job(idempotency_key=key))
    assert again.json()["job_id"] == first.json()["job_id"]


# -------------------------------------------------------------------------- body size


def _too_big() -> bytes:
    return b'{"model": "qwen2.5:0.5b", "prompt": "' + b"x" * MAX_BODY_BYTES + b'"}'


def _as_response(answer: http.client.HTTPResponse) -> requests.Response:
    r = requests.Response()
    r.status_code = answer.status
    r.headers = CaseInsensitiveDict(answer.getheaders())
    r._content = answer.read()
    return r


def _post_whole_body(url: str, path: str, size: int, *, chunked: bool) -> requests.Response:
    """POST ``size`` bytes with http.client, which (like most clients) sends the whole body
    before it reads the answer: an answer sent early is lost if the server then closes the
    connection with the body unread (the client sees a connection reset)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    block = b"x" * (1 << 20)
    body: Any
    if chunked:
        body = (block[: min(len(block), size - i)] for i in range(0, size, len(block)))
    else:
        body = block * (size // len(block)) + block[: size % len(block)]
    try:
        conn.request("POST", path, body=body, encode_chunked=chunked)
        return _as_response(conn.getresponse())
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/api/submit", "/api/submit_batch"])
def test_body_over_the_limit_with_a_declared_length_is_413(svc: Service, path: str) -> None:
    data = _too_big()
    r = requests.post(svc.url + path, data=data, timeout=60)
    assert r.request.headers["Content-Length"] == str(len(data))
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize("path", ["/api/submit", "/api/submit_batch"])
def test_body_over_the_limit_sent_chunked_is_413(svc: Service, path: str) -> None:
    data = _too_big()
    step = 1 << 20
    r = requests.post(
        svc.url + path, data=(data[i : i + step] for i in range(0, len(data), step)), timeout=60
    )
    assert r.request.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in r.request.headers
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
@pytest.mark.parametrize(
    "size", [MAX_BODY_BYTES + 1, 33 * 1024 * 1024, 60_000_000], ids=["limit+1", "33MiB", "60MB"]
)
@pytest.mark.parametrize("path", ["/api/submit", "/api/submit_batch"])
def test_body_over_the_limit_is_answered_413_after_the_whole_body_was_sent(
    svc: Service, path: str, size: int, chunked: bool
) -> None:
    """The server reads and drops the refused body, so a client that reads only after
    sending gets the JSON 413, not waitress's plain text or a reset connection."""
    r = _post_whole_body(svc.url, path, size, chunked=chunked)
    err = assert_error(r, 413, "PAYLOAD_TOO_LARGE")
    assert str(MAX_BODY_BYTES) in err["message"]
    assert r.headers["Connection"] == "close"


def _raw_exchange(url: str, head: bytes) -> bytes:
    """Send only ``head`` (request line and headers), then read until the server closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_declared_body_too_large_to_read_is_answered_at_once(svc: Service) -> None:
    """Reading a refused body is bounded: one declared beyond DRAIN_LIMIT is not waited for
    (the client gets the 413 before sending any of it; the connection then closes)."""
    head = (
        b"POST /api/submit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (DRAIN_LIMIT + 1)
    )
    answer = _raw_exchange(svc.url, head)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b'"code":"PAYLOAD_TOO_LARGE"' in answer


def test_body_too_large_after_expect_100_continue_is_refused_before_it_is_sent(
    svc: Service,
) -> None:
    """curl asks "Expect: 100-continue" for large bodies: the answer is the 413 at once,
    never a 100 Continue that would make it send 60 MB to be dropped."""
    head = (
        b"POST /api/submit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: 60000000\r\n\r\n"
    )
    answer = _raw_exchange(svc.url, head)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"100 Continue" not in answer
    assert b'"code":"PAYLOAD_TOO_LARGE"' in answer


def test_body_of_exactly_the_limit_is_read(svc: Service) -> None:
    """The limit is inclusive: a body of MAX_BODY_BYTES reaches validation (its prompt is
    too long, a 400), in the server and in the app alike."""
    head = b'{"model": "qwen2.5:0.5b", "prompt": "'
    tail = b'"}'
    data = head + b"x" * (MAX_BODY_BYTES - len(head) - len(tail)) + tail
    assert len(data) == MAX_BODY_BYTES
    r = requests.post(f"{svc.url}/api/submit", data=data, timeout=60)
    assert_error(r, 400, "INVALID_REQUEST", "prompt")


def test_chunked_body_under_the_limit_is_read(svc: Service) -> None:
    """The 413 above is about size, not about chunked transfer."""
    data = json.dumps(job(prompt="chunked")).encode()
    r = requests.post(f"{svc.url}/api/submit", data=iter([data[:10], data[10:]]), timeout=10)
    assert r.request.headers["Transfer-Encoding"] == "chunked"
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "submitted"


# ------------------------------------------------------------------ ids, routes, methods


@pytest.mark.parametrize("action", ["get", "cancel", "retry"])
@pytest.mark.parametrize(
    "job_id",
    [
        "00000000-0000-0000-0000-000000000000",
        "no-such-job",
        "x" * 5000,
        "%00",
        "%FF%FE",
        "%ED%A0%80",  # a UTF-8 encoded surrogate
        "caf%C3%A9",
        "...",
        "a%20b",
        "%27%3B%20DROP%20TABLE%20jobs%3B--",
        "%0A%5B00%3A00%3A00.000%5D%20forged",
    ],
    ids=lambda s: s[:40],
)
def test_unknown_job_id_is_404(svc: Service, action: str, job_id: str) -> None:
    if action == "get":
        r = svc.session.get(f"{svc.url}/api/job/{job_id}", timeout=10)
    else:
        r = svc.session.post(f"{svc.url}/api/job/{job_id}/{action}", timeout=10)
    err = assert_error(r, 404, "NOT_FOUND")
    assert "job_id" in err["details"]
    if "%" not in job_id:
        assert err["details"]["job_id"] == job_id


def test_cancel_or_retry_in_the_wrong_state_is_409(svc: Service) -> None:
    done = svc.wait_done([svc.submit(model=MODEL, prompt="finish me")])
    job_id, body = next(iter(done.items()))
    assert body["status"] == "complete"
    for action in ("cancel", "retry"):
        r = svc.session.post(f"{svc.url}/api/job/{job_id}/{action}", timeout=10)
        err = assert_error(r, 409, "CONFLICT")
        assert err["details"]["status"] == "complete"


@pytest.mark.parametrize(
    "path",
    [
        "/index.html",
        "/api",
        "/api/",
        "/api/nope",
        "/api/submit/",
        "/api/job/",
        "/api/job/a%2Fb",
        "/api/job/x/y/z",
        "/api/jobs/",
        "/api/generate/",
        "/v1",
        "/%00",
    ],
)
def test_unknown_route_is_404(svc: Service, path: str) -> None:
    for method in ("GET", "POST"):
        r = svc.session.request(method, svc.url + path, timeout=10)
        assert_error(r, 404, "NOT_FOUND")


ROUTES = {
    "/api/submit": {"POST"},
    "/api/submit_batch": {"POST"},
    "/api/job/some-id": {"GET"},
    "/api/jobs": {"GET"},
    "/api/job/some-id/cancel": {"POST"},
    "/api/job/some-id/retry": {"POST"},
    "/api/health": {"GET"},
    "/api/models": {"GET"},
    "/api/stats": {"GET"},
    "/api/openapi.json": {"GET"},
    "/api/v1/nodes": {"GET", "POST"},
    "/api/v1/nodes/some-id": {"DELETE"},
    "/api/v1/instances": {"GET"},
    "/api/v1/gpu/devices": {"GET"},
    "/api/v1/gpu/driver": {"GET"},
    "/api/v1/models/status": {"POST"},
    "/api/v1/models/download": {"POST"},
    "/api/v1/models": {"DELETE"},
    "/api/v1/models/list": {"GET"},
    "/api/v1/models/space": {"GET"},
    "/api/dashboard": {"GET"},
    "/metrics": {"GET"},
    "/": {"GET"},
}


def test_routes_table_covers_the_app(svc: Service) -> None:
    """ROUTES (used below) lists every route of the job API, with its methods (the front
    doors' Ollama and OpenAI routes answer in their own shapes: tests/test_*_api.py)."""
    app = create_app(svc.manager.api, svc.manager.config)
    rules: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint != "static" and rule.endpoint.split(".")[0] not in ("ollama", "openai"):
            # (static: Flask's own, for a folder the package does not have)
            methods = set(rule.methods or ()) - {"HEAD", "OPTIONS"}
            rules.setdefault(re.sub(r"<\w+>", "some-id", rule.rule), set()).update(methods)
    assert rules == ROUTES


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_wrong_method_is_405_with_allow(svc: Service, path: str) -> None:
    allowed = ROUTES[path]
    for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - allowed):
        r = svc.session.request(method, svc.url + path, json={}, timeout=10)
        err = assert_error(r, 405, "METHOD_NOT_ALLOWED")
        assert allowed <= set(err["details"]["allowed"])
        assert allowed <= {m.strip() for m in r.headers["Allow"].split(",")}


# ------------------------------------------------------------------------ /api/jobs query


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=bogus", "status"),
        ("status=PENDING", "status"),
        ("status=", "status"),
        ("limit=0", "limit"),
        ("limit=-1", "limit"),
        (f"limit={MAX_LIST + 1}", "limit"),
        ("limit=" + "9" * 5000, "limit"),
        ("limit=1e3", "limit"),
        ("limit=abc", "limit"),
        ("limit=", "limit"),
        ("limit=%00", "limit"),
        ("limit=NaN", "limit"),
        ("status=complete&limit=99999999999999999999", "limit"),
        ("stat=failed", "stat"),
        ("status=failed&colour=red", "colour"),
        ("status=failed&status=complete", "status"),
        ("limit=5&limit=6", "limit"),
        ("cursor=", "cursor"),
        ("cursor=abc", "cursor"),
        ("cursor=-1", "cursor"),
        ("cursor=1.5", "cursor"),
        ("cursor=" + "9" * 19, "cursor"),
    ],
)
def test_bad_list_query_is_400_naming_the_parameter(svc: Service, query: str, field: str) -> None:
    r = svc.session.get(f"{svc.url}/api/jobs?{query}", timeout=10)
    assert_error(r, 400, "INVALID_REQUEST", field)
    # the sentence is the user's, not the validator's (no patterns, no pydantic words)
    message = r.json()["error"]["message"]
    assert not any(word in message for word in ("pattern", "String should", "[0-9]", "pydantic"))


@pytest.mark.parametrize(
    "query",
    [
        "model=%ED%A0%80",
        "model=" + "m" * 5000,
        "model=%00",
        f"limit={MAX_LIST}",
        "cursor=0",
        "cursor=" + "9" * 18,
        "",
    ],
)
def test_odd_but_harmless_list_queries_answer_200(svc: Service, query: str) -> None:
    r = svc.session.get(f"{svc.url}/api/jobs?{query}", timeout=10)
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["jobs"], list)


# --------------------------------------------- statuses that need a service of their own


def test_queue_full_is_429_with_retry_after(sim: Any, make_service: Any) -> None:
    own: Service = make_service(sim, QUEUE_MAX_SIZE=3, MAX_CONCURRENT_PER_MODEL=1)
    sim.set_gate(True)
    ids = own.session.post(
        f"{own.url}/api/submit_batch", json={"jobs": [job()] * 2}, timeout=10
    ).json()["job_ids"]
    r = own.session.post(f"{own.url}/api/submit_batch", json={"jobs": [job()] * 2}, timeout=10)
    assert_error(r, 429, "QUEUE_FULL")
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert "room for 1 more job(s), not 2" in r.json()["error"]["message"]
    sim.set_gate(False)
    own.wait_done(ids)


def test_a_batch_larger_than_the_whole_queue_is_400_saying_to_split_it(
    sim: Any, make_service: Any
) -> None:
    """Retrying would never help, so it is not a 429 with Retry-After."""
    own: Service = make_service(sim, QUEUE_MAX_SIZE=3)
    r = own.session.post(f"{own.url}/api/submit_batch", json={"jobs": [job()] * 4}, timeout=10)
    assert_error(r, 400, "INVALID_REQUEST", "jobs")
    assert "Retry-After" not in r.headers
    assert "QUEUE_MAX_SIZE is 3" in r.json()["error"]["message"]
    assert own.session.get(f"{own.url}/api/jobs", timeout=10).json()["jobs"] == []


def test_shutting_down_is_503_with_retry_after(sim: Any, make_service: Any) -> None:
    own: Service = make_service(sim)
    own.manager.stop(timeout=5.0)
    for path, body in (("/api/submit", job()), ("/api/submit_batch", {"jobs": [job()]})):
        r = own.session.post(own.url + path, json=body, timeout=10)
        assert_error(r, 503, "BACKEND_UNAVAILABLE")
        assert int(r.headers["Retry-After"]) >= 1


def test_missing_api_key_is_401_in_the_error_shape_on_every_route(
    sim: Any, make_service: Any
) -> None:
    own: Service = make_service(sim, API_KEY="k" * 24)
    for path, methods in ROUTES.items():
        for method in methods:
            r = own.session.request(method, own.url + path, json=job(), timeout=10)
            if path in ("/api/health", "/"):  # "/": Ollama's "is running", or the page
                assert r.status_code == 200
                continue
            assert_error(r, 401, "UNAUTHORIZED")
            assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_no_error_path_leaks_a_stack_trace_even_on_an_internal_error(
    sim: Any, make_service: Any
) -> None:
    """An unexpected exception is a 500 in the error shape with nothing of the trace."""
    own: Service = make_service(sim)

    def boom() -> dict[str, Any]:
        raise RuntimeError("secret internal detail /etc/passwd")

    own.manager.api.models = boom  # type: ignore[method-assign]
    r = own.session.get(f"{own.url}/api/models", timeout=10)
    err = assert_error(r, 500, "INTERNAL_ERROR")
    assert "secret" not in r.text and err["details"] == {}
