"""Deterministic model output: replies, thinking, tool calls, log probabilities, vectors.

Everything is a pure function of a seed (derived from the model and the request), so the
same request always gets the same answer; nothing here sleeps or reads the clock. A
reply is planned as a list of tokens (:class:`Piece`); the handler then spends the
model's per-token time on each and streams them.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

_WORD_TEXT = """the model answer data system value result process quality measure signal window
    river stone light metric sample budget memory queue request token layer vector reason
    simple clear quick steady bright small large early later inside around before after
    because while every other first second final check build move hold share learn write
    read count trace north south field forest garden market engine factory report number
    pattern method choice detail example question is are was can will should and or but
    with from into over under of to in on for by a an this that it"""
_THINK_TEXT = """okay so the user wants me to first check what they mean then consider each part
    maybe it is better to start with the simple case and see whether that holds hmm wait
    let me think about this again I should make sure the answer is clear"""
_WORDS = tuple(_WORD_TEXT.split())
_THINK_WORDS = tuple(_THINK_TEXT.split())
_THINK_SCALE = {"low": 0.5, "medium": 1.0, "high": 2.0, "max": 3.0}
_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")

THINKING, CONTENT, TOOL = "thinking", "content", "tool"


class Piece(NamedTuple):
    """One generated token: ``kind`` is thinking, content or tool (a tool call's text,
    which Ollama's parser holds back until the call is complete)."""

    kind: str
    text: str


@dataclass
class Reply:
    """A planned answer: every token in order, why it ends, and the tool calls made
    (complete calls only; a call cut short by ``num_predict`` is returned as content)."""

    pieces: list[Piece]
    done_reason: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    def text(self, kind: str) -> str:
        """The joined text of one kind of piece."""
        return "".join(p.text for p in self.pieces if p.kind == kind)


def seed_of(*parts: object) -> int:
    """A 64-bit seed from any parts (stable across runs and processes)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def count_tokens(text: str) -> int:
    """A plausible token count: words plus punctuation marks."""
    return len(_TOKEN_RE.findall(text))


def schema_value(schema: object, rng: random.Random, depth: int = 0) -> Any:
    """A value that fits a (simple) JSON schema: ``format`` documents, tool arguments."""
    if not isinstance(schema, dict) or depth > 4:
        return " ".join(rng.choice(_WORDS) for _ in range(3))
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return rng.choice(enum)
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]: the first real type
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object" or "properties" in schema:
        props = schema.get("properties")
        if not isinstance(props, dict):
            return {}
        return {str(k): schema_value(v, rng, depth + 1) for k, v in props.items()}
    if kind == "array":
        return [schema_value(schema.get("items"), rng, depth + 1) for _ in range(2)]
    if kind == "integer":
        return rng.randrange(100)
    if kind == "number":
        return round(rng.random() * 100, 2)
    if kind == "boolean":
        return rng.random() < 0.5
    return " ".join(rng.choice(_WORDS) for _ in range(3))


def _words(
    rng: random.Random, count: int, vocabulary: tuple[str, ...], *, continuing: bool = False
) -> list[str]:
    """``count`` word tokens forming sentences of 6 to 17 words; ``continuing``: they
    follow earlier text (a leading space on the first)."""
    pieces: list[str] = []
    left = 0
    for _ in range(count):
        word = rng.choice(vocabulary)
        if left == 0:
            if pieces:
                pieces[-1] += "."
            space = " " if pieces or continuing else ""
            pieces.append(space + word.capitalize())
            left = 6 + rng.randrange(12)
        else:
            pieces.append(" " + word)
        left -= 1
    return pieces


def _content(seed: int, fmt: object) -> tuple[list[str], random.Random, bool]:
    """The natural answer (16 to 64 tokens, or a JSON document for ``format``), the rng to
    continue it with, and whether it can be continued (plain text only)."""
    rng = random.Random(seed)
    count = 16 + rng.randrange(49)
    if fmt == "json" or isinstance(fmt, dict):
        doc = schema_value(fmt, rng) if isinstance(fmt, dict) else None
        if not isinstance(doc, dict):
            doc = {"response": " ".join(rng.choice(_WORDS) for _ in range(count // 2))}
        text = json.dumps(doc)
        return [text[i : i + 4] for i in range(0, len(text), 4)], rng, False
    pieces = []
    for i in range(count):
        word = rng.choice(_WORDS)
        pieces.append(word.capitalize() if i == 0 else " " + word)
    pieces[-1] += "."
    return pieces, rng, True


def _thinking(seed: int, level: str) -> list[str]:
    rng = random.Random(seed_of("think", seed))
    count = max(4, int((12 + rng.randrange(29)) * _THINK_SCALE.get(level, 1.0)))
    pieces = _words(rng, count, _THINK_WORDS)
    pieces[-1] += "."
    return pieces


def tool_call(seed: int, tools: list[Any]) -> dict[str, Any] | None:
    """A call of one of ``tools`` (Ollama's ``api.ToolCall``: ``id`` and ``function`` with
    ``index``, ``name`` and ``arguments`` generated from the tool's JSON-schema
    ``parameters``: every required property, some optional ones), or None if no tool has a
    name."""
    named = [
        t["function"]
        for t in tools
        if isinstance(t, dict)
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
        and t["function"]["name"]
    ]
    if not named:
        return None
    rng = random.Random(seed_of("tool", seed))
    function = named[rng.randrange(len(named))]
    params = function.get("parameters")
    params = params if isinstance(params, dict) else {}
    props = params.get("properties")
    required = params.get("required")
    required = set(required) if isinstance(required, list) else set()
    arguments: dict[str, Any] = {}
    for name, prop in (props if isinstance(props, dict) else {}).items():
        if name in required or rng.random() < 0.5:
            arguments[str(name)] = schema_value(prop, rng, 1)
    call_id = "call_" + "".join(rng.choice(_ID_CHARS) for _ in range(8))
    return {
        "id": call_id,
        "function": {"index": 0, "name": function["name"], "arguments": arguments},
    }


def plan_reply(
    seed: int,
    *,
    num_predict: int | None = None,
    fmt: object = None,
    think: str | None = None,
    tools: list[Any] | None = None,
) -> Reply:
    """Plan the answer to one generate/chat request.

    ``think``: the thinking level, or None for no thinking. ``tools``: the request's tools
    when the model should call one now (else a text answer). Without ``num_predict`` the
    answer has its natural length (16 to 64 tokens, ``stop``); ``num_predict`` > 0 makes it
    exactly that many tokens (``length``), unless a JSON document or tool call ends first.
    """
    pieces = [Piece(THINKING, t) for t in _thinking(seed, think)] if think else []
    call = tool_call(seed, tools) if tools else None
    rng: random.Random | None = None
    if call is not None:
        function = call["function"]
        text = json.dumps({"name": function["name"], "arguments": function["arguments"]})
        pieces += [Piece(TOOL, text[i : i + 4]) for i in range(0, len(text), 4)]
    else:
        content, content_rng, extendable = _content(seed, fmt)
        pieces += [Piece(CONTENT, t) for t in content]
        rng = content_rng if extendable else None
    if num_predict is None or num_predict <= 0 or num_predict == len(pieces):
        return Reply(pieces, "stop", [call] if call else [])
    if num_predict < len(pieces):
        cut = pieces[:num_predict]
        return Reply([Piece(CONTENT if p.kind == TOOL else p.kind, p.text) for p in cut], "length")
    if rng is None:  # a finished JSON document or tool call: the model stops by itself
        return Reply(pieces, "stop", [call] if call else [])
    more = _words(rng, num_predict - len(pieces), _WORDS, continuing=True)
    return Reply(pieces + [Piece(CONTENT, t) for t in more], "length")


def token_logprob(token: str, seed: int, index: int, top: int) -> dict[str, Any]:
    """Ollama's ``api.Logprob`` for the token at ``index``: ``token``, ``logprob`` (natural
    log, <= 0), ``bytes`` (its UTF-8 bytes) and, if ``top`` > 0, ``top_logprobs``: the
    ``top`` most likely tokens there, the chosen one first."""
    rng = random.Random(seed_of("logprob", seed, index))
    chosen = -round(rng.random() ** 3 * 2.5, 6)
    entry = _token_entry(token, chosen)
    if top > 0:
        alternatives = [_token_entry(token, chosen)]
        seen = {token}
        logprob = chosen
        while len(alternatives) < top:
            word = " " + rng.choice(_WORDS)
            if word in seen:
                continue
            seen.add(word)
            logprob = round(logprob - 0.25 - rng.random() * 1.5, 6)
            alternatives.append(_token_entry(word, logprob))
        entry["top_logprobs"] = alternatives
    return entry


def _token_entry(token: str, logprob: float) -> dict[str, Any]:
    entry: dict[str, Any] = {"token": token, "logprob": logprob}
    if token:
        entry["bytes"] = list(token.encode())
    return entry


def make_embedding(model: str, text: str, dim: int) -> list[float]:
    """A deterministic raw (not normalised) vector for ``text``."""
    rng = random.Random(seed_of("embed", model, text))
    return [rng.gauss(0.0, 1.0) for _ in range(dim)]


def normalised(vector: list[float]) -> list[float]:
    """``vector`` scaled to length 1 (L2), rounded to 8 decimals as /api/embed returns it."""
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [round(x / norm, 8) for x in vector]
