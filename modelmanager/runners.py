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
A job's stored key (:func:`runner_key`) keeps the options as given, a negative
``num_gpu`` ("automatic", which ``needsReload`` ignores in a request) left out. The
scheduler re-keys it (:func:`canonical`) with what Ollama tells it: the model part
becomes the identity of the weights (copies share one runner) and options set to the
value Ollama would use anyway are dropped, because Ollama fills in defaults before it
compares. A request's options start from ``api.DefaultOptions`` (``api/types.go``), the
model's Modelfile ``PARAMETER`` values go on top, the request's own options last, and
``needsReload`` (``server/sched.go``) compares the result with the loaded runner's:
equal values mean the same runner. So :func:`effective_options` drops

* an option equal to the model's own parameter (from ``/api/show``), else equal to the
  global default of :data:`GLOBAL_DEFAULTS` (``num_batch`` 512, ``main_gpu`` 0,
  ``num_thread`` 0, the old booleans ``false``);
* ``num_ctx`` equal to the server's default context when the model sets none. That
  default is not a constant: ``OLLAMA_CONTEXT_LENGTH`` if set, else (v0.15.5+) a tier of
  the GPUs' total VRAM, 4096 below 23 GiB, 32768 below 47 GiB, 262144 above
  (``server/routes.go`` ``modelOptions`` and the VRAM-based default). So the manager
  uses the ``context_length`` ``/api/ps`` reported for the model's default runner;
* while those are unknown, only global defaults; ``num_ctx`` is kept (conservative: a
  ``num_ctx`` never merges with a default runner whose context is not known).

``use_mmap`` is always kept: Ollama's default is "unset" (nil), not ``true`` or ``false``.
``main_gpu`` 0 is the default up to Ollama v0.29 (an ``int``); since v0.30 (llama-server,
commit 9db4bdb) it is a ``*int`` whose default is nil, and 0 pins the model to GPU 0, a
runner of its own there. The manager follows the older rule, which the simulator's
version (0.21) has. Pure functions, no I/O.
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

#: Ollama's ``api.DefaultOptions`` for runner options whose default does not depend on the
#: server or the model (``num_ctx`` does: OLLAMA_CONTEXT_LENGTH, then the Modelfile).
GLOBAL_DEFAULTS: Mapping[str, Any] = {
    "num_batch": 512,
    "main_gpu": 0,
    "num_thread": 0,
    "use_mlock": False,
    "numa": False,
    "low_vram": False,
}


def _same_value(a: Any, b: Any) -> bool:
    """Equal as Ollama's decoded options are: ``4096`` and ``4096.0`` alike, but a bool
    is not a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return False


def runner_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The runner options among ``options`` (a job's Ollama ``options``), as given;
    ``None`` values and a negative ``num_gpu`` left out. This is what a job's stored
    runner key holds; :func:`effective_options` reduces it further."""
    out: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if key not in RUNNER_OPTIONS or value is None:
            continue
        if key == "num_gpu" and _is_number(value) and value < 0:
            continue
        out[key] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def effective_options(
    options: Mapping[str, Any] | None, model_defaults: Mapping[str, Any] | None
) -> dict[str, Any]:
    """:func:`runner_options` without those equal to the value Ollama uses anyway.

    ``model_defaults`` are the model's own runner options: those its Modelfile sets, and
    ``num_ctx``, the context it gets when a request sets none (see
    :func:`model_runner_defaults`). With them, an option is dropped when it equals the
    model's value, else the global default. While they are unknown (None) only global
    defaults are dropped and ``num_ctx`` is kept: conservative, an unknown model's
    ``num_ctx`` is never merged with its default runner.
    """
    out: dict[str, Any] = {}
    for key, value in runner_options(options).items():
        default = GLOBAL_DEFAULTS.get(key)
        if model_defaults is not None:
            default = model_defaults.get(key, default)
        if default is not None and _same_value(value, default):
            continue
        out[key] = value
    return out


def model_runner_defaults(parameters: str | None, default_num_ctx: int | None) -> dict[str, Any]:
    """A model's runner defaults from ``/api/show``'s ``parameters`` text (its Modelfile
    ``PARAMETER`` lines: ``num_ctx                        8192``), with ``num_ctx``
    filled in with ``default_num_ctx`` (the server's default context, when known) if the
    model sets none. Values that do not parse are left out (their option is then compared
    with the global default; ``num_ctx`` with nothing, so it is kept)."""
    out: dict[str, Any] = {} if default_num_ctx is None else {"num_ctx": default_num_ctx}
    for line in (parameters or "").splitlines():
        parts = line.split(None, 1)
        if len(parts) != 2 or parts[0] not in RUNNER_OPTIONS:
            continue
        text = parts[1].strip().strip('"')
        value: Any
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    continue
        out[parts[0]] = value
    return out


def compose(model: str, options: Mapping[str, Any] | None) -> str:
    """A runner key from a model identity and already reduced runner options."""
    if not options:
        return model
    return model + _SEPARATOR + json.dumps(dict(options), sort_keys=True, separators=(",", ":"))


def runner_key(model: str, options: Mapping[str, Any] | None = None) -> str:
    """The key of the runner a job for ``model`` with ``options`` runs on.

    Raises :class:`modelmanager.names.InvalidModelName` for a name Ollama refuses.
    """
    return compose(model_key(model), runner_options(options))


def canonical(runner: str, identity: str, model_defaults: Mapping[str, Any] | None) -> str:
    """``runner`` re-keyed: its model part replaced by ``identity`` (the identity of the
    weights it runs, shared by copies) and options Ollama would use anyway dropped, as
    far as ``model_defaults`` tell (see :func:`effective_options`)."""
    return compose(identity, effective_options(options_of(runner), model_defaults))


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
