"""Submission validation: a corpus of bad bodies, each a 400 naming its field; good ones."""

from __future__ import annotations

import base64
import math
from typing import Any

import pytest

from modelmanager.errors import InvalidRequest
from modelmanager.models import JobKind, Priority
from modelmanager.validation import (
    MAX_IDEMPOTENCY_KEY,
    MAX_METADATA_BYTES,
    MAX_MODEL_NAME,
    MAX_NUM_CTX,
    MAX_TEXT_BYTES,
    validate_model_name,
    validate_submission,
)

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake image bytes").decode()


def body(**fields: Any) -> dict[str, Any]:
    """A valid generate submission with ``fields`` replaced (``...`` removes a field)."""
    out: dict[str, Any] = {"model": "llama3.2:1b", "prompt": "Why is the sky blue?"}
    out.update(fields)
    return {k: v for k, v in out.items() if v is not ...}


def chat(**fields: Any) -> dict[str, Any]:
    return body(**{"prompt": ..., "messages": [{"role": "user", "content": "hi"}], **fields})


def embed(**fields: Any) -> dict[str, Any]:
    return body(**{"prompt": ..., "input": "some text", **fields})


BAD: list[tuple[str, Any, str]] = [
    # (case, body, field named in details)
    ("missing model", body(model=...), "model"),
    ("empty model", body(model=""), "model"),
    ("model with a space", body(model="llama 3"), "model"),
    ("model with ..", body(model="../etc/passwd"), "model"),
    ("model with .. inside", body(model="llama..3"), "model"),
    ("model too long", body(model="m" * (MAX_MODEL_NAME + 1)), "model"),
    ("model with four parts", body(model="a/b/c/d"), "model"),
    ("model with a newline", body(model="llama3.2:1b\n"), "model"),
    ("model with an inner newline", body(model="llama\n3"), "model"),
    ("model not a string", body(model=42), "model"),
    ("model a list", body(model=["llama3.2"]), "model"),
    ("model with empty tag", body(model="llama3.2:"), "model"),
    ("model starting with -", body(model="-rf"), "model"),
    ("priority unknown", body(priority="urgent"), "priority"),
    ("priority upper case", body(priority="HIGH"), "priority"),
    ("priority a number", body(priority=1), "priority"),
    ("priority null", body(priority=None), "priority"),
    ("kind unknown", body(kind="complete"), "kind"),
    ("kind a list", body(kind=["chat"]), "kind"),
    ("no prompt, messages or input", body(prompt=...), "prompt"),
    ("kind chat with a prompt", body(kind="chat"), "messages"),
    ("kind embed with a prompt", body(kind="embed"), "input"),
    ("kind generate with messages", chat(kind="generate"), "prompt"),
    (
        "messages on a generate job",
        body(kind="generate", messages=[{"role": "user", "content": "x"}]),
        "messages",
    ),
    ("prompt beside messages", chat(prompt="also"), "prompt"),
    ("images on an embed job", embed(images=[PNG]), "images"),
    ("system on a chat job", chat(system="be brief"), "system"),
    ("format on an embed job", embed(format="json"), "format"),
    ("format unknown", body(format="xml"), "format"),
    ("empty prompt", body(prompt=""), "prompt"),
    ("blank prompt", body(prompt="  \n\t"), "prompt"),
    ("prompt a number", body(prompt=5), "prompt"),
    ("prompt a list", body(prompt=["a", "b"]), "prompt"),
    ("prompt with NUL", body(prompt="a\x00b"), "prompt"),
    ("prompt oversized", body(prompt="x" * (MAX_TEXT_BYTES + 1)), "prompt"),
    ("prompt oversized in UTF-8", body(prompt="é" * (MAX_TEXT_BYTES // 2 + 1)), "prompt"),
    ("system not a string", body(system=["x"]), "system"),
    ("messages not a list", chat(messages="hello"), "messages"),
    ("messages empty", chat(messages=[]), "messages"),
    ("message not an object", chat(messages=["hello"]), "messages"),
    ("message bad role", chat(messages=[{"role": "robot", "content": "x"}]), "messages"),
    ("message no role", chat(messages=[{"content": "x"}]), "messages"),
    (
        "message unknown field",
        chat(messages=[{"role": "user", "content": "x", "name": "bob"}]),
        "messages",
    ),
    ("message content a number", chat(messages=[{"role": "user", "content": 3}]), "messages"),
    (
        "message images not base64",
        chat(messages=[{"role": "user", "content": "x", "images": ["not base64!"]}]),
        "messages",
    ),
    ("input empty list", embed(input=[]), "input"),
    ("input empty string", embed(input=""), "input"),
    ("input a number", embed(input=7), "input"),
    ("input item not a string", embed(input=["ok", 3]), "input"),
    ("input item empty", embed(input=["ok", ""]), "input"),
    ("images not a list", body(images=PNG), "images"),
    ("images not base64", body(images=["not base64!"]), "images"),
    ("images item empty", body(images=[""]), "images"),
    ("images item a number", body(images=[1]), "images"),
    ("options not an object", body(options=["temperature"]), "options"),
    ("unknown option", body(options={"temprature": 0.5}), "options"),
    ("num_ctx a string", body(options={"num_ctx": "4096"}), "options"),
    ("num_ctx a float", body(options={"num_ctx": 4096.0}), "options"),
    ("num_ctx a bool", body(options={"num_ctx": True}), "options"),
    ("num_ctx zero", body(options={"num_ctx": 0}), "options"),
    ("num_ctx too big", body(options={"num_ctx": MAX_NUM_CTX + 1}), "options"),
    ("temperature a bool", body(options={"temperature": True}), "options"),
    ("temperature a string", body(options={"temperature": "0.7"}), "options"),
    ("temperature NaN", body(options={"temperature": math.nan}), "options"),
    ("top_p infinite", body(options={"top_p": math.inf}), "options"),
    ("use_mmap an int", body(options={"use_mmap": 1}), "options"),
    ("stop a string", body(options={"stop": "\n"}), "options"),
    ("stop with a number", body(options={"stop": ["\n", 3]}), "options"),
    ("unknown field (typo)", body(promt="hi"), "promt"),
    ("unknown field", body(stream=True), "stream"),
    ("metadata too big", body(metadata={"blob": "x" * MAX_METADATA_BYTES}), "metadata"),
    ("idempotency_key empty", body(idempotency_key=""), "idempotency_key"),
    ("idempotency_key a number", body(idempotency_key=12), "idempotency_key"),
    (
        "idempotency_key too long",
        body(idempotency_key="k" * (MAX_IDEMPOTENCY_KEY + 1)),
        "idempotency_key",
    ),
]


@pytest.mark.parametrize(("case", "bad", "field"), BAD, ids=[c for c, _, _ in BAD])
def test_validate_submission_rejects_bad_field(case: str, bad: Any, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_submission(bad)
    err = info.value
    # the field may be narrowed to an element, as in "input[1]" or "messages[0].content"
    named = err.details.get("field", "")
    assert named == field or named.startswith((f"{field}[", f"{field}.")), (case, named)
    assert err.status == 400 and err.code == "INVALID_REQUEST"
    assert err.message  # a readable sentence


@pytest.mark.parametrize("bad", [None, [], "prompt", 3])
def test_validate_submission_rejects_a_body_that_is_not_an_object(bad: Any) -> None:
    with pytest.raises(InvalidRequest, match="JSON object"):
        validate_submission(bad)


def test_validate_submission_names_the_unknown_field_in_the_message() -> None:
    with pytest.raises(InvalidRequest, match="promt"):
        validate_submission(body(promt="hi"))


@pytest.mark.parametrize(
    ("good", "kind"),
    [
        (body(), JobKind.GENERATE),
        (chat(), JobKind.CHAT),
        (embed(), JobKind.EMBED),
        (embed(input=["a", "b"]), JobKind.EMBED),
        (body(kind="generate"), JobKind.GENERATE),
        (chat(kind="chat"), JobKind.CHAT),
        (embed(kind="embed"), JobKind.EMBED),
    ],
)
def test_validate_submission_infers_the_kind_from_the_body(good: Any, kind: JobKind) -> None:
    assert validate_submission(good).kind is kind


@pytest.mark.parametrize(
    "name",
    [
        "llama3.2:1b",
        "llama3.2",
        "phi3:mini",
        "all-minilm:latest",
        "library/llama3.2:1b",
        "hf.co/org/model:Q4",
        "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
        "registry.local:5000/team/model:v1.2",
        "m" * MAX_MODEL_NAME,
    ],
)
def test_validate_model_name_accepts_ollama_names(name: str) -> None:
    assert validate_model_name(name) == name
    assert validate_submission(body(model=name)).model == name


def test_validate_submission_returns_a_clean_generate_payload() -> None:
    sub = validate_submission(
        body(
            priority="high",
            images=[PNG],
            system="be brief",
            format={"type": "object"},
            options={"temperature": 0, "top_p": 0.9, "num_ctx": 4096, "stop": ["\n"]},
            metadata={"run": 1},
            idempotency_key="run-1-q-7",
        )
    )
    assert sub.priority is Priority.HIGH
    assert sub.payload == {
        "prompt": "Why is the sky blue?",
        "images": [PNG],
        "system": "be brief",
        "format": {"type": "object"},
        "options": {"temperature": 0, "top_p": 0.9, "num_ctx": 4096, "stop": ["\n"]},
    }
    assert sub.metadata == {"run": 1}
    assert sub.idempotency_key == "run-1-q-7"


def test_validate_submission_defaults() -> None:
    sub = validate_submission(body())
    assert sub.priority is Priority.NORMAL
    assert sub.metadata is None and sub.idempotency_key is None
    assert sub.payload == {"prompt": "Why is the sky blue?"}


def test_validate_submission_chat_keeps_only_known_message_fields() -> None:
    messages = [
        {"role": "system", "content": "terse"},
        {"role": "user", "content": "look", "images": [PNG]},
        {"role": "assistant"},  # content defaults to ""
    ]
    sub = validate_submission(chat(messages=messages, format="json"))
    assert sub.payload == {
        "messages": [
            {"role": "system", "content": "terse"},
            {"role": "user", "content": "look", "images": [PNG]},
            {"role": "assistant", "content": ""},
        ],
        "format": "json",
    }


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 1},  # an int is a number
        {"seed": -1, "num_predict": 128, "top_k": 40},
        {"num_ctx": 1},
        {"num_ctx": MAX_NUM_CTX},
        {"use_mmap": False},
        {"stop": []},
    ],
)
def test_validate_submission_accepts_good_options(options: dict[str, Any]) -> None:
    assert validate_submission(body(options=options)).payload["options"] == options


def test_validate_submission_accepts_limits_exactly() -> None:
    sub = validate_submission(
        body(prompt="x" * MAX_TEXT_BYTES, idempotency_key="k" * MAX_IDEMPOTENCY_KEY)
    )
    assert len(sub.payload["prompt"]) == MAX_TEXT_BYTES
