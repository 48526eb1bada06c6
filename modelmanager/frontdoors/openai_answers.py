"""Ollama's answers in the OpenAI API's shapes, as Ollama's compatibility layer writes
them (``openai/openai.go``, ``middleware/openai.go``): chat completions and their
``chat.completion.chunk`` events (thinking as ``reasoning``, a chunk with both thinking
and an answer split in two, finish reason ``tool_calls`` once a call was sent, usage from
Ollama's token counts), text completions, embeddings (floats or base64) and models.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from .. import names

SSE = "text/event-stream"
FINGERPRINT = "fp_ollama"


def event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _unix(created_at: Any) -> int:
    """Ollama's RFC 3339 ``created_at`` (nanoseconds allowed) as Unix seconds."""
    if isinstance(created_at, str):
        text = created_at.replace("Z", "+00:00")
        head, dot, tail = text.partition(".")
        if dot:  # at most 6 fraction digits for Python
            digits = len(tail) - len(tail.lstrip("0123456789"))
            text = f"{head}.{tail[: min(digits, 6)]}{tail[digits:]}"
        try:
            return int(datetime.fromisoformat(text).timestamp())
        except ValueError:
            pass
    return int(time.time())


def _usage(final: dict[str, Any]) -> dict[str, int]:
    prompt = final.get("prompt_eval_count") or 0
    completion = final.get("eval_count") or 0
    total = prompt + completion
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    out = []
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") or {}
        out.append(
            {
                "id": call.get("id", ""),
                "index": function.get("index", 0),
                "type": "function",
                "function": {
                    "name": function.get("name", ""),
                    "arguments": json.dumps(function.get("arguments"), separators=(",", ":")),
                },
            }
        )
    return out


def _finish(done_reason: Any, tool_calls: bool) -> str | None:
    if not done_reason:
        return None
    return "tool_calls" if tool_calls else str(done_reason)


class ChatStream:
    """Ollama chat chunks as ``chat.completion.chunk`` objects (``ToChunks``)."""

    def __init__(self, job_id: str, include_usage: bool) -> None:
        self.id = f"chatcmpl-{job_id}"
        self.include_usage = include_usage
        self.tool_call_sent = False

    def _chunk(self, chunk: dict[str, Any], delta: dict[str, Any], finish: Any) -> Any:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        if chunk.get("logprobs"):
            choice["logprobs"] = {"content": chunk["logprobs"]}
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": chunk.get("model", ""),
            "system_fingerprint": FINGERPRINT,
            "choices": [choice],
        }

    def events(self, chunk: dict[str, Any]) -> Iterator[bytes]:
        message = chunk.get("message") or {}
        calls = _tool_calls(message.get("tool_calls"))
        content, thinking = message.get("content", ""), message.get("thinking", "")
        finish = _finish(chunk.get("done_reason"), self.tool_call_sent or bool(calls))
        delta: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            delta["tool_calls"] = calls
            self.tool_call_sent = True
        if thinking and (content or calls):  # thinking and an answer: two chunks
            reasoning = {"role": "assistant", "content": "", "reasoning": thinking}
            yield event(self._chunk({**chunk, "logprobs": None}, reasoning, None))
        elif thinking:
            delta["reasoning"] = thinking
        last = self._chunk(chunk, delta, finish)
        yield event(last)
        if chunk.get("done") is True:
            if self.include_usage:
                yield event({**last, "choices": [], "usage": _usage(chunk)})
            yield b"data: [DONE]\n\n"


class CompletionStream:
    """Ollama generate chunks as streamed ``text_completion`` objects."""

    def __init__(self, job_id: str, include_usage: bool) -> None:
        self.id = f"cmpl-{job_id}"
        self.include_usage = include_usage

    def events(self, chunk: dict[str, Any]) -> Iterator[bytes]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": int(time.time()),
            "choices": [_text_choice(chunk)],
            "model": chunk.get("model", ""),
            "system_fingerprint": FINGERPRINT,
        }
        if self.include_usage:
            out["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        yield event(out)
        if chunk.get("done") is True:
            if self.include_usage:
                yield event({**out, "choices": [], "usage": _usage(chunk)})
            yield b"data: [DONE]\n\n"


def _text_choice(chunk: dict[str, Any]) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "text": chunk.get("response", ""),
        "index": 0,
        "finish_reason": _finish(chunk.get("done_reason"), False),
    }
    if chunk.get("logprobs"):
        choice["logprobs"] = _completion_logprobs(chunk["logprobs"])
    return choice


def _completion_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Ollama's per-token logprobs in the completions API's columns."""
    out: dict[str, list[Any]] = {
        "tokens": [],
        "token_logprobs": [],
        "top_logprobs": [],
        "text_offset": [],
    }
    offset = 0
    for entry in entries:
        token = str(entry.get("token", ""))
        out["tokens"].append(token)
        out["token_logprobs"].append(entry.get("logprob"))
        out["top_logprobs"].append(
            {str(alt.get("token")): alt.get("logprob") for alt in entry.get("top_logprobs") or ()}
        )
        out["text_offset"].append(offset)
        offset += len(token)
    return out


def chat_completion(job_id: str, final: dict[str, Any]) -> dict[str, Any]:
    message = final.get("message") or {}
    calls = _tool_calls(message.get("tool_calls"))
    out_message: dict[str, Any] = {
        "role": message.get("role", "assistant"),
        "content": message.get("content", ""),
    }
    if message.get("thinking"):
        out_message["reasoning"] = message["thinking"]
    if calls:
        out_message["tool_calls"] = calls
    choice: dict[str, Any] = {
        "index": 0,
        "message": out_message,
        "finish_reason": _finish(final.get("done_reason"), bool(calls)),
    }
    if final.get("logprobs"):
        choice["logprobs"] = {"content": final["logprobs"]}
    return {
        "id": f"chatcmpl-{job_id}",
        "object": "chat.completion",
        "created": _unix(final.get("created_at")),
        "model": final.get("model", ""),
        "system_fingerprint": FINGERPRINT,
        "choices": [choice],
        "usage": _usage(final),
    }


def completion(job_id: str, final: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"cmpl-{job_id}",
        "object": "text_completion",
        "created": _unix(final.get("created_at")),
        "model": final.get("model", ""),
        "system_fingerprint": FINGERPRINT,
        "choices": [_text_choice(final)],
        "usage": _usage(final),
    }


def embedding_base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def model_entry(name: str, modified_at: Any) -> dict[str, Any]:
    try:
        owner = names.parse(name)[1]
    except names.InvalidModelName:
        owner = ""
    return {"id": name, "object": "model", "created": _unix(modified_at), "owned_by": owner}
