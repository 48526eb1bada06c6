"""Expected durations of simulated work, in seconds: lower bounds for benchmarks.

The formulas are the ones the simulator itself spends (``scheduler``, ``inference``), so
a load generator can predict what an idle simulator will take; queueing, evictions and
the VRAM release lag are not included. Every figure is multiplied by ``time_scale``.
"""

from __future__ import annotations

from .catalog import CUDA_CONTEXT_BYTES, DEFAULT_NUM_CTX, spec_for
from .fields import think_level
from .text import count_tokens, plan_reply, seed_of

#: A prompt token costs this fraction of a generated token (prompt evaluation is batched).
PROMPT_TOKEN_FACTOR = 0.1
#: An embedded token costs this fraction of a generated token.
EMBED_TOKEN_FACTOR = 0.05
#: Tokens the chat template adds around a generate prompt (not in raw mode).
TEMPLATE_TOKENS = 10


def load_seconds(model: str, num_parallel: int = 1, time_scale: float = 1.0) -> float:
    """How long loading ``model`` takes (default options, fully on the GPU), in seconds.

    Runner start-up plus the runner's GPU memory (its ``size_vram`` and CUDA context) at
    the load rate; embedding models get one slot. Raises ``KeyError`` for an unknown model.
    """
    spec = spec_for(model)
    parallel = 1 if spec.is_embedding else max(1, num_parallel)
    gpu = spec.vram_for(DEFAULT_NUM_CTX, parallel) + CUDA_CONTEXT_BYTES
    return time_scale * spec.load_seconds(gpu)


def generate_seconds(
    model: str,
    prompt: str,
    *,
    system: str = "",
    num_predict: int | None = None,
    time_scale: float = 1.0,
) -> float:
    """How long a loaded, fully-on-GPU runner spends on one ``/api/generate`` request that
    has no ``format``, ``context``, ``raw``, ``think`` or ``seed``: prompt evaluation plus
    one ``token_seconds`` per reply token (thinking included), in seconds. Waiting for a
    slot is not included. Raises ``KeyError`` for an unknown model."""
    spec = spec_for(model)
    reply = plan_reply(
        seed_of(spec.name, system, prompt, ""),
        num_predict=num_predict,
        think=think_level(None, spec.thinks),
    )
    prompt_tokens = max(1, count_tokens(system) + count_tokens(prompt) + TEMPLATE_TOKENS)
    tokens = prompt_tokens * PROMPT_TOKEN_FACTOR + len(reply.pieces)
    return time_scale * spec.token_seconds * tokens


def embed_seconds(model: str, inputs: list[str], time_scale: float = 1.0) -> float:
    """How long a loaded runner spends on one ``/api/embed`` request (default options).
    Raises ``KeyError`` for an unknown model."""
    spec = spec_for(model)
    ctx = spec.effective_ctx(DEFAULT_NUM_CTX)
    tokens = sum(min(max(1, count_tokens(text)), ctx) for text in inputs)
    return time_scale * tokens * spec.token_seconds * EMBED_TOKEN_FACTOR
