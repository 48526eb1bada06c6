"""Property-based and OpenAPI fuzz tests: nothing a client sends gives a 5xx.

* hypothesis posts random JSON, random bytes and mutated valid submissions to the running
  service; the HTTP answer must agree with the pure validator (200 when it accepts, 400 in
  the error shape naming the same field when it refuses).
* the OpenAPI document's model-name pattern accepts exactly the names the validator
  accepts (Ollama's grammar as ``names.parse`` reads it).
* schemathesis generates valid and invalid requests for every operation of the served
  ``/api/openapi.json`` and calls the Flask app in-process (WSGI): no 5xx, every response
  matches the document (status, content type, headers, body schema), invalid data refused.

Every run is derandomized with a fixed example count, so CI sees the same cases each time.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from modelmanager import http_api
from modelmanager.contract import (
    FIELDS,
    MAX_JSON_DEPTH,
    MAX_MODEL_NAME,
    frontdoors,
    openapi,
    validate_model_name,
    validate_submission,
)
from modelmanager.contract import fields as contract_fields
from modelmanager.contract.fields import MAX_IMAGE_BYTES
from modelmanager.contract.openapi import openapi_document
from modelmanager.errors import InvalidRequest
from modelmanager.http_api import create_app
from tests.conftest import Service

# Fixed examples, no shrinking database, no deadline (a 2-core CI box stalls now and then).
FUZZ = settings(max_examples=120, derandomize=True, deadline=None, database=None)
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    negative_data_rejection,
    positive_data_acceptance,
]
UNKNOWN_MODELS = ["fuzz-a:1b", "fuzz/b", "host.local:5000/team/fuzz-c:q4"]  # fail at once


# ------------------------------------------------------------------------ model names


def _validator_accepts(name: str) -> bool:
    try:
        validate_model_name(name)
    except InvalidRequest as exc:
        assert exc.details == {"field": "model"}
        return False
    return True


def _documented(name: str) -> bool:
    """Whether the OpenAPI document's model-name schema (one of its anyOf branches, each
    a pattern and a maxLength) accepts ``name``."""
    doc = openapi_document()["components"]["schemas"]["GenerateJob"]["properties"]["model"]
    return bool(name) and any(
        re.fullmatch(branch["pattern"].strip("^$"), name) and len(name) <= branch["maxLength"]
        for branch in doc["anyOf"]
    )


_part = st.text(alphabet="aZ9_.-", min_size=1, max_size=12)
_names_built = st.builds(
    lambda scheme, host, port, ns, model, tag: (
        scheme + (f"{host}{port}/" if host else "") + (f"{ns}/" if ns else "") + model + tag
    ),
    st.sampled_from(["", "", "http://", "https://", "HTTP://", "ftp://"]),
    st.one_of(st.just(""), _part),
    st.sampled_from(["", ":5000", ":", ":x"]),
    st.one_of(st.just(""), st.text(alphabet="aZ9_-.", min_size=1, max_size=8)),
    _part,
    st.one_of(st.just(""), _part.map(lambda t: f":{t}")),
)
_names_random = st.text(alphabet="ab9_.-:/@+ \n\x00é", max_size=MAX_MODEL_NAME + 8)
_names_long = st.integers(MAX_MODEL_NAME - 2, MAX_MODEL_NAME + 10).flatmap(
    lambda n: st.sampled_from(["", "http://", "https://"]).map(lambda p: p + "m" * n)
)


@given(name=st.one_of(_names_built, _names_random, _names_long, st.text(max_size=30)))
@settings(max_examples=1500, derandomize=True, deadline=None, database=None)
def test_documented_model_name_pattern_is_the_validators_grammar(name: str) -> None:
    assert _documented(name) is _validator_accepts(name), name


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("llama3.2:1b", True),
        ("hf.co/org/model:Q4_K_M", True),
        ("m" * MAX_MODEL_NAME, True),
        ("m" * (MAX_MODEL_NAME + 1), False),
        ("https://" + "m" * MAX_MODEL_NAME, True),  # the limit is on the name, not the scheme
        ("http://host/team/model", True),  # Ollama drops the scheme
        ("h/team.x/model", False),  # the namespace has no dots
        ("a..b", True),  # dots in a row are letters like any other (isValidPart)
        ("-a", False),  # a part starts with a letter, digit or "_"
        ("localhost:5000/team/model", True),  # a port in the host
        ("team:1/model", False),  # ... and nowhere else
        ("model:", False),
        ("a/b/c/d", False),
        ("host:/m", False),
        ("llama3@sha256:abc", False),
    ],
)
def test_model_name_examples(name: str, ok: bool) -> None:
    assert _validator_accepts(name) is ok
    assert _documented(name) is ok


def test_documented_duration_pattern_is_the_keep_alive_grammar() -> None:
    pattern = contract_fields.DURATION_PATTERN.strip("^$")

    @given(text=st.one_of(st.from_regex(pattern, fullmatch=True), st.text("0123456789.+-smhnuµ")))
    @settings(max_examples=400, derandomize=True, deadline=None, database=None)
    def check(text: str) -> None:
        try:
            contract_fields.keep_alive_seconds(text)
            accepted = True
        except ValueError:
            accepted = False
        assert accepted is bool(re.fullmatch(pattern, text)), text

    check()


# --------------------------------------------------------------- random bodies over HTTP

_json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    _json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=16,
)
# objects whose keys are mostly real field names, so that validation goes deep
field_objects = st.dictionaries(
    st.one_of(st.sampled_from(sorted(FIELDS)), st.text(max_size=8)), json_values, max_size=7
)


def _expected(body: Any) -> InvalidRequest | None:
    """What the validator says of ``body`` as the server will read it: through JSON, where
    a surrogate pair written as two escapes comes back as one character."""
    try:
        validate_submission(json.loads(json.dumps(body)))
    except InvalidRequest as exc:
        return exc
    return None


def _check_answer(r: requests.Response, problem: InvalidRequest | None, index: int | None) -> None:
    assert r.status_code < 500, r.text[:300]
    if problem is None:
        assert r.status_code == 200, r.text[:300]
        return
    assert r.status_code == 400, r.text[:300]
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert list(body) == ["error"] and sorted(body["error"]) == ["code", "details", "message"]
    err = body["error"]
    assert err["code"] == "INVALID_REQUEST" and err["message"]
    assert err["details"].get("field") == problem.details.get("field"), (err, problem.details)
    if index is not None:
        assert err["details"]["index"] == index


def _post(svc: Service, path: str, body: Any) -> requests.Response:
    return svc.session.post(
        svc.url + path,
        data=json.dumps(body),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )


@pytest.fixture
def fuzz_service(sim: Any, make_service: Any) -> Service:
    return make_service(sim, QUEUE_MAX_SIZE=100_000, SQLITE_SYNCHRONOUS="NORMAL")  # type: ignore[no-any-return]


def test_random_json_bodies_get_the_validators_answer(fuzz_service: Service) -> None:
    svc = fuzz_service

    @given(body=st.one_of(json_values, field_objects))
    @FUZZ
    def check(body: Any) -> None:
        _check_answer(_post(svc, "/api/submit", body), _expected(body), None)
        r = _post(svc, "/api/submit_batch", body)
        assert r.status_code < 500, r.text[:300]
        if not (isinstance(body, dict) and "jobs" in body):
            assert r.status_code == 400 and r.json()["error"]["details"]["field"] == "jobs"

    check()


def test_random_bytes_never_give_a_server_error(fuzz_service: Service) -> None:
    svc = fuzz_service

    @given(raw=st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode)))
    @FUZZ
    def check(raw: bytes) -> None:
        for path in ("/api/submit", "/api/submit_batch"):
            r = svc.session.post(svc.url + path, data=raw, timeout=30)
            assert r.status_code < 500, r.text[:300]
            if r.status_code != 200:
                assert r.json()["error"]["code"] in ("INVALID_REQUEST", "PAYLOAD_TOO_LARGE")

    check()


# any code point, lone surrogates included (JSON can carry "\ud800"; UTF-8 cannot)
_any_text = st.text(
    st.characters(categories=["L", "M", "N", "P", "S", "Z", "Cc", "Cs"]), max_size=12
)
_text = st.text(min_size=1, max_size=20).filter(str.strip)
_model = st.sampled_from(UNKNOWN_MODELS)
_options = st.fixed_dictionaries(
    {}, optional={"temperature": st.floats(0, 2), "seed": st.integers(0, 99)}
)
_valid_common = {
    "priority": st.sampled_from(["high", "normal", "low"]),
    "metadata": json_values,
    "options": _options,
    "idempotency_key": st.one_of(st.uuids().map(str), _any_text),
    "keep_alive": st.one_of(st.integers(-5, 600), st.sampled_from(["5m", "1h30m", "-1s", "0"])),
}
_think = st.one_of(st.booleans(), st.sampled_from(["low", "medium", "high", "max"]))
_tool_call = st.fixed_dictionaries(
    {"function": st.fixed_dictionaries({"name": _text, "arguments": st.just({"a": 1})})},
    optional={"id": _any_text},
)
valid_jobs = st.one_of(
    st.fixed_dictionaries(
        {"model": _model, "prompt": _text},
        optional={
            **_valid_common,
            "kind": st.just("generate"),
            "system": _any_text,
            "suffix": _any_text,
            "context": st.lists(st.integers(0, 2**20), max_size=3),
            "raw": st.booleans(),
            "think": _think,
            "stream": st.booleans(),
            "top_logprobs": st.integers(0, 20),
        },
    ),
    st.fixed_dictionaries(
        {
            "model": _model,
            "messages": st.lists(
                st.fixed_dictionaries(
                    {"role": st.sampled_from(["system", "user", "assistant", "tool"])},
                    optional={
                        "content": _any_text,
                        "thinking": _any_text,
                        "tool_calls": st.lists(_tool_call, max_size=2),
                        "tool_name": _text,
                    },
                ),
                min_size=1,
                max_size=3,
            ),
        },
        optional={
            **_valid_common,
            "kind": st.just("chat"),
            "format": st.just("json"),
            "think": _think,
            "truncate": st.booleans(),
            "logprobs": st.booleans(),
        },
    ),
    st.fixed_dictionaries(
        {
            "model": _model,
            "input": st.one_of(_text, st.lists(_text, min_size=1, max_size=3)),
        },
        optional={
            **_valid_common,
            "kind": st.just("embed"),
            "truncate": st.booleans(),
            "dimensions": st.integers(1, 4096),
        },
    ),
)
_odd_strings = st.sampled_from(
    ["", " ", "\x00", "a\x00", "\ud800", "x\udfff", "é", "\n[00:00:00.000] [API] forged"]
)


def _nest(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


@st.composite
def mutated_jobs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid job, then none, one or two mutations of the kinds clients get wrong."""
    job: dict[str, Any] = dict(draw(valid_jobs))
    for _ in range(draw(st.integers(0, 2))):
        how = draw(st.sampled_from(["drop", "retype", "add", "odd", "deep", "swap"]))
        key = draw(st.sampled_from(sorted(job)))
        if how == "drop":
            job.pop(key, None)
        elif how == "retype":
            job[key] = draw(json_values)
        elif how == "add":
            job[draw(st.one_of(st.sampled_from(sorted(FIELDS)), st.text(max_size=6)))] = draw(
                json_values
            )
        elif how == "odd":
            job[draw(st.sampled_from(sorted(FIELDS)))] = draw(_odd_strings)
        elif how == "deep":
            job[draw(st.sampled_from(["metadata", "format"]))] = _nest(
                draw(st.integers(MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH + 2))
            )
        else:
            other = draw(st.sampled_from(["prompt", "messages", "input", "kind"]))
            job[other] = job.pop(key, None)
    return job


def test_mutated_submissions_get_the_validators_answer(fuzz_service: Service) -> None:
    svc = fuzz_service

    @given(body=mutated_jobs())
    @FUZZ
    def check(body: dict[str, Any]) -> None:
        _check_answer(_post(svc, "/api/submit", body), _expected(body), None)

    check()


STRING_FIELDS = [
    "model",
    "priority",
    "kind",
    "prompt",
    "system",
    "suffix",
    "template",
    "input",
    "idempotency_key",
    "keep_alive",
    "think",
]


@pytest.mark.parametrize("field", [*STRING_FIELDS, "content", "stop"])
def test_any_string_in_a_string_field_gets_the_validators_answer(
    fuzz_service: Service, field: str
) -> None:
    """Strings of any code point, lone surrogates and NUL included, in one string field."""
    svc = fuzz_service

    @given(value=st.one_of(_odd_strings, _any_text))
    @settings(FUZZ, max_examples=40)
    def check(value: str) -> None:
        body: dict[str, Any] = {"model": UNKNOWN_MODELS[0], "prompt": "x"}
        if field == "input":
            body = {"model": UNKNOWN_MODELS[0], "input": value}
        elif field == "content":
            body = {"model": UNKNOWN_MODELS[0], "messages": [{"role": "user", "content": value}]}
        elif field == "stop":
            body["options"] = {"stop": [value]}
        else:
            body[field] = value
        _check_answer(_post(svc, "/api/submit", body), _expected(body), None)

    check()


def test_mutated_batches_get_the_validators_answer(fuzz_service: Service) -> None:
    svc = fuzz_service

    @given(jobs=st.lists(mutated_jobs(), min_size=1, max_size=4))
    @FUZZ
    def check(jobs: list[dict[str, Any]]) -> None:
        problems = [_expected(j) for j in jobs]
        first = next((i for i, p in enumerate(problems) if p is not None), None)
        r = _post(svc, "/api/submit_batch", {"jobs": jobs})
        _check_answer(r, None if first is None else problems[first], first)
        if first is None:
            assert r.json()["count"] == len(jobs)

    check()


# -------------------------------------------------------------------- OpenAPI document


def test_served_document_is_the_openapi_document(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    r = requests.get(f"{svc.url}/api/openapi.json", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.json() == openapi_document()
    assert openapi.MAX_BODY_BYTES == http_api.MAX_BODY_BYTES
    longest = contract_fields.MAX_IMAGE_CHARS
    assert longest * 3 // 4 <= MAX_IMAGE_BYTES < (longest + 1) * 3 // 4


def test_document_describes_every_route_and_method(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    app = create_app(svc.manager.api, svc.manager.config)
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint != "static":
            methods = {m.lower() for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
            routes.setdefault(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), set()).update(
                methods
            )
    documented = {path: set(item) for path, item in openapi_document()["paths"].items()}
    assert documented == routes
    # and every operation documents its error answers in the one shape
    for path, item in openapi_document()["paths"].items():
        for method, op in item.items():
            errors = [s for s in op["responses"] if s.startswith(("4", "5"))]
            # health and "/" (Ollama's "is running", the dashboard's page) need no key
            assert path in ("/api/health", "/") or "401" in errors, (method, path)
            for status in errors:
                ref = op["responses"][status]["$ref"]
                assert ref.startswith("#/components/responses/"), ref


OPERATIONS = [(m, p) for p, item in openapi_document()["paths"].items() for m in item]
REGISTER = ("post", "/api/v1/nodes")
FRONT_DOORS = set(frontdoors.paths())  # Ollama's API and the OpenAI-compatible API


@pytest.fixture
def wsgi_schema(sim: Any, make_service: Any) -> tuple[Any, Service]:
    """The served document loaded by schemathesis over the app in-process (WSGI), and the
    service whose manager the app fronts."""
    svc: Service = make_service(sim)
    app = create_app(svc.manager.api, svc.manager.config)
    return schemathesis.openapi.from_wsgi("/api/openapi.json", app), svc


def _real_job_ids(svc: Service) -> list[str]:
    """One complete and one failed job, so that job operations also reach 200 and 409."""
    done = svc.wait_done(
        [svc.submit(model="qwen2.5:0.5b", prompt="ok"), svc.submit(model="fuzz-x", prompt="no")]
    )
    assert sorted(body["status"] for body in done.values()) == ["complete", "failed"]
    return sorted(done)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(
    wsgi_schema: tuple[Any, Service], method: str, path: str
) -> None:
    schema, svc = wsgi_schema
    operation = schema[path][method]
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    if (method, path) == REGISTER:
        # a valid registration waits for its node's Ollama: only one that answers at once
        node = {"name": "fuzz-node", "url": svc.manager.config.OLLAMA_BASE_URL}
        strategies[0] = operation.as_strategy(GenerationMode.POSITIVE, body=node)
    if "{name}" in path:  # the node from the settings: removing it through the API is a 409
        strategies.append(
            operation.as_strategy(GenerationMode.POSITIVE, path_parameters={"name": "local"})
        )
    if "{job_id}" in path:
        strategies += [
            operation.as_strategy(GenerationMode.POSITIVE, path_parameters={"job_id": job_id})
            for job_id in _real_job_ids(svc)
        ]
    if (method, path) == ("delete", "/api/v1/models"):  # a model the node has: 200, then 404
        strategies.append(
            operation.as_strategy(GenerationMode.POSITIVE, body={"model": "tinyllama:1.1b"})
        )
    seen: set[int] = set()

    @given(case=st.one_of(strategies))
    @settings(FUZZ, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
    def check(case: Any) -> None:
        response = case.call_and_validate(checks=CHECKS)
        seen.add(response.status_code)

    check()
    # the run reached the answers that matter, not only refusals of malformed input
    if path in FRONT_DOORS:  # a generated model name is not installed: Ollama's 404
        assert seen & {200, 403, 404}, seen
    else:
        assert seen & {200, 201, 202, 409}, seen
    if "{job_id}" in path:
        assert {404, 409} <= seen or {404, 200} <= seen, seen


COVERED = [(m, p) for m, p in OPERATIONS if p != "/api/submit"]  # submit's takes ~30 s to build


@pytest.mark.parametrize(("method", "path"), COVERED, ids=[f"{m} {p}" for m, p in COVERED])
def test_schemathesis_coverage_cases_boundaries_and_wrong_methods(
    wsgi_schema: tuple[Any, Service], method: str, path: str
) -> None:
    """schemathesis' coverage phase: values at and past each documented bound, missing and
    mistyped parameters, and the methods the path does not allow (405 with ``Allow``)."""
    schema, _ = wsgi_schema
    operation = schema[path][method]
    # valid registrations wait up to startup_timeout_s for made-up hosts: refusals only
    modes = [GenerationMode.NEGATIVE]
    if (method, path) != REGISTER:
        modes.insert(0, GenerationMode.POSITIVE)
    cases = list(
        schema.iter_coverage_cases(
            operation,
            generation_modes=modes,
            generation_config=schema.config.generation_for(operation=operation, phase="coverage"),
        )
    )
    assert cases
    for case in cases:
        case.call_and_validate(checks=[*CHECKS, unsupported_method])
