"""Model registry: catalog and Ollama-based estimates, learning from loads, persistence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelmanager.errors import BackendUnavailable
from modelmanager.model_registry import (
    CATALOG,
    JOB_SECONDS_WEIGHT,
    OOM_GROWTH,
    PRIOR_SECONDS_PER_GIB,
    RAISE_CAP,
    ModelRegistry,
    normalize,
    plausible_footprint,
)
from modelmanager.models import GIB, MIB
from modelmanager.runners import runner_key
from modelmanager.store import Store

MB = MIB

MULTIPLIER = 1.3


class FakeTags:
    """Stands in for the Ollama client's ``tags``: returns ``models`` or raises ``error``."""

    def __init__(self, *models: dict[str, Any]) -> None:
        self.models = list(models)
        self.error: BackendUnavailable | None = None
        self.calls = 0

    def __call__(self) -> list[dict[str, Any]]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return list(self.models)


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "jobs.db")
    yield s
    s.close()


@pytest.fixture
def tags() -> FakeTags:
    return FakeTags(
        {"name": "llama3.2:1b", "size": 1_321_098_329},
        {"name": "mystery:7b", "size": 4_000_000_000, "capabilities": ["completion", "vision"]},
        {"model": "Embedder", "size": 500_000_000, "capabilities": ["embedding"]},
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


def registry(store: Store, tags: FakeTags, clock: Clock | None = None) -> ModelRegistry:
    return ModelRegistry(store, multiplier=MULTIPLIER, tags=tags, clock=clock or Clock())


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("llama3.2", "registry.ollama.ai/library/llama3.2:latest"),
        ("llama3.2:1b", "registry.ollama.ai/library/llama3.2:1b"),
        ("Phi3:Mini", "registry.ollama.ai/library/phi3:mini"),
        ("library/llama3.2", "registry.ollama.ai/library/llama3.2:latest"),
        ("registry.ollama.ai/library/LLAMA3.2", "registry.ollama.ai/library/llama3.2:latest"),
        ("hf.co/Org/Model:Q4_K_M", "hf.co/org/model:q4_k_m"),
        # a port in the host is Ollama's grammar too; the tag is filled in
        ("Registry.Local:5000/team/Model", "registry.local:5000/team/model:latest"),
        # not Ollama's grammar: kept as spelled, lower-cased
        ("Bad Name!", "bad name!"),
    ],
)
def test_registry_normalize_gives_the_model_identity(given: str, expected: str) -> None:
    assert normalize(given) == expected


@pytest.mark.parametrize("model", sorted(CATALOG))
def test_registry_catalog_estimate_is_disk_size_times_multiplier(
    store: Store, tags: FakeTags, model: str
) -> None:
    info = registry(store, tags).info(model)
    assert info.estimate_bytes == int(CATALOG[model].disk_bytes * MULTIPLIER)
    assert info.source == "catalog"


def test_registry_catalog_needs_no_ollama(store: Store, tags: FakeTags) -> None:
    tags.error = BackendUnavailable("connection refused")
    reg = registry(store, tags)
    assert reg.refresh_tags() is False
    assert reg.estimate("phi3:mini") == int(2.2e9 * MULTIPLIER)
    assert reg.estimate("smollm:360m") == int(0.23e9 * MULTIPLIER)


def test_registry_unknown_model_uses_ollama_tags_size(store: Store, tags: FakeTags) -> None:
    reg = registry(store, tags)
    assert reg.estimate("mystery:7b") is None  # Ollama not asked yet
    assert reg.info("mystery:7b").source == "unknown"
    assert reg.refresh_tags() is True
    info = reg.info("Mystery:7B")
    assert info.name == normalize("mystery:7b")
    assert info.stored_name == "mystery:7b"  # as /api/tags lists it
    assert info.estimate_bytes == int(4_000_000_000 * MULTIPLIER)
    assert info.source == "ollama"
    assert info.capabilities == ("completion", "vision")
    assert reg.estimate("embedder") == int(500_000_000 * MULTIPLIER)  # listed by "model"
    assert reg.info("embedder").is_embedding
    assert reg.estimate("nobody:1b") is None


def test_registry_catalog_wins_over_tags_size(store: Store, tags: FakeTags) -> None:
    tags.models.append({"name": "phi3:mini", "size": 9 * GIB})
    reg = registry(store, tags)
    reg.refresh_tags()
    assert reg.estimate("phi3:mini") == int(2.2e9 * MULTIPLIER)


def test_registry_installed_is_none_until_ollama_answers(store: Store, tags: FakeTags) -> None:
    tags.error = BackendUnavailable("connection refused")
    reg = registry(store, tags)
    assert reg.installed("llama3.2:1b") is None
    assert reg.refresh_tags() is False
    assert reg.installed("llama3.2:1b") is None
    assert reg.info("llama3.2:1b").installed is None
    tags.error = None
    assert reg.refresh_tags() is True
    assert reg.installed("llama3.2:1b") is True
    assert reg.installed("LLAMA3.2:1b") is True
    assert reg.installed("embedder:latest") is True
    assert reg.installed("phi3:mini") is False  # in the catalog, but not pulled
    assert reg.info("phi3:mini").installed is False


def test_registry_refresh_tags_caches_for_its_ttl(store: Store, tags: FakeTags) -> None:
    clock = Clock()
    reg = ModelRegistry(store, multiplier=MULTIPLIER, tags=tags, clock=clock, tags_ttl=10.0)
    reg.refresh_tags()
    reg.refresh_tags()
    assert tags.calls == 1
    tags.models.append({"name": "new:1b", "size": 1})
    clock.now += 9.9
    reg.refresh_tags()
    assert reg.installed("new:1b") is False
    clock.now += 0.1
    reg.refresh_tags()
    assert reg.installed("new:1b") is True
    assert tags.calls == 2
    reg.refresh_tags(force=True)
    assert tags.calls == 3


def test_registry_keeps_the_last_list_when_ollama_goes_away(store: Store, tags: FakeTags) -> None:
    reg = registry(store, tags)
    reg.refresh_tags()
    tags.error = BackendUnavailable("connection refused")
    assert reg.refresh_tags(force=True) is False
    assert reg.installed("llama3.2:1b") is True


def test_registry_learned_nvml_delta_wins_over_ps_size(store: Store, tags: FakeTags) -> None:
    reg = registry(store, tags)
    learned = reg.learn_load(
        "llama3.2:1b", ps_vram_bytes=2 * GIB, nvml_delta_bytes=3 * GIB, load_seconds=1.5
    )
    assert learned == 3 * GIB
    info = reg.info("llama3.2:1b")
    assert (info.estimate_bytes, info.source) == (3 * GIB, "learned")
    assert info.learned_ps_vram_bytes == 2 * GIB
    assert info.learned_load_seconds == 1.5
    assert info.loads == 1


@pytest.mark.parametrize("delta", [None, 0, -5])
def test_registry_learns_ps_size_without_a_usable_nvml_delta(
    store: Store, tags: FakeTags, delta: int | None
) -> None:
    reg = registry(store, tags)
    reg.learn_load("tinyllama:1.1b", ps_vram_bytes=GIB, nvml_delta_bytes=delta, load_seconds=0.5)
    assert reg.estimate("TinyLlama:1.1b") == GIB


def test_registry_learned_values_survive_a_new_registry(store: Store, tags: FakeTags) -> None:
    first = registry(store, tags)
    first.learn_load("phi3:mini", ps_vram_bytes=3 * GIB, nvml_delta_bytes=None, load_seconds=4)
    first.learn_load(
        "phi3:mini", ps_vram_bytes=3 * GIB, nvml_delta_bytes=3 * GIB + 5, load_seconds=2
    )
    second = registry(store, tags)
    info = second.info("phi3:mini")
    assert info.estimate_bytes == 3 * GIB + 5
    assert info.source == "learned"
    assert info.learned_load_seconds == 2
    assert info.loads == 2
    assert normalize("phi3:mini") in second.known_models()


def test_registry_raise_estimate_grows_up_to_its_cap_and_is_not_persisted(
    store: Store, tags: FakeTags
) -> None:
    reg = registry(store, tags)
    before = reg.estimate("gemma:2b")
    assert before is not None
    grown = reg.raise_estimate("gemma:2b")
    assert grown == int(before * OOM_GROWTH)
    assert reg.estimate("gemma:2b") == grown
    again = reg.raise_estimate("gemma:2b")
    assert again is not None and again > grown
    # failures can never push the estimate past RAISE_CAP x the evidence
    assert reg.raise_estimate("gemma:2b", at_least=100 * GIB) == int(before * RAISE_CAP)
    for _ in range(50):
        reg.raise_estimate("gemma:2b")
    assert reg.estimate("gemma:2b") == int(before * RAISE_CAP)
    assert reg.info("gemma:2b").evidence_bytes == before
    # a restart forgets the raise: it never makes a model permanently impossible
    later = registry(store, tags)
    assert later.estimate("gemma:2b") == before
    assert later.info("gemma:2b").loads == 0  # raising is not a load


def test_registry_a_successful_load_replaces_a_raise(store: Store, tags: FakeTags) -> None:
    reg = registry(store, tags)
    reg.raise_estimate("gemma:2b", at_least=10 * GIB)
    reg.learn_load("gemma:2b", ps_vram_bytes=2 * GIB, nvml_delta_bytes=None, load_seconds=1)
    assert reg.estimate("gemma:2b") == 2 * GIB


def test_registry_ignores_raises_an_older_version_persisted(store: Store, tags: FakeTags) -> None:
    """Older versions stored failure raises as learned sizes: a 0.6 GB model could end
    up 'needing' 17 GB for ever. Rows no load measured are not trusted."""
    store.save_model_stats(
        "tinyllama:1.1b",
        vram_bytes=17 * GIB,
        ps_vram_bytes=None,
        load_seconds=None,
        now=1.0,
        count_load=False,
    )
    store.save_model_stats(
        "smollm:360m",
        vram_bytes=9 * GIB,
        ps_vram_bytes=500 * MB,
        load_seconds=0.5,
        now=1.0,
        count_load=True,
    )
    reg = registry(store, tags)
    assert reg.estimate("tinyllama:1.1b") == int(
        CATALOG[normalize("tinyllama:1.1b")].disk_bytes * MULTIPLIER
    )
    assert reg.estimate("smollm:360m") == 500 * MB


def test_registry_runner_estimate_follows_num_ctx_from_api_show(
    store: Store, tags: FakeTags
) -> None:
    shown: list[str] = []
    info = {
        "general.architecture": "llama",
        "llama.block_count": 16,
        "llama.attention.head_count": 32,
        "llama.attention.head_count_kv": 8,
        "llama.embedding_length": 2048,
        "llama.context_length": 131072,
    }

    def show(name: str) -> dict[str, Any]:
        shown.append(name)
        return {"model_info": info}

    reg = ModelRegistry(store, multiplier=MULTIPLIER, tags=tags, show=show, clock=Clock())
    base = reg.estimate("llama3.2:1b")
    assert base is not None
    per_token = 2 * 16 * 8 * 64 * 2  # 32 KiB: K and V, layers, kv heads, head dim, f16
    big = reg.estimate(runner_key("llama3.2:1b", {"num_ctx": 16384}))
    small = reg.estimate(runner_key("llama3.2:1b", {"num_ctx": 2048}))
    assert big == base + per_token * (16384 - 4096)
    assert small == base - per_token * 2048
    assert reg.estimate(runner_key("llama3.2:1b", {"num_batch": 256})) == base
    assert len(shown) == 1  # /api/show is asked once per model


def test_registry_raise_estimate_of_unknown_model_is_none(store: Store, tags: FakeTags) -> None:
    reg = registry(store, tags)
    assert reg.raise_estimate("nobody:1b") is None
    assert reg.estimate("nobody:1b") is None


def test_registry_known_models_lists_catalog_learned_and_installed(
    store: Store, tags: FakeTags
) -> None:
    reg = registry(store, tags)
    reg.refresh_tags()
    reg.learn_load("custom:3b", ps_vram_bytes=GIB, nvml_delta_bytes=None, load_seconds=1)
    known = reg.known_models()
    assert set(CATALOG) <= set(known)
    assert {normalize(m) for m in ("custom:3b", "mystery:7b", "Embedder")} <= set(known)
    assert known == sorted(known)


@pytest.mark.parametrize(
    ("ps_vram", "delta", "expected"),
    [
        (1_500 * MB, 1_750 * MB, 1_750 * MB),  # size_vram + a CUDA context: trusted
        (1_500 * MB, 133 * MB, 1_500 * MB),  # an evicted model's memory came back meanwhile
        (2_400 * MB, 5_468 * MB, 2_400 * MB),  # another program grew during the load
        (1_500 * MB, None, 1_500 * MB),  # the load overlapped another one: no delta
        (None, 900 * MB, 900 * MB),  # no /api/ps figure: the delta is all there is
        (None, None, None),
    ],
)
def test_registry_trusts_the_nvml_delta_only_when_plausible(
    ps_vram: int | None, delta: int | None, expected: int | None
) -> None:
    assert plausible_footprint(ps_vram, delta) == expected


def test_registry_job_seconds_before_any_job_grow_with_model_size(
    store: Store, tags: FakeTags
) -> None:
    reg = registry(store, tags)
    small, big = reg.job_seconds("smollm:360m"), reg.job_seconds("phi3:mini")
    assert 0 < small < big
    assert big == pytest.approx(PRIOR_SECONDS_PER_GIB * reg.estimate("phi3:mini") / GIB)


def test_registry_job_seconds_learn_a_moving_average_of_finished_jobs(
    store: Store, tags: FakeTags
) -> None:
    reg = registry(store, tags)
    reg.learn_job("qwen2.5:0.5b", 2.0)
    assert reg.job_seconds("qwen2.5:0.5b") == pytest.approx(2.0)
    reg.learn_job("qwen2.5:0.5b", 4.0)
    assert reg.job_seconds("qwen2.5:0.5b") == pytest.approx(2.0 + JOB_SECONDS_WEIGHT * 2.0)
    reg.learn_job("qwen2.5:0.5b", 0.0)  # no duration reported: ignored
    assert reg.job_seconds("qwen2.5:0.5b") == pytest.approx(2.0 + JOB_SECONDS_WEIGHT * 2.0)


def test_registry_job_seconds_of_unseen_models_scale_what_others_taught(
    store: Store, tags: FakeTags
) -> None:
    reg = registry(store, tags)
    per_gib = 0.5
    reg.learn_job("gemma:2b", per_gib * reg.estimate("gemma:2b") / GIB)  # type: ignore[operator]
    unseen = reg.job_seconds("tinyllama:1.1b")
    assert unseen == pytest.approx(per_gib * reg.estimate("tinyllama:1.1b") / GIB)  # type: ignore[operator]


# ------------------------------------------------------------- copies and runner options

MODEL_COPY = "MyTeam/MyModel:Latest"
D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


def copies() -> FakeTags:
    """qwen2.5:0.5b with two copies (one under a namespace, one spelled with capitals and
    a bare digest, as some Ollama versions list it), and a model of other weights."""
    return FakeTags(
        {"name": "qwen2.5:0.5b", "size": 397_000_000, "digest": D1},
        {"name": "MyTeam/MyModel:Latest", "size": 397_000_000, "digest": D1},
        {"name": "Zed:v1", "size": 397_000_000, "digest": D1.removeprefix("sha256:")},
        {"name": "tinyllama:1.1b", "size": 638_000_000, "digest": D2},
    )


@pytest.mark.parametrize(
    "name", ["qwen2.5:0.5b", "MyTeam/MyModel:Latest", "myteam/mymodel", "ZED:V1", "library/zed:v1"]
)
def test_registry_copies_have_one_identity(store: Store, name: str) -> None:
    reg = registry(store, copies())
    reg.refresh_tags()
    assert reg.identity(name) == normalize("qwen2.5:0.5b")  # the smallest of the copies
    # a runner already held among the copies keeps its key (a new copy never re-keys it)
    held = normalize("myteam/mymodel")
    assert reg.identity(name, [normalize("tinyllama:1.1b"), held]) == held
    assert reg.canonical(runner_key(name, {"num_gpu": -1})) == normalize("qwen2.5:0.5b")


@pytest.mark.parametrize("name", ["tinyllama:1.1b", "unknown:7b", "registry.local:5000/a/b"])
def test_registry_a_model_without_copies_is_its_own_identity(store: Store, name: str) -> None:
    reg = registry(store, copies())
    reg.refresh_tags()
    assert reg.identity(name, [normalize("qwen2.5:0.5b")]) == normalize(name)


def test_registry_identity_before_ollama_answers_is_the_name(store: Store) -> None:
    reg = registry(store, copies())
    assert reg.identity("MyTeam/MyModel:Latest") == normalize("MyTeam/MyModel:Latest")


def test_registry_canonical_drops_options_at_the_models_defaults(store: Store) -> None:
    parameters = {"qwen2.5:0.5b": 'stop "<|end|>"', "big:1b": "num_ctx 8192\nnum_batch 1024"}
    shown: list[str] = []

    def show(name: str) -> dict[str, Any]:
        shown.append(name)
        return {"parameters": parameters.get(name, ""), "model_info": {}}

    tags = copies()
    tags.models.append({"name": "big:1b", "size": 1_000_000_000, "digest": "sha256:" + "c" * 64})
    reg = ModelRegistry(store, multiplier=MULTIPLIER, tags=tags, show=show, clock=Clock())
    reg.refresh_tags()
    qwen, big = normalize("qwen2.5:0.5b"), normalize("big:1b")
    # the server's default context is unknown until a default runner was seen in /api/ps
    # (OLLAMA_CONTEXT_LENGTH or the VRAM tier: 4096, 32768 or 262144)
    assert reg.canonical(runner_key(MODEL_COPY, {"num_ctx": 4096, "main_gpu": 0})) == (
        runner_key("qwen2.5:0.5b", {"num_ctx": 4096})
    )
    reg.learn_default_context(MODEL_COPY, 4096)  # any name of the weights
    for options in ({"num_ctx": 4096}, {"main_gpu": 0}, {"num_batch": 512, "num_ctx": 4096.0}):
        assert reg.canonical(runner_key("MyTeam/MyModel", options)) == qwen, options
    assert reg.canonical(runner_key("qwen2.5:0.5b", {"num_ctx": 8192})) == runner_key(
        "qwen2.5:0.5b", {"num_ctx": 8192}
    )
    # the Modelfile's own values are the defaults: 8192 is the default context of big:1b
    assert reg.canonical(runner_key("big:1b", {"num_ctx": 8192, "num_batch": 1024})) == big
    reg.learn_default_context("big:1b", 8192)
    assert reg.canonical(runner_key("big:1b", {"num_ctx": 4096})) == runner_key(
        "big:1b", {"num_ctx": 4096}
    )
    assert reg.canonical(runner_key("big:1b", {"num_batch": 512})) == runner_key(
        "big:1b", {"num_batch": 512}
    )
    assert sorted(set(shown)) == ["big:1b", "qwen2.5:0.5b"]  # asked once per model


def test_registry_a_default_context_at_the_training_context_is_not_learned(
    store: Store,
) -> None:
    info = {"general.architecture": "llama", "llama.block_count": 2}
    info.update({"llama.attention.head_count": 2, "llama.embedding_length": 64})
    info["llama.context_length"] = 2048

    def show(name: str) -> dict[str, Any]:
        return {"parameters": "", "model_info": info}

    reg = ModelRegistry(store, multiplier=MULTIPLIER, tags=copies(), show=show, clock=Clock())
    reg.refresh_tags()
    reg.learn_default_context("qwen2.5:0.5b", 2048)  # maybe 4096 clamped to 2048
    assert reg.canonical(runner_key("qwen2.5:0.5b", {"num_ctx": 2048})) == runner_key(
        "qwen2.5:0.5b", {"num_ctx": 2048}
    )
    reg.learn_default_context("qwen2.5:0.5b", 1024)
    assert reg.canonical(runner_key("qwen2.5:0.5b", {"num_ctx": 1024})) == normalize("qwen2.5:0.5b")


def test_registry_canonical_keeps_num_ctx_while_the_model_is_unknown(store: Store) -> None:
    def show(name: str) -> dict[str, Any]:
        raise BackendUnavailable("down")

    reg = ModelRegistry(store, multiplier=MULTIPLIER, tags=copies(), show=show, clock=Clock())
    reg.refresh_tags()
    reg.learn_default_context("qwen2.5:0.5b", 4096)  # but the Modelfile is not known
    runner = runner_key("qwen2.5:0.5b", {"num_ctx": 4096, "main_gpu": 0})
    assert reg.canonical(runner) == runner_key("qwen2.5:0.5b", {"num_ctx": 4096})
