"""The models the simulator knows: their sizes, architecture and speed.

Sizes are bytes (``MIB`` = 2**20, ``GB`` = 10**9). ``vram_bytes`` is what ``/api/ps``
reports as ``size_vram`` at the default context with one parallel slot; the KV cache
grows it by ``kv_bytes_per_token`` per token of ``num_ctx * num_parallel`` beyond that.
Figures follow ``../shared/OLLAMA_FACTS.md`` §4 where it has them; the rest are
plausible values (disk sizes as ``ollama list`` shows them, KV from the f16 formula).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelmanager.names import InvalidModelName, model_key

MIB = 1 << 20
GB = 1_000_000_000
#: A runner's CUDA context: visible in NVML used memory, not in /api/ps size_vram.
CUDA_CONTEXT_BYTES = 250 * MIB
DEFAULT_NUM_CTX = 4096
DEFAULT_NUM_BATCH = 512
LOAD_BASE_S = 0.3  # runner start-up, seconds at time_scale 1
LOAD_BYTES_PER_S = 2.0 * GB  # weights copied to the GPU per second

#: Fixed ``modified_at`` (Unix seconds) of the newest preinstalled model; each further
#: catalog entry is a day older, so /api/tags has a stable newest-first order.
INSTALLED_AT = datetime(2025, 8, 1, 12, 0, tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class ModelSpec:
    """One model Ollama can know about.

    ``name`` is the spelling Ollama stores and lists (``display_name`` form, case kept).
    ``vram_bytes`` is ``size_vram`` in /api/ps at the default context (``default_num_ctx``:
    4096, or the training context if smaller) with one parallel slot; the KV cache adds
    ``kv_bytes_per_token`` per token of ``num_ctx * num_parallel`` beyond that. The CUDA
    context (:data:`CUDA_CONTEXT_BYTES`) comes on top and is not part of ``vram_bytes``.
    ``token_seconds`` is the time per generated token at ``time_scale`` 1.
    ``installed=False`` models exist only in the "registry": ``/api/pull`` installs them.
    """

    name: str
    digest: str
    disk_bytes: int
    vram_bytes: int
    kv_bytes_per_token: int
    architecture: str
    family: str
    families: tuple[str, ...]
    parameter_size: str
    quantization_level: str
    capabilities: tuple[str, ...]
    context_length: int
    embedding_length: int
    block_count: int
    head_count: int
    head_count_kv: int
    token_seconds: float
    installed: bool = True
    load_base_seconds: float = LOAD_BASE_S
    load_bytes_per_second: float = LOAD_BYTES_PER_S

    @property
    def default_num_ctx(self) -> int:
        """The context a runner gets when the request sets no ``num_ctx``."""
        return min(DEFAULT_NUM_CTX, self.context_length)

    @property
    def is_embedding(self) -> bool:
        """Embedding models: no generate/chat, always one parallel slot."""
        return "embedding" in self.capabilities

    @property
    def thinks(self) -> bool:
        """Models with the ``thinking`` capability think unless ``think: false``."""
        return "thinking" in self.capabilities

    def effective_ctx(self, num_ctx: int) -> int:
        """Per-slot context the runner really uses: clamped to the training context."""
        return max(1, min(num_ctx, self.context_length))

    def vram_for(self, num_ctx: int, num_parallel: int) -> int:
        """``size_vram`` in bytes of a runner with this per-slot context and slot count."""
        fixed = self.vram_bytes - self.kv_bytes_per_token * self.default_num_ctx
        return fixed + self.kv_bytes_per_token * self.effective_ctx(num_ctx) * max(1, num_parallel)

    def load_seconds(self, vram_bytes: int) -> float:
        """Load time in seconds at ``time_scale`` 1 for a runner of ``vram_bytes``."""
        return self.load_base_seconds + vram_bytes / self.load_bytes_per_second

    def details(self) -> dict[str, Any]:
        """The ``details`` object of /api/tags, /api/ps and /api/show."""
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": list(self.families),
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    def layers(self) -> list[tuple[str, int]]:
        """Blob layers of the model's manifest (config last), sizes summing to disk_bytes."""
        small = [("template", 1_429), ("license", 7_711), ("params", 96), ("config", 485)]
        model = self.disk_bytes - sum(size for _, size in small)
        return [("model", model), *small]

    def layer_digest(self, layer: str) -> str:
        """The sha256 hex digest of one of :meth:`layers` (deterministic, made up)."""
        return hashlib.sha256(f"{self.digest}:{layer}".encode()).hexdigest()

    @property
    def parameter_count(self) -> int:
        """``general.parameter_count`` of /api/show, from ``parameter_size`` (``1.2B``)."""
        match = re.match(r"([\d.]+)([MB])", self.parameter_size)
        if not match:
            return 0
        return int(float(match.group(1)) * (1e6 if match.group(2) == "M" else 1e9))


def _spec(
    name: str,
    id12: str,
    disk: int,
    vram: int,
    arch: str,
    layers: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    emb: int,
    ctx: int,
    params: str,
    quant: str,
    caps: tuple[str, ...],
    token_ms: float,
    *,
    family: str | None = None,
    families: tuple[str, ...] | None = None,
    kv: int | None = None,
    installed: bool = True,
) -> ModelSpec:
    """Catalog helper: the KV figure is the f16 formula 2 * layers * kv_heads * head_dim * 2 B."""
    digest = (id12 + hashlib.sha256(f"fake-ollama:{name}".encode()).hexdigest())[:64]
    fam = family or arch
    return ModelSpec(
        name=name,
        digest=digest,
        disk_bytes=disk,
        vram_bytes=vram,
        kv_bytes_per_token=2 * layers * kv_heads * head_dim * 2 if kv is None else kv,
        architecture=arch,
        family=fam,
        families=families or (fam,),
        parameter_size=params,
        quantization_level=quant,
        capabilities=caps,
        context_length=ctx,
        embedding_length=emb,
        block_count=layers,
        head_count=heads,
        head_count_kv=kv_heads,
        token_seconds=token_ms / 1000.0,
        installed=installed,
    )


_TEXT = ("completion",)
_TOOLS = ("completion", "tools")
_EMBED = ("embedding",)
_THINK = ("completion", "thinking")
_TOOLS_THINK = ("completion", "tools", "thinking")

#: Every model the simulator knows, by its stored name. Sizes in bytes; ``vram_bytes`` is
#: size_vram at the default context with one slot (see :class:`ModelSpec`).
CATALOG: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        # The seed's ten small models.
        _spec("smollm:360m", "45ad5c4a8e7c", 228_889_248, 470_000_000, "llama",
              32, 15, 5, 64, 960, 2048, "362M", "Q4_0", _TEXT, 3.0),
        _spec("all-minilm:latest", "1b226e2802db", 45_960_996, 98_566_144, "bert",
              6, 12, 12, 32, 384, 512, "23M", "F16", _EMBED, 0.5, kv=0),
        _spec("nomic-embed-text:latest", "0a109f422b47", 274_302_450, 595_000_000, "nomic-bert",
              12, 12, 12, 64, 768, 2048, "137M", "F16", _EMBED, 1.0, kv=0),
        _spec("qwen2.5:0.5b", "a8b0c5157701", 397_821_319, 976_000_000, "qwen2",
              24, 14, 2, 64, 896, 32768, "494.03M", "Q4_K_M", _TOOLS, 3.0),
        _spec("tinyllama:1.1b", "2644915ede35", 637_699_456, 840_000_000, "llama",
              22, 32, 4, 64, 2048, 2048, "1B", "Q4_0", _TEXT, 4.0),
        _spec("smollm:1.7b", "87a4c6c8c4fa", 990_197_344, 1_600_000_000, "llama",
              24, 32, 32, 64, 2048, 2048, "1.7B", "Q4_0", _TEXT, 5.0),
        _spec("llama3.2:1b", "baf6a787fdff", 1_321_098_329, 1_514_584_145, "llama",
              16, 32, 8, 64, 2048, 131072, "1.2B", "Q8_0", _TOOLS, 5.0),
        _spec("gemma:2b", "b50d6c999e59", 1_678_456_656, 2_250_000_000, "gemma",
              18, 8, 1, 256, 2048, 8192, "3B", "Q4_0", _TEXT, 6.0),
        _spec("qwen2.5:1.5b", "65ec06548149", 986_061_892, 1_460_000_000, "qwen2",
              28, 12, 2, 128, 1536, 32768, "1.5B", "Q4_K_M", _TOOLS, 5.0),
        _spec("phi3:mini", "4f2222927938", 2_176_178_913, 3_840_000_000, "phi3",
              32, 32, 32, 96, 3072, 4096, "3.8B", "Q4_0", _TEXT, 10.0),
        # Thinking models, and a Hugging Face model with a host, namespace and mixed case.
        _spec("qwen3:0.6b", "7df6b6e09427", 522_653_767, 1_290_000_000, "qwen3",
              28, 16, 8, 128, 1024, 40960, "751.63M", "Q4_K_M", _TOOLS_THINK, 3.5),
        _spec("deepseek-r1:1.5b", "a42b25d8c10a", 1_117_322_599, 1_530_000_000, "qwen2",
              28, 12, 2, 128, 1536, 131072, "1.8B", "Q4_K_M", _THINK, 5.0),
        _spec("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "c9e0f6a1d2b3",
              807_694_464, 1_000_000_000, "llama",
              16, 32, 8, 64, 2048, 131072, "1.24B", "Q4_K_M", _TOOLS, 5.0),
        # Larger ones.
        _spec("llama3.1:8b", "46e0c10c039e", 4_920_753_328, 5_760_000_000, "llama",
              32, 32, 8, 128, 4096, 131072, "8.0B", "Q4_K_M", _TOOLS, 18.0),
        _spec("qwen2.5:7b", "845dbda0ea48", 4_683_087_332, 5_420_000_000, "qwen2",
              28, 28, 4, 128, 3584, 32768, "7.6B", "Q4_K_M", _TOOLS, 17.0),
        _spec("llava:7b", "8dd30f6b0cb1", 4_733_363_377, 7_230_000_000, "llama",
              32, 32, 32, 128, 4096, 4096, "7B", "Q4_0", ("completion", "vision"), 18.0,
              families=("llama", "clip")),
        _spec("llama3.1:70b", "711a9e8463af", 42_520_413_916, 44_860_000_000, "llama",
              80, 64, 8, 128, 8192, 131072, "70.6B", "Q4_K_M", _TOOLS, 120.0),
        # Only in the "registry": /api/pull installs them.
        _spec("qwen2.5:3b", "357c53fb659c", 1_929_912_432, 2_430_000_000, "qwen2",
              36, 16, 2, 128, 2048, 32768, "3.1B", "Q4_K_M", _TOOLS, 8.0, installed=False),
        _spec("gemma2:2b", "8ccf136fdd52", 1_629_518_495, 2_570_000_000, "gemma2",
              26, 8, 4, 256, 2304, 8192, "2.6B", "Q4_0", _TEXT, 7.0, installed=False),
    )
}  # fmt: skip

_BY_KEY: dict[str, ModelSpec] = {model_key(name): spec for name, spec in CATALOG.items()}


def find_spec(name: str) -> ModelSpec | None:
    """The catalog ("registry") model ``name`` refers to, matched as Ollama matches names
    (case-insensitive, default host/namespace/tag); None if unknown or invalid."""
    try:
        return _BY_KEY.get(model_key(name))
    except InvalidModelName:
        return None


def spec_for(name: str) -> ModelSpec:
    """Like :func:`find_spec`, but raises ``KeyError`` for a name not in the catalog."""
    spec = find_spec(name)
    if spec is None:
        raise KeyError(name)
    return spec
