"""Model names as Ollama reads them: the one place that decides when two names are one model.

Ollama parses a name as ``[host/][namespace/]model[:tag]`` (``types/model/name.go``
``ParseName``), fills what is missing with ``registry.ollama.ai``, ``library`` and
``latest``, and compares names case-insensitively (``Name.EqualFold``). ``/api/tags`` and
``/api/ps`` report a name **as stored** (``DisplayShortest``: default host and namespace
left out, case kept), so ``hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M``,
``HF.CO/bartowski/llama-3.2-1b-instruct-gguf:q4_k_m`` and the stored spelling are one
model, and so are ``qwen2.5``, ``qwen2.5:latest``, ``library/Qwen2.5`` and
``registry.ollama.ai/library/qwen2.5:latest``.

:func:`model_key` gives that identity as a string (lower case, every default filled in);
the manager groups, matches ``/api/ps`` and learns sizes by it, and shows users the name
they sent. Pure functions, no I/O.
"""

from __future__ import annotations

import functools

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 128  # Ollama's MaxNamePartLen, which it applies to the whole string


class InvalidModelName(ValueError):
    """The name is not one Ollama's ``ParseName`` accepts."""


def _valid_part(part: str, *, dots: bool = True, colons: bool = False) -> bool:
    """Ollama's ``isValidPart``: a letter, digit or ``_`` first, then also ``-``, ``.``
    (not in a namespace) and ``:`` (in a host only: ``localhost:5000``)."""
    if not part or not (part[0].isascii() and (part[0].isalnum() or part[0] == "_")):
        return False
    allowed = "_-" + ("." if dots else "") + (":" if colons else "")
    return all(c.isascii() and (c.isalnum() or c in allowed) for c in part)


@functools.lru_cache(maxsize=4096)
def parse(name: str) -> tuple[str, str, str, str]:
    """``(host, namespace, model, tag)`` of ``name`` with Ollama's defaults filled in and
    the case kept. A leading ``http://`` or ``https://`` is dropped, as Ollama drops it.

    Raises :class:`InvalidModelName` for a name Ollama would refuse (empty, longer than 128
    characters, more than three ``/`` parts, a character outside its grammar, a build
    ``+x`` or digest ``@x`` part, which the manager does not accept).
    """
    if not isinstance(name, str):
        raise InvalidModelName("a model name must be a string")
    text = name
    for prefix in ("http://", "https://"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    if not text or len(text) > MAX_NAME_LENGTH:
        raise InvalidModelName(f"a model name has 1 to {MAX_NAME_LENGTH} characters")
    # the tag follows the last ':' after the last '/' ("/" is no tag character)
    tagged = text.rfind(":") > text.rfind("/")
    path, _, tag = text.rpartition(":") if tagged else (text, "", "")
    pieces = path.split("/")
    if len(pieces) > 3:
        raise InvalidModelName(f"invalid model name {name!r}: at most host/namespace/model")
    model = pieces[-1]
    namespace = pieces[-2] if len(pieces) >= 2 else ""
    host = pieces[0] if len(pieces) == 3 else ""
    if (
        not _valid_part(model)
        or (len(pieces) >= 2 and not _valid_part(namespace, dots=False))
        or (len(pieces) == 3 and not _valid_part(host, colons=True))
        or (tagged and not _valid_part(tag))
    ):
        raise InvalidModelName(f"invalid model name {name!r}")
    return (host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE, model, tag or DEFAULT_TAG)


def model_key(name: str) -> str:
    """The identity of the model ``name`` refers to: ``host/namespace/model:tag`` in lower
    case. Two names are the same model exactly when their keys are equal.

    Raises :class:`InvalidModelName` as :func:`parse` does.
    """
    host, namespace, model, tag = parse(name)
    return f"{host}/{namespace}/{model}:{tag}".lower()


def display_name(name: str) -> str:
    """The shortest spelling of ``name`` as Ollama displays it (``DisplayShortest``): the
    default host and namespace left out, ``:tag`` always written, case kept.
    ``Qwen2.5`` -> ``Qwen2.5:latest``; ``registry.ollama.ai/library/x`` -> ``x:latest``.

    Raises :class:`InvalidModelName` as :func:`parse` does.
    """
    host, namespace, model, tag = parse(name)
    if host.lower() == DEFAULT_HOST:
        if namespace.lower() == DEFAULT_NAMESPACE:
            return f"{model}:{tag}"
        return f"{namespace}/{model}:{tag}"
    return f"{host}/{namespace}/{model}:{tag}"


def same_model(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` name one model for Ollama (False if either is invalid)."""
    try:
        return model_key(a) == model_key(b)
    except InvalidModelName:
        return False
