"""The shapes of generate and chat answers, as Ollama's ``api.GenerateResponse`` and
``api.ChatResponse`` marshal them (field order and ``omitempty`` included).

:class:`Answer` receives a planned reply token by token: it turns each into a streamed
chunk (or nothing, while a tool call is being held back) and collects what the final
object needs (joined text, tool calls, log probabilities). Pure: no I/O, no clock.
"""

from __future__ import annotations

import random
from typing import Any

from .text import CONTENT, THINKING, TOOL, Piece, token_logprob
from .wire import now_rfc3339, ns


def chunk(chat: bool, model: str, content: str, thinking: str = "") -> dict[str, Any]:
    """One streamed chunk (``done: false``) with a piece of content or thinking."""
    obj: dict[str, Any] = {"model": model, "created_at": now_rfc3339()}
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        obj["message"] = message
    else:
        obj["response"] = content
        if thinking:
            obj["thinking"] = thinking
    obj["done"] = False
    return obj


def metrics(
    t0: float,
    loaded_at: float,
    eval_start: float,
    gen_start: float,
    end: float,
    now: float,
    prompt_tokens: int,
    eval_tokens: int,
) -> dict[str, int]:
    """Ollama's metric fields from monotonic times in seconds; zero values are left out
    (omitempty). ``load_duration`` runs from arrival to getting a runner (queue included)."""
    values = {
        "total_duration": ns(now - t0),
        "load_duration": ns(loaded_at - t0),
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": ns(gen_start - eval_start),
        "eval_count": eval_tokens,
        "eval_duration": ns(end - gen_start),
    }
    return {k: v for k, v in values.items() if v}


class Answer:
    """One generate (``chat`` False) or chat answer being produced.

    ``logprobs``/``top_logprobs``: the request's fields; ``seed`` makes the log
    probabilities deterministic; ``stream``: whether :meth:`token` returns chunks.
    """

    def __init__(
        self,
        *,
        chat: bool,
        model: str,
        stream: bool,
        logprobs: bool,
        top_logprobs: int,
        seed: int,
    ) -> None:
        self.chat = chat
        self.model = model
        self.stream = stream
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.seed = seed
        self.tokens = 0
        self._content: list[str] = []
        self._thinking: list[str] = []
        self._tool_calls: list[dict[str, Any]] = []
        self._all_logprobs: list[dict[str, Any]] = []

    def token(
        self, piece: Piece, tool_calls: list[dict[str, Any]] | None = None
    ) -> dict[str, Any] | None:
        """Take the next generated token; return the chunk to stream now, if any.

        ``tool_calls``: given with the last token of a tool call, which completes it.
        """
        index = self.tokens
        self.tokens += 1
        lp = (
            [token_logprob(piece.text, self.seed, index, self.top_logprobs)]
            if self.logprobs
            else []
        )
        self._all_logprobs += lp
        if piece.kind == THINKING:
            self._thinking.append(piece.text)
        elif piece.kind == CONTENT:
            self._content.append(piece.text)
        if tool_calls:
            self._tool_calls += tool_calls
        if not self.stream:
            return None
        if piece.kind == TOOL and not tool_calls and not lp:
            return None  # Ollama's tool parser holds the call back until it is complete
        obj = chunk(
            self.chat,
            self.model,
            piece.text if piece.kind == CONTENT else "",
            piece.text if piece.kind == THINKING else "",
        )
        if tool_calls:
            obj["message"]["tool_calls"] = tool_calls
        if lp:
            obj["logprobs"] = lp
        return obj

    def final(
        self, done_reason: str, timing: dict[str, int], context_seed: int | None = None
    ) -> dict[str, Any]:
        """The last object: the final chunk of a stream, or the whole answer.

        ``timing``: from :func:`metrics`; ``context_seed``: generate outside raw mode
        returns ``context`` (one token id per prompt and answer token).
        """
        whole = not self.stream
        content = "".join(self._content) if whole else ""
        thinking = "".join(self._thinking) if whole else ""
        obj: dict[str, Any] = {"model": self.model, "created_at": now_rfc3339()}
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if whole and self._tool_calls:
                message["tool_calls"] = self._tool_calls
            obj["message"] = message
        else:
            obj["response"] = content
            if thinking:
                obj["thinking"] = thinking
        obj["done"] = True
        obj["done_reason"] = done_reason
        logprobs = self._all_logprobs if whole else []
        if self.chat:
            if logprobs:
                obj["logprobs"] = logprobs
            obj.update(timing)
            return obj
        if context_seed is not None:
            rng = random.Random(context_seed)
            count = timing.get("prompt_eval_count", 0) + self.tokens
            obj["context"] = [rng.randrange(1, 32000) for _ in range(count)]
        obj.update(timing)
        if logprobs:
            obj["logprobs"] = logprobs
        return obj
