"""Runners: a model together with the options Ollama fixes when it starts the model.

Ollama keeps one runner per model, started with the request's *runner options*
(``num_ctx``, ``num_batch``, ``num_gpu``, ``main_gpu``, ``use_mmap``, ``num_thread``;
older versions also ``use_mlock``, ``numa``, ``low_vram``). A request whose runner options
differ from the loaded runner's makes Ollama unload it and start another
(``server/sched.go`` ``needsReload``; OLLAMA_FACTS §2.7). So jobs are grouped by
*runner*, not by model: jobs whose options match share a runner and run back to back;
jobs of the same model with other runner options need a reload, which the planner weighs
like any other switch. Options are never changed on their way to Ollama.

A runner's key is a string: the model's identity (:func:`modelmanager.names.model_key`),
then, if the job sets runner options, ``|`` and those options as compact sorted JSON.
``num_gpu: -1`` (Ollama's "automatic") is the same as leaving it out, as ``needsReload``
treats it. Pure functions, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .names import InvalidModelName, model_key

RUNNER_OPTIONS: frozenset[str] = frozenset(
    {"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread"}
    | {"use_mlock", "numa", "low_vram"}
)
_SEPARATOR = "|"


def runner_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The runner options among ``options`` (a job's Ollama ``options``), as given;
    ``None`` values and ``num_gpu: -1`` left out."""
    out: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if key not in RUNNER_OPTIONS or value is None:
            continue
        if key == "num_gpu" and value == -1:
            continue
        out[key] = value
    return out


def runner_key(model: str, options: Mapping[str, Any] | None = None) -> str:
    """The key of the runner a job for ``model`` with ``options`` runs on.

    Raises :class:`modelmanager.names.InvalidModelName` for a name Ollama refuses.
    """
    key = model_key(model)
    runner = runner_options(options)
    if not runner:
        return key
    return key + _SEPARATOR + json.dumps(runner, sort_keys=True, separators=(",", ":"))


def model_of(runner: str) -> str:
    """The model identity part of a runner key."""
    return runner.split(_SEPARATOR, 1)[0]


def options_of(runner: str) -> dict[str, Any]:
    """The runner options of a runner key (``{}`` for the default runner)."""
    _, sep, encoded = runner.partition(_SEPARATOR)
    return json.loads(encoded) if sep else {}


def describe(name: str, runner: str) -> str:
    """``name`` with the runner's options, for logs: ``qwen2.5:3b (num_ctx=16384)``."""
    options = options_of(runner)
    if not options:
        return name
    listed = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(options.items()))
    return f"{name} ({listed})"


def runner_of(model: str, options: Mapping[str, Any] | None) -> str:
    """:func:`runner_key`, except that a name Ollama's grammar refuses (stored by an older
    version that accepted it) keeps its own lower-cased spelling as its key."""
    try:
        return runner_key(model, options)
    except InvalidModelName:
        return model.strip().lower()
