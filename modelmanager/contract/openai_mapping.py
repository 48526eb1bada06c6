"""OpenAI-compatible requests turned into the Ollama fields their jobs carry, as Ollama's
compatibility layer converts them (``openai/openai.go`` ``FromChatRequest``,
``FromCompleteRequest``): ``max_tokens`` is ``num_predict``, temperature and top_p default
to 1.0, ``stop`` is a list, ``response_format`` becomes ``format``, ``reasoning_effort``
becomes ``think``, content parts become messages, tool-call arguments are parsed and a
tool message gets the name of the call it answers. Input: what :func:`.openai.check`
returned.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from ..errors import InvalidRequest
from .openai import IMAGE_TYPES


def _options(req: dict[str, Any], *, completion: bool) -> dict[str, Any]:
    options: dict[str, Any] = {}
    stop = req.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        options["stop"] = stop
    max_tokens = req.get("max_tokens", req.get("max_completion_tokens"))
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    options["temperature"] = req.get("temperature", 1.0)
    if "seed" in req:
        options["seed"] = req["seed"]
    for key in ("frequency_penalty", "presence_penalty"):
        if key in req or completion:  # a completion always sends them (0 by default)
            options[key] = req.get(key, 0.0)
    top_p = req.get("top_p")
    if completion:  # Ollama reads a completion's top_p 0 as "not given"
        options["top_p"] = top_p if top_p else 1.0
    else:
        options["top_p"] = 1.0 if top_p is None else top_p
    return options


def _arguments(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for call in calls:
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            # Ollama refuses the request ("invalid tool call arguments"); OpenAI takes any
            # text. A call sent back with arguments that are no JSON object (a model's
            # malformed call) goes to Ollama with none, so the conversation can go on.
            arguments = {}
        converted: dict[str, Any] = {
            "function": {"name": function.get("name", ""), "arguments": arguments}
        }
        if call.get("id"):
            converted["id"] = call["id"]
        out.append(converted)
    return out


def _image(url: str) -> str:
    if url.startswith(("http://", "https://")):
        raise InvalidRequest(
            "image URLs are not currently supported, please use base64 encoded data instead",
            field="messages",
        )
    prefixes = ["data:;base64,", *(f"data:image/{t};base64," for t in IMAGE_TYPES)]
    prefix = next((p for p in prefixes if url.startswith(p)), None)
    if prefix is None:
        raise InvalidRequest("invalid image input", field="messages")
    data = url[len(prefix) :]
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("invalid image input", field="messages") from None
    return data


def _tool_name(messages: list[dict[str, Any]], call_id: str) -> str:
    for message in reversed(messages):  # the last call with this id wins
        for call in message.get("tool_calls") or ():
            if call.get("id") == call_id:
                return str((call.get("function") or {}).get("name") or "")
    return ""


def _messages(given: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for msg in given:
        role = msg["role"]
        tool_name = ""
        if role.lower() == "tool":
            tool_name = msg.get("name") or _tool_name(given, msg.get("tool_call_id") or "")
        content = msg.get("content")
        extra: dict[str, Any] = {"tool_name": tool_name} if tool_name else {}
        if msg.get("tool_call_id"):
            extra["tool_call_id"] = msg["tool_call_id"]
        if msg.get("reasoning"):
            extra["thinking"] = msg["reasoning"]
        if msg.get("tool_calls"):
            extra["tool_calls"] = _arguments(msg["tool_calls"])
        if isinstance(content, str):
            out.append({"role": role, "content": content, **extra})
        elif isinstance(content, list):
            for part in content:
                kind = part.get("type")
                if kind == "text" and isinstance(part.get("text"), str):
                    out.append({"role": role, "content": part["text"]})
                elif kind == "image_url":
                    url = part.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    if not isinstance(url, str):
                        raise InvalidRequest("invalid message format", field="messages")
                    out.append({"role": role, "images": [_image(url)]})
                else:
                    raise InvalidRequest("invalid message format", field="messages")
            if out and msg.get("tool_calls"):
                out[-1].update(extra)
        else:  # left out or null: beside tool calls (Ollama refuses it without; we read "")
            out.append(
                {"role": role, **extra} if "tool_calls" in msg else {"role": role, "content": ""}
            )
    return out


def chat_payload(req: dict[str, Any]) -> dict[str, Any]:
    """The Ollama chat fields of a valid chat completion request (``check``'s result)."""
    payload: dict[str, Any] = {
        "messages": _messages(req["messages"]),
        "options": _options(req, completion=False),
    }
    fmt = req.get("response_format")
    if fmt is not None:
        kind = fmt["type"].strip().lower()
        if kind == "json_object":
            payload["format"] = "json"
        elif kind == "json_schema" and "schema" in fmt.get("json_schema", {}):
            payload["format"] = fmt["json_schema"]["schema"]
    if req.get("tools"):
        payload["tools"] = req["tools"]
    effort = (req.get("reasoning") or {}).get("effort") or req.get("reasoning_effort")
    if effort:  # a known value: check() refused others
        payload["think"] = False if effort == "none" else effort
    if req.get("logprobs"):
        payload["logprobs"] = True
        if req.get("top_logprobs"):
            payload["top_logprobs"] = req["top_logprobs"]
    return payload


def completion_payload(req: dict[str, Any]) -> dict[str, Any]:
    """The Ollama generate fields of a valid completion request (``check``'s result)."""
    payload: dict[str, Any] = {
        "prompt": req.get("prompt", ""),
        "options": _options(req, completion=True),
    }
    if req.get("suffix"):
        payload["suffix"] = req["suffix"]
    if req.get("logprobs"):
        payload["logprobs"] = True
        payload["top_logprobs"] = req["logprobs"]
    return payload
