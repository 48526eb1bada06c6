"""Submission validation (``modelmanager.contract``): a corpus of bad bodies, each a 400
naming its field in a readable sentence; good ones, with every field Ollama accepts per
kind, forwarded unchanged."""

from __future__ import annotations

import base64
import math
from typing import Any

import pytest

from modelmanager.contract import (
    MAX_IDEMPOTENCY_KEY,
    MAX_METADATA_BYTES,
    MAX_MODEL_NAME,
    MAX_NUM_CTX,
    MAX_TEXT_BYTES,
    validate_model_name,
    validate_submission,
)
from modelmanager.errors import InvalidRequest
from modelmanager.models import JobKind, Priority

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
    ("model starting with a dash", body(model="-llama3"), "model"),
    ("model with a port in its namespace", body(model="team:1/llama3"), "model"),
    ("namespace with a dot", body(model="host/te.am/llama3"), "model"),
    ("model too long", body(model="m" * (MAX_MODEL_NAME + 1)), "model"),
    ("model with four parts", body(model="a/b/c/d"), "model"),
    ("model with a newline", body(model="llama3.2:1b\n"), "model"),
    ("model with an inner newline", body(model="llama\n3"), "model"),
    ("model not a string", body(model=42), "model"),
    ("model a list", body(model=["llama3.2"]), "model"),
    ("model with empty tag", body(model="llama3.2:"), "model"),
    ("model with a digest", body(model="llama3@sha256:abc"), "model"),
    ("priority unknown", body(priority="urgent"), "priority"),
    ("priority upper case", body(priority="HIGH"), "priority"),
    ("priority a number", body(priority=1), "priority"),
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
    ("unknown field", body(temperature=0.5), "temperature"),
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
        "Qwen2.5:Latest",
        "https://registry.local/team/model:v1.2",
        "localhost:5000/team/model",  # a host with its port (types/model/name.go)
        "registry.local:443/team/model:v1",
        "_private/model",  # a part may start with "_"
        "a..b:1",  # dots in a row are letters like any other
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


@pytest.mark.parametrize(
    ("make", "nulls", "kept"),
    [
        (body, {"system": None, "priority": None, "truncate": None}, {}),
        (body, {"options": {"temperature": None, "seed": 3}}, {"options": {"seed": 3}}),
        (
            chat,
            {"messages": [{"role": "assistant", "content": None, "tool_calls": None}]},
            {"messages": [{"role": "assistant"}]},
        ),
        (body, {"format": {"type": "object", "default": None}}, None),  # inside JSON: kept
        (body, {"metadata": {"note": None}}, None),
    ],
)
def test_validate_submission_reads_null_as_absent_as_ollama_does(
    make: Any, nulls: dict[str, Any], kept: dict[str, Any] | None
) -> None:
    """Go decodes a null field to its zero value and Options.FromMap skips null options,
    so OpenAI-style messages (``"content": null`` beside tool calls) are accepted."""
    sub = validate_submission(make(**nulls))
    assert sub.priority is Priority.NORMAL
    expected = nulls if kept is None else kept
    for key, value in expected.items():
        if key == "metadata":
            assert sub.metadata == value
        else:
            assert sub.payload[key] == value
    for key in set(nulls) - set(expected):
        assert key not in sub.payload


def test_an_unknown_option_is_named_in_the_message_and_the_field_alike() -> None:
    with pytest.raises(InvalidRequest) as err:
        validate_submission(body(options={"zeta_x": 1, "alpha_x": 2, "temperature": 1}))
    assert err.value.details["field"] == "options.alpha_x"
    assert "'options.alpha_x'" in err.value.message


def test_validate_submission_chat_forwards_messages_as_sent() -> None:
    messages = [
        {"role": "system", "content": "terse"},
        {"role": "user", "content": "look", "images": [PNG]},
        {"role": "assistant"},  # Ollama reads a missing content as ""
    ]
    sub = validate_submission(chat(messages=messages, format="json"))
    assert sub.payload == {"messages": messages, "format": "json"}


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 1},  # an int is a number
        {"seed": -1, "num_predict": 128, "top_k": 40},
        {"num_ctx": 1},
        {"num_ctx": MAX_NUM_CTX},
        {"use_mmap": False},
        {"stop": []},
        {"numa": False, "use_mlock": True, "low_vram": False},  # older Ollama versions'
    ],
)
def test_validate_submission_accepts_good_options(options: dict[str, Any]) -> None:
    assert validate_submission(body(options=options)).payload["options"] == options


def test_validate_submission_accepts_limits_exactly() -> None:
    sub = validate_submission(
        body(prompt="x" * MAX_TEXT_BYTES, idempotency_key="k" * MAX_IDEMPOTENCY_KEY)
    )
    assert len(sub.payload["prompt"]) == MAX_TEXT_BYTES


# ------------------------------------------------------------ every field Ollama accepts

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TOOL_CALL = {"id": "call_1", "function": {"index": 0, "name": "get_weather", "arguments": {}}}
GENERATE_FIELDS: dict[str, Any] = {
    "prompt": "def add(a, b):",
    "suffix": "    return c",
    "system": "complete the code",
    "template": "{{ .Prompt }}",
    "context": [1, 2, 3],
    "raw": True,
    "format": {"type": "object", "properties": {"x": {"type": "integer"}}},
    "images": [PNG],
    "think": "high",
    "truncate": False,
    "shift": True,
    "logprobs": True,
    "top_logprobs": 5,
    "options": {"temperature": 0.1},
}
CHAT_FIELDS: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "use tools"},
        {"role": "user", "content": "weather in Paris?", "images": [PNG]},
        {"role": "assistant", "content": "", "thinking": "call it", "tool_calls": [TOOL_CALL]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather", "tool_call_id": "call_1"},
    ],
    "tools": [TOOL],
    "format": "json",
    "think": True,
    "truncate": True,
    "shift": False,
    "logprobs": False,
    "top_logprobs": 0,
    "options": {"num_ctx": 8192},
}
EMBED_FIELDS: dict[str, Any] = {
    "input": ["a", "b"],
    "truncate": False,
    "dimensions": 256,
    "options": {"num_thread": 4},
}


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        (GENERATE_FIELDS, JobKind.GENERATE),
        (CHAT_FIELDS, JobKind.CHAT),
        (EMBED_FIELDS, JobKind.EMBED),
    ],
)
def test_validate_submission_forwards_every_ollama_field_unchanged(
    fields: dict[str, Any], kind: JobKind
) -> None:
    sent = {"model": "Llama3.2", "priority": "low", "metadata": {"a": 1}, **fields}
    sub = validate_submission({**sent, "idempotency_key": "k-1"})
    assert sub.kind is kind and sub.priority is Priority.LOW
    assert sub.model == "Llama3.2"  # as sent: identity comes from names.model_key
    assert sub.payload == fields  # nothing added, nothing of the manager's
    assert sub.metadata == {"a": 1} and sub.idempotency_key == "k-1"


@pytest.mark.parametrize("make", [body, chat])
def test_validate_submission_accepts_stream_and_leaves_it_out(make: Any) -> None:
    """A job always collects the whole answer, so ``stream`` is accepted and dropped."""
    for stream in (True, False):
        assert "stream" not in validate_submission(make(stream=stream)).payload


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (300, 300.0),
        (1.5, 1.5),
        (0, 0.0),
        (-1, -1.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("-1s", -1.0),
        ("0", 0.0),
        ("-0", 0.0),
        ("+10s", 10.0),
        ("0s", 0.0),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        ("2.s", 2.0),
        ("300ms", 0.3),
        ("1h1m1s1ms", 3661.001),
        ("1500us", 0.0015),
        ("1500µs", 0.0015),
        ("2000000000ns", 2.0),
        ("99999999999h", 9223372036.0),  # past Go's range: clamped to it
        (10**400, 9223372036.0),
        (-(10**400), -9223372036.0),
    ],
)
def test_validate_submission_reads_keep_alive_as_seconds(value: Any, seconds: float) -> None:
    for make in (body, chat, embed):
        payload = validate_submission(make(keep_alive=value)).payload
        assert payload["keep_alive"] == pytest.approx(seconds)
        assert isinstance(payload["keep_alive"], float)


@pytest.mark.parametrize(
    "value",
    ["300", "", "m", "5 m", "5m ", "1d", "1.2.3s", "+-1s", "--1s", "5m\n", "00", ".s", "1e3s",
     "٣s", True, [], {}, math.inf, math.nan],
)  # fmt: skip
def test_validate_submission_refuses_a_bad_keep_alive(value: Any) -> None:
    with pytest.raises(InvalidRequest, match="'keep_alive'") as info:
        validate_submission(body(keep_alive=value))
    assert info.value.details == {"field": "keep_alive"}


@pytest.mark.parametrize(
    ("bad", "field", "kind"),
    [
        (body(tools=[TOOL]), "tools", "a generate"),
        (body(kind="generate", messages=CHAT_FIELDS["messages"]), "messages", "a generate"),
        (body(dimensions=3), "dimensions", "a generate"),
        (chat(suffix="x"), "suffix", "a chat"),
        (chat(context=[1]), "context", "a chat"),
        (chat(raw=True), "raw", "a chat"),
        (chat(template="x"), "template", "a chat"),
        (chat(images=[PNG]), "images", "a chat"),
        (embed(think=True), "think", "an embed"),
        (embed(stream=False), "stream", "an embed"),
        (embed(logprobs=True), "logprobs", "an embed"),
        (embed(shift=True), "shift", "an embed"),
        (embed(format="json"), "format", "an embed"),
        (embed(tools=[TOOL]), "tools", "an embed"),
    ],
)
def test_validate_submission_refuses_a_field_of_another_kind(
    bad: Any, field: str, kind: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_submission(bad)
    assert info.value.message == f"'{field}' does not apply to {kind} job"
    assert info.value.details == {"field": field}


def _message(**fields: Any) -> dict[str, Any]:
    return chat(messages=[{"role": "assistant", "content": "", **fields}])


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [
        (_message(name="x"), "messages[0].name", "'messages[0]' has unknown field(s): name"),
        (
            _message(tool_calls=[{"function": {"name": "f", "arguments": {}, "args": 1}}]),
            "messages[0].tool_calls[0].function.args",
            "'messages[0].tool_calls[0].function' has unknown field(s): args",
        ),
        (
            _message(tool_calls=[{**TOOL_CALL, "type": "function"}]),
            "messages[0].tool_calls[0].type",
            "'messages[0].tool_calls[0]' has unknown field(s): type",
        ),
        (
            chat(tools=[{**TOOL, "strict": True}]),
            "tools[0].strict",
            "'tools[0]' has unknown field(s): strict",
        ),
        (
            chat(tools=[{"type": "function", "function": {"name": "f", "params": {}}}]),
            "tools[0].function.params",
            "'tools[0].function' has unknown field(s): params",
        ),
        (
            body(options={"temprature": 1}),
            "options.temprature",
            "'options.temprature' is not a known Ollama option",
        ),
    ],
)
def test_validate_submission_refuses_unknown_nested_keys(
    bad: Any, field: str, message: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_submission(bad)
    assert (info.value.message, info.value.details) == (message, {"field": field})


def test_validate_submission_leaves_arguments_and_parameters_free_form() -> None:
    call = {"function": {"name": "f", "arguments": {"any": {"shape": [1, None]}}}}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"x-anything": 1}}}
    sub = validate_submission(
        chat(messages=[{"role": "assistant", "tool_calls": [call]}], tools=[tool])
    )
    assert sub.payload["tools"] == [tool]


BAD_NEW: list[tuple[str, Any, str]] = [
    ("suffix a number", body(suffix=1), "suffix"),
    ("template with NUL", body(template="\x00"), "template"),
    ("context not a list", body(context="1,2"), "context"),
    ("context with a float", body(context=[1, 2.0]), "context[1]"),
    ("context negative", body(context=[-1]), "context[0]"),
    ("raw a string", body(raw="yes"), "raw"),
    ("think unknown level", body(think="extreme"), "think"),
    ("think a number", chat(think=1), "think"),
    ("shift an int", chat(shift=1), "shift"),
    ("logprobs a string", body(logprobs="true"), "logprobs"),
    ("top_logprobs 21", body(top_logprobs=21), "top_logprobs"),
    ("top_logprobs negative", chat(top_logprobs=-1), "top_logprobs"),
    ("top_logprobs a float", chat(top_logprobs=1.0), "top_logprobs"),
    ("stream a string", body(stream="no"), "stream"),
    ("dimensions zero", embed(dimensions=0), "dimensions"),
    ("dimensions a bool", embed(dimensions=True), "dimensions"),
    ("tools not a list", chat(tools=TOOL), "tools"),
    ("tool type not function", chat(tools=[{**TOOL, "type": "code"}]), "tools[0].type"),
    ("tool without function", chat(tools=[{"type": "function"}]), "tools[0].function"),
    ("tool function without name", chat(tools=[{"type": "function", "function": {}}]), "tools[0]"),
    (
        "tool parameters a list",
        chat(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]),
        "tools[0].function.parameters",
    ),
    ("tool_calls not a list", _message(tool_calls={}), "messages[0].tool_calls"),
    ("tool call without arguments", _message(tool_calls=[{"function": {"name": "f"}}]), "messages"),
    (
        "tool call arguments a string",
        _message(tool_calls=[{"function": {"name": "f", "arguments": "{}"}}]),
        "messages[0].tool_calls[0].function.arguments",
    ),
    (
        "tool call index negative",
        _message(tool_calls=[{"function": {"name": "f", "arguments": {}, "index": -1}}]),
        "messages[0].tool_calls[0].function.index",
    ),
    ("thinking a number", _message(thinking=1), "messages[0].thinking"),
    ("tool_name a list", _message(tool_name=["f"]), "messages[0].tool_name"),
    ("tool_call_id with NUL", _message(tool_call_id="\x00"), "messages[0].tool_call_id"),
    ("message role upper case", chat(messages=[{"role": "User"}]), "messages[0].role"),
]


@pytest.mark.parametrize(("case", "bad", "field"), BAD_NEW, ids=[c for c, _, _ in BAD_NEW])
def test_validate_submission_rejects_bad_new_field(case: str, bad: Any, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_submission(bad)
    named = info.value.details.get("field", "")
    assert named == field or named.startswith((f"{field}[", f"{field}.")), (case, named)


@pytest.mark.parametrize(
    ("case", "bad", "field"), BAD + BAD_NEW, ids=[c for c, _, _ in BAD + BAD_NEW]
)
def test_validate_submission_error_is_a_sentence_not_a_pydantic_dump(
    case: str, bad: Any, field: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_submission(bad)
    message = info.value.message
    assert "\n" not in message and len(message) < 300, message
    for dump in ("pydantic", "Input should", "validation error", "type=", "input_value"):
        assert dump not in message, message
    assert info.value.details["field"].split("[")[0].split(".")[0] in message, message


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"model": "m"}, "one of 'prompt' (generate), 'messages' (chat) or 'input' (embed)"),
        (body(kind="chat"), "'messages' is required for a chat job"),
        (body(promt="x", sytem="y"), "unknown field(s): promt, sytem"),
        (body(model="a b"), "'model' is not a valid Ollama model name"),
        (chat(messages=[{"role": "bot"}]), "'messages[0].role' must be 'system', 'user', "),
        (body(options={"num_ctx": 4096.0}), "'options.num_ctx' must be an integer"),
        (embed(input=["a", " "]), "'input[1]' must not be empty"),
        (body(images=[PNG, "%"]), "'images[1]' is not valid base64"),
    ],
)  # fmt: skip
def test_validate_submission_main_error_sentences(bad: Any, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_submission(bad)
    assert info.value.message.startswith(message), info.value.message


def _nested(depth: int) -> Any:
    """``depth`` levels of objects and lists, alternating, around a string."""
    value: Any = "leaf"
    for level in range(depth):
        value = {"k": value} if (depth - level) % 2 else [value]  # an object outside
    return value


@pytest.mark.parametrize("field", ["metadata", "format"])
@pytest.mark.parametrize("depth", [65, 900, 5000])  # 5000: deeper than json.dumps can go
def test_validate_submission_refuses_json_nested_too_deep(field: str, depth: int) -> None:
    with pytest.raises(InvalidRequest, match="nested more than") as info:
        validate_submission(body(**{field: _nested(depth)}))
    assert info.value.details == {"field": field}


def test_validate_submission_accepts_json_nested_to_the_limit() -> None:
    deep = _nested(63)  # 63 objects around a leaf, inside format's own object: 64 levels
    assert validate_submission(body(metadata=deep, format={"k": deep})).metadata == deep
