"""The inference endpoints: ``/api/generate``, ``/api/chat``, ``/api/embed`` and
``/api/embeddings``.

Validation runs in Ollama's order (decode, ``top_logprobs``, name, unload, thinking,
capabilities, options); then the request gets a runner from the scheduler, waits for a
slot and the gate, and spends the model's time on its prompt and on every token,
streaming one chunk per token. A client that goes away ends the work at once.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from .answers import Answer, chunk, metrics
from .fields import (
    CHAT_FIELDS,
    EMBED_FIELDS,
    EMBEDDINGS_FIELDS,
    GENERATE_FIELDS,
    bench_tag,
    check_fields,
    check_top_logprobs,
    parse_think,
    think_level,
)
from .registry import Installed
from .runners import CRASHED, Runner, RunnerCrashed, RunnerOptions, parse_options
from .text import TOOL, Reply, count_tokens, make_embedding, normalised, plan_reply, seed_of
from .timing import EMBED_TOKEN_FACTOR, PROMPT_TOKEN_FACTOR, TEMPLATE_TOKENS
from .wire import (
    ERR_MIDSTREAM_OOM,
    ERR_RUNNER_STOPPED,
    ApiError,
    decode_body,
    go_quote,
    keep_alive_of,
    now_rfc3339,
    ns,
)

if TYPE_CHECKING:
    from .http import Handler

__all__ = ["chat", "chunk", "embed", "embeddings", "generate"]


def _thinking_check(think: bool | str | None, model: Installed, name: str) -> None:
    """``think`` true or a level for a model that cannot think: Ollama's 400."""
    if (think is True or isinstance(think, str)) and not model.spec.thinks:
        raise ApiError(400, f"{go_quote(name)} does not support thinking")


def generate(h: Handler, raw: bytes) -> None:
    """``POST /api/generate``."""
    body = decode_body(raw, "GenerateRequest")
    check_fields(body, "GenerateRequest", GENERATE_FIELDS)
    think = parse_think(body.get("think"))
    keep_alive = keep_alive_of(body)
    check_top_logprobs(body)
    h.tag = bench_tag(body.get("prompt"))
    name = body.get("model") or ""
    h.model = name
    if not name:
        raise ApiError(404, "model '' not found")
    model = h.sim.models.resolve(name)
    spec = model.spec
    prompt = body.get("prompt") or ""
    if not prompt and keep_alive == 0:
        # Ollama expires the runner before it checks capabilities: embedding models
        # are unloaded this way too
        _load_or_unload(h, model, RunnerOptions(), keep_alive, chat=False)
        return
    system = body.get("system") or ""
    context = body.get("context") or []
    is_raw = bool(body.get("raw"))
    if is_raw and (body.get("template") or system or context):
        raise ApiError(400, "raw mode does not support template, system, or context")
    _thinking_check(think, model, name)
    if "completion" not in spec.capabilities:
        raise ApiError(400, f"{go_quote(name)} does not support generate")
    opts, options = parse_options(body.get("options"))
    if not prompt:
        _load_or_unload(h, model, opts, keep_alive, chat=False)
        return
    seed = seed_of(spec.name, system, prompt, options.get("seed", ""))
    prompt_tokens = count_tokens(system) + count_tokens(prompt) + len(context)
    if not is_raw:
        prompt_tokens += TEMPLATE_TOKENS
    reply = plan_reply(
        seed,
        num_predict=options.get("num_predict"),
        fmt=body.get("format"),
        think=think_level(think, spec.thinks),
    )
    answer = _answer(h, body, chat=False, seed=seed)
    _complete(h, model, opts, keep_alive, answer, reply, max(1, prompt_tokens), not is_raw)


def chat(h: Handler, raw: bytes) -> None:
    """``POST /api/chat``: text, thinking, or a tool call when the user spoke last."""
    body = decode_body(raw, "ChatRequest")
    check_fields(body, "ChatRequest", CHAT_FIELDS)
    think = parse_think(body.get("think"))
    keep_alive = keep_alive_of(body)
    check_top_logprobs(body)
    messages = [m if isinstance(m, dict) else {} for m in body.get("messages") or []]
    if messages:
        h.tag = bench_tag(messages[-1].get("content"))
    name = body.get("model") or ""
    h.model = name
    if not name:
        raise ApiError(400, "model is required")
    model = h.sim.models.resolve(name)
    spec = model.spec
    if not messages and keep_alive == 0:  # unloads before the capability check
        _load_or_unload(h, model, RunnerOptions(), keep_alive, chat=True)
        return
    _thinking_check(think, model, name)
    if "completion" not in spec.capabilities:
        raise ApiError(400, f"{go_quote(name)} does not support chat")
    tools = body.get("tools") or []
    if tools and "tools" not in spec.capabilities:
        raise ApiError(400, f"{go_quote(name)} does not support tools")
    opts, options = parse_options(body.get("options"))
    if not messages:
        _load_or_unload(h, model, opts, keep_alive, chat=True)
        return
    flat = json.dumps([[m.get("role"), m.get("content")] for m in messages])
    seed = seed_of(spec.name, flat, options.get("seed", ""))
    prompt_tokens = sum(count_tokens(str(m.get("content") or "")) + 4 for m in messages)
    prompt_tokens += sum(
        count_tokens(json.dumps(m["tool_calls"])) for m in messages if m.get("tool_calls")
    )
    if tools:
        prompt_tokens += count_tokens(json.dumps(tools))
    user_spoke_last = str(messages[-1].get("role") or "").lower() == "user"
    reply = plan_reply(
        seed,
        num_predict=options.get("num_predict"),
        fmt=body.get("format"),
        think=think_level(think, spec.thinks),
        tools=tools if user_spoke_last else None,
    )
    answer = _answer(h, body, chat=True, seed=seed)
    _complete(h, model, opts, keep_alive, answer, reply, max(1, prompt_tokens), False)


def _answer(h: Handler, body: dict[str, Any], *, chat: bool, seed: int) -> Answer:
    return Answer(
        chat=chat,
        model=h.model or "",
        stream=body.get("stream") is not False,
        logprobs=bool(body.get("logprobs")),
        top_logprobs=int(body.get("top_logprobs") or 0),
        seed=seed,
    )


def _load_or_unload(
    h: Handler, model: Installed, opts: RunnerOptions, keep_alive: float | None, chat: bool
) -> None:
    """Empty prompt/messages: unload with keep_alive 0, else load and answer ``load``.
    Either way one JSON object, even when streaming was asked for."""
    reply: dict[str, Any] = {"model": h.model, "created_at": ""}
    if chat:
        reply["message"] = {"role": "assistant", "content": ""}
    else:
        reply["response"] = ""
    reply["done"] = True
    if keep_alive == 0:
        h.sim.request_unload(model.spec.name)
        reply["created_at"] = now_rfc3339()
        reply["done_reason"] = "unload"
        h.send_json(200, reply)
        return
    runner = h.sim._acquire(model.spec, model.name, opts, keep_alive, h.watch)
    try:
        reply["created_at"] = now_rfc3339()
        reply["done_reason"] = "load"
        h.send_json(200, reply)
    finally:
        h.sim._release(runner)


def _complete(
    h: Handler,
    model: Installed,
    opts: RunnerOptions,
    keep_alive: float | None,
    answer: Answer,
    reply: Reply,
    prompt_tokens: int,
    with_context: bool,
) -> None:
    """Generate (streaming or not) on a runner: slot, gate, prompt eval, tokens."""
    sim = h.sim
    runner = sim._acquire(model.spec, model.name, opts, keep_alive, h.watch)
    loaded_at = time.monotonic()
    try:
        sim._enter_slot(runner, h.watch)
        try:
            _generate_on(h, runner, answer, reply, prompt_tokens, loaded_at, with_context)
        finally:
            sim._leave_slot(runner)
    except RunnerCrashed:
        h.fail(500, ERR_MIDSTREAM_OOM if h.streaming else ERR_RUNNER_STOPPED)
    finally:
        sim._release(runner)


def _generate_on(
    h: Handler,
    runner: Runner,
    answer: Answer,
    reply: Reply,
    prompt_tokens: int,
    loaded_at: float,
    with_context: bool,
) -> None:
    """Spend the prompt's and every token's time on ``runner``; one chunk per token
    (the gap between chunks is the model's token time, never more)."""
    sim = h.sim
    watch = h.watch
    sim._gate(runner, 0, watch)
    sim._set_generating(runner, +1)
    try:
        eval_start = time.monotonic()
        watch.sleep(sim._scaled(prompt_tokens * runner.token_seconds * PROMPT_TOKEN_FACTOR))
        sim._check_alive(runner, watch)
        gen_start = time.monotonic()
        token_s = sim._scaled(runner.token_seconds)
        last_tool = max((i for i, p in enumerate(reply.pieces) if p.kind == TOOL), default=-1)
        due = gen_start
        for index, piece in enumerate(reply.pieces):
            if index:
                sim._gate(runner, index, watch)
            due = max(due + token_s, time.monotonic() - token_s)
            watch.sleep(due - time.monotonic())
            if runner.state == CRASHED:
                raise RunnerCrashed
            out = answer.token(piece, reply.tool_calls if index == last_tool else None)
            if out is not None:
                h.stream_line(out)
        end = time.monotonic()
    finally:
        sim._set_generating(runner, -1)
    timing = metrics(
        h.t0, loaded_at, eval_start, gen_start, end, time.monotonic(), prompt_tokens, answer.tokens
    )
    final = answer.final(reply.done_reason, timing, answer.seed if with_context else None)
    if answer.stream:
        h.stream_line(final)
    else:
        h.send_json(200, final)


def embed(h: Handler, raw: bytes) -> None:
    """``POST /api/embed``: L2-normalised vectors; any model may embed."""
    body = decode_body(raw, "EmbedRequest")
    check_fields(body, "EmbedRequest", EMBED_FIELDS)
    keep_alive = keep_alive_of(body)
    name = body.get("model") or ""
    h.model = name
    raw_input = body.get("input")
    inputs: list[str] = []
    if isinstance(raw_input, str):
        inputs = [raw_input] if raw_input else []
    elif isinstance(raw_input, list):
        if not all(isinstance(item, str) for item in raw_input):
            raise ApiError(400, "invalid input type")
        inputs = list(raw_input)
    elif raw_input is not None:
        raise ApiError(400, "invalid input type")
    if inputs:
        h.tag = bench_tag(inputs[0])
    if not name:
        raise ApiError(404, 'model "" not found, try pulling it first')
    model = h.sim.models.resolve(name, double_quote=True)
    spec = model.spec
    opts, _ = parse_options(body.get("options"))
    runner = h.sim._acquire(spec, model.name, opts, keep_alive, h.watch)
    loaded_at = time.monotonic()
    try:
        if not inputs:
            h.send_json(200, {"model": name, "embeddings": []})
            return
        ctx = runner.context_length
        counts = [max(1, count_tokens(text)) for text in inputs]
        if body.get("truncate") is False and max(counts) > ctx:
            raise ApiError(400, "the input length exceeds the context length")
        counts = [min(c, ctx) for c in counts]
        vectors = _embed_on(h, runner, inputs, sum(counts))
        dims = body.get("dimensions")
        if isinstance(dims, int | float) and 0 < int(dims) < spec.embedding_length:
            vectors = [v[: int(dims)] for v in vectors]
        h.send_json(
            200,
            {
                "model": name,
                "embeddings": [normalised(v) for v in vectors],
                "total_duration": ns(time.monotonic() - h.t0),
                "load_duration": ns(loaded_at - h.t0),
                "prompt_eval_count": sum(counts),
            },
        )
    except RunnerCrashed:
        raise ApiError(500, ERR_RUNNER_STOPPED) from None
    finally:
        h.sim._release(runner)


def embeddings(h: Handler, raw: bytes) -> None:
    """``POST /api/embeddings`` (legacy): one raw, not normalised vector."""
    body = decode_body(raw, "EmbeddingRequest")
    check_fields(body, "EmbeddingRequest", EMBEDDINGS_FIELDS)
    keep_alive = keep_alive_of(body)
    name = body.get("model") or ""
    h.model = name
    if not name:
        raise ApiError(400, "model is required")
    model = h.sim.models.resolve(name, double_quote=True)
    opts, _ = parse_options(body.get("options"))
    prompt = body.get("prompt") or ""
    runner = h.sim._acquire(model.spec, model.name, opts, keep_alive, h.watch)
    try:
        if not prompt:
            h.send_json(200, {"embedding": []})
            return
        tokens = min(max(1, count_tokens(prompt)), runner.context_length)
        vector = _embed_on(h, runner, [prompt], tokens)[0]
        h.send_json(200, {"embedding": [round(x, 8) for x in vector]})
    except RunnerCrashed:
        raise ApiError(500, ERR_RUNNER_STOPPED) from None
    finally:
        h.sim._release(runner)


def _embed_on(h: Handler, runner: Runner, texts: list[str], tokens: int) -> list[list[float]]:
    """Compute raw vectors on ``runner`` (slot, gate, time proportional to tokens)."""
    sim = h.sim
    sim._enter_slot(runner, h.watch)
    try:
        sim._gate(runner, 0, h.watch)
        sim._set_generating(runner, +1)
        try:
            h.watch.sleep(sim._scaled(tokens * runner.token_seconds * EMBED_TOKEN_FACTOR))
            sim._check_alive(runner, h.watch)
            dim = runner.spec.embedding_length
            return [make_embedding(runner.spec.name, text, dim) for text in texts]
        finally:
            sim._set_generating(runner, -1)
    finally:
        sim._leave_slot(runner)
