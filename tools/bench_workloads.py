"""The workloads of ``tools/bench.py`` (deterministic, seeded) and their lower bounds.

Every workload is a list of :class:`BenchJob` with arrival times in seconds after the
start. Workloads are written in *simulated* seconds and multiplied by the simulator's
time scale, so a workload has the same shape at any ``--time-scale``. Each job's text
starts with ``[bench:<index>]``; the simulator copies that tag into its request log, which
is how the benchmark learns when each job reached "Ollama".

Lower bound of a workload's makespan (:func:`lower_bound`), with the simulator's own
durations (``tools.fake_ollama.load_seconds`` / ``generate_seconds`` / ``embed_seconds``):
``s_j`` is job j's time on a runner slot, ``w_m`` the sum of ``s_j`` over model m, ``l_m``
the load time of m, ``P_m`` its parallel slots (1 for embedding models), ``K`` the most
models Ollama holds at once (``OLLAMA_MAX_LOADED_MODELS``). It is the largest of:

- ``loads``: ``sum(l_m) + min(w_m / P_m)``: Ollama loads one model at a time, each model
  at least once, and the model whose first load ends last still has all its work to do;
- ``per_model``: ``max(l_m + w_m / P_m)``: a model runs its jobs only once loaded;
- ``slots``: ``min(l_m) + sum(w_m / P_m) / K``: nothing runs before the first load ends,
  then at most ``K`` models work at once, each on its ``P_m`` slots;
- ``seats``: ``sum(l_m + w_m / P_m) / K``: a model holds one of Ollama's ``K`` runner
  seats from the start of its load (a loading runner counts as loaded) to its last job,
  so the seats are busy for at least the sum of every model's load and work;
- ``arrivals``: ``max(a_j + s_j)``: no job ends before it arrives plus its own work;
- ``serial`` (closed-loop workloads, one job at a time on a warm model): ``sum(s_j)``.

Evictions, the VRAM release lag after an unload and HTTP time count as zero, so the bound
is optimistic: nothing can beat it, and a scheduler may come close only by overlapping
loads with work and keeping every slot busy.

Lower bound of the high-priority p95 of a burst (every job arrives at t = 0; latency is
then the job's end), :func:`high_p95_bound`, for the mixed-priority burst. ``n`` high jobs,
``n_m`` of them on model m, ``h_m`` the shortest of those on m, ``x_k`` the k-th smallest
high latency. Ollama loads one model at a time and a model runs jobs only once loaded,
so the k-th model to load is ready no earlier than the sum of the first k loads (its
own included), at best the k shortest. Take ``x_k`` and the set ``S`` of models of the k
high jobs ended by then (``sum(n_m for m in S) >= k``): the model of ``S`` whose first
load ends last is loaded no earlier than ``sum(l_m for m in S)``, whatever the order,
and one of the k jobs runs on it after that. Hence, trying every set (2^8 for 8 models),

    x_k >= B(k) = min over model sets S with sum(n_m) >= k of sum(l_m) + min(h_m), m in S

``pct()`` interpolates: with ``pos = (n - 1) * 0.95``, ``r = floor(pos) + 1`` and
``f = pos - floor(pos)``, ``p95 = (1 - f) * x_r + f * x_(r+1) >= (1 - f) * B(r) + f *
B(r+1)``, which is the bound. Normal and low jobs, the order of a model's jobs on its
slots, evictions and HTTP count as zero, so this too is optimistic. Its ratio to the
makespan bound tells whether a high/low p95 target can be met at all: the low jobs' p95
is at most the makespan, so ``p95_high <= x * p95_low`` together with ``makespan <= y *
lower bound`` needs ``high_p95_bound <= x * y * lower bound`` (0.4 * 1.3 = 0.52).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from tools.fake_ollama import CATALOG, embed_seconds, generate_seconds, load_seconds

#: The interleaved burst's eight models (the seed's text models); about 3 fit at once.
TEXT_MODELS = (
    "smollm:360m",
    "qwen2.5:0.5b",
    "tinyllama:1.1b",
    "smollm:1.7b",
    "llama3.2:1b",
    "gemma:2b",
    "qwen2.5:1.5b",
    "phi3:mini",
)
EMBED_MODELS = ("nomic-embed-text:latest", "all-minilm:latest")
#: The short-job streams' small models and each one's share of the jobs: 3 fit at once.
STREAM_MODELS = {
    "smollm:360m": 0.35,
    "qwen2.5:0.5b": 0.25,
    "tinyllama:1.1b": 0.18,
    "llama3.2:1b": 0.12,
    "qwen2.5:1.5b": 0.10,
}
#: Share of each priority in the mixed workloads (drawn per job with the seeded RNG).
PRIORITY_SHARES = {"high": 0.2, "normal": 0.6, "low": 0.2}
_WORDS = (  # noqa: SIM905 - a sentence is easier to read than 33 quoted words
    "gpu memory model queue batch token prompt answer latency cache layer weight scheduler "
    "request result vector cluster metric report summary quality review dataset sample "
    "label score river mountain forest city market energy signal"
).split()


@dataclass(frozen=True)
class BenchJob:
    """One job: sent straight to Ollama (direct) or submitted to Model Manager (managed)."""

    idx: int
    at: float  # arrival, seconds after the start (already time-scaled)
    model: str
    kind: str  # "generate" or "embed"
    priority: str  # "high", "normal" or "low"
    text: str  # the prompt, or the first embedding input
    extra_inputs: tuple[str, ...] = ()
    num_predict: int | None = None

    @property
    def tag(self) -> str:
        return str(self.idx)

    @property
    def inputs(self) -> list[str]:
        return [self.text, *self.extra_inputs]

    def direct_request(self) -> tuple[str, bytes]:
        """(path, body) of the request a program sends to Ollama itself."""
        body: dict[str, Any] = {"model": self.model, "stream": False}
        if self.kind == "embed":
            body["input"] = self.inputs if self.extra_inputs else self.text
            return "/api/embed", _encode(body)
        body["prompt"] = self.text
        if self.num_predict is not None:
            body["options"] = {"num_predict": self.num_predict}
        return "/api/generate", _encode(body)

    def submission(self) -> dict[str, Any]:
        """The same job as a Model Manager submission."""
        body: dict[str, Any] = {"model": self.model, "priority": self.priority}
        if self.kind == "embed":
            body["input"] = self.inputs if self.extra_inputs else self.text
        else:
            body["prompt"] = self.text
            if self.num_predict is not None:
                body["options"] = {"num_predict": self.num_predict}
        return body

    def seconds(self, time_scale: float) -> float:
        """Time on a runner slot in the simulator (no queueing, no load)."""
        if self.kind == "embed":
            return embed_seconds(self.model, self.inputs, time_scale)
        return generate_seconds(
            self.model, self.text, num_predict=self.num_predict, time_scale=time_scale
        )


@dataclass
class Workload:
    key: str
    title: str
    note: str
    jobs: list[BenchJob]
    #: another program's GPU memory: (start, end, target MiB) windows, time-scaled seconds
    pressure: list[tuple[float, float, int]] = field(default_factory=list)
    #: closed loop: one job at a time, each sent when the previous one ended
    sequential: bool = False
    #: a model warmed up (loaded by one untimed job) before the timed jobs
    warm_model: str | None = None
    #: report :func:`high_p95_bound` (a burst with high-priority jobs)
    high_bound: bool = False

    @property
    def models(self) -> list[str]:
        return sorted({j.model for j in self.jobs})

    @property
    def arrival_span(self) -> float:
        return max((j.at for j in self.jobs), default=0.0)


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))


def _prompt(rng: random.Random, idx: int) -> str:
    return f"[bench:{idx}] Write about {_sentence(rng, 6, 14)}."


def _ping(rng: random.Random, idx: int) -> str:
    return f"[bench:{idx}] ping {rng.choice(_WORDS)}"


def _priorities(rng: random.Random, n: int) -> list[str]:
    """``n`` priorities in ``PRIORITY_SHARES`` (rounded), in a seeded random order: exact
    shares, so a seed cannot leave a workload short of high or low jobs."""
    high, low = round(n * PRIORITY_SHARES["high"]), round(n * PRIORITY_SHARES["low"])
    out = ["high"] * high + ["low"] * low + ["normal"] * (n - high - low)
    rng.shuffle(out)
    return out


def _shares(jobs: list[BenchJob]) -> str:
    n = Counter(j.priority for j in jobs)
    return " / ".join(f"{n[p]} {p}" for p in PRIORITY_SHARES)


def _pressure_windows(
    duration: float, scale: float, mb: int = 3072
) -> list[tuple[float, float, int]]:
    """Another program holds up to ``mb`` MiB during 2 windows covering half the run."""
    windows = [(0.17, 0.43), (0.57, 0.83)]
    return [(a * duration * scale, b * duration * scale, mb) for a, b in windows]


def _mean_seconds(model: str, seed: int) -> float:
    rng = random.Random(seed)
    samples = [generate_seconds(model, _prompt(rng, 10_000 + i)) for i in range(64)]
    return sum(samples) / len(samples)


# ---------------------------------------------------------------------------- workloads


def interleaved(per_model: int, scale: float, seed: int) -> Workload:
    """A burst of generate jobs over 8 models, all at once, in round-robin order."""
    rng = random.Random(seed)
    jobs = []
    for i in range(per_model * len(TEXT_MODELS)):
        model = TEXT_MODELS[i % len(TEXT_MODELS)]
        jobs.append(BenchJob(i, 0.0, model, "generate", "normal", _prompt(rng, i)))
    return Workload(
        "interleaved",
        "1. interleaved burst",
        f"{len(jobs)} generate jobs over {len(TEXT_MODELS)} models, all at t=0, round-robin",
        jobs,
    )


def priority_mix(duration: float, scale: float, seed: int, overload: float = 1.25) -> Workload:
    """Low-priority background on 3 models at ``overload`` x each one's capacity (so a
    backlog builds: priorities matter only under contention) plus a high-priority job every 3 s,
    alternating between 2 other models."""
    rng = random.Random(seed)
    background = ("qwen2.5:0.5b", "llama3.2:1b", "tinyllama:1.1b")
    foreground = ("gemma:2b", "qwen2.5:1.5b")
    rates = [1.0 / _mean_seconds(m, seed) for m in background]  # jobs/s, 1 slot each
    gap = 1.0 / (sum(rates) * overload)
    arrivals: list[tuple[float, str, str]] = []
    t = 0.0
    while t < duration:  # each model gets jobs in proportion to its capacity
        arrivals.append((t, rng.choices(background, weights=rates)[0], "low"))
        t += gap * rng.uniform(0.8, 1.2)
    t, n = 3.0, 0
    while t < duration:
        arrivals.append((t, foreground[n % len(foreground)], "high"))
        t += 3.0
        n += 1
    arrivals.sort()
    jobs = [
        BenchJob(i, at * scale, model, "generate", prio, _prompt(rng, i))
        for i, (at, model, prio) in enumerate(arrivals)
    ]
    lows = sum(1 for j in jobs if j.priority == "low")
    return Workload(
        "priority",
        "2. priority mix",
        f"{lows} low-priority jobs on 3 models at {overload:g}x their capacity for "
        f"{duration:g} s, plus {len(jobs) - lows} high-priority jobs (one per 3 s) "
        "for 2 other models",
        jobs,
    )


def outside_pressure(duration: float, scale: float, seed: int, rate: float = 2.0) -> Workload:
    """4 models round-robin at ``rate`` jobs/s while another program takes up to 3 GiB of
    GPU memory (whatever is free, topping up as memory frees) in two windows."""
    rng = random.Random(seed)
    models = ("llama3.2:1b", "qwen2.5:1.5b", "smollm:1.7b", "gemma:2b")
    count = int(duration * rate)
    jobs = [
        BenchJob(i, i / rate * scale, models[i % 4], "generate", "normal", _prompt(rng, i))
        for i in range(count)
    ]
    return Workload(
        "pressure",
        "3. outside pressure",
        f"{count} generate jobs over 4 models at {rate:g}/s; another program holds up to "
        "3 GiB (all it can get) during 2 windows covering half the run",
        jobs,
        pressure=_pressure_windows(duration, scale),
    )


def embed_mix(bursts: int, per_burst: int, scale: float, seed: int) -> Workload:
    """Bursts every 5 s of jobs from 3 programs: one embedding model, two generate models."""
    rng = random.Random(seed)
    generators = ("smollm:360m", "qwen2.5:0.5b", "llama3.2:1b", "gemma:2b")
    jobs: list[BenchJob] = []
    for b in range(bursts):
        programs = [rng.choice(EMBED_MODELS), *rng.sample(generators, 2)]
        for k in range(per_burst):
            model = programs[k % 3]
            at = (b * 5.0 + rng.uniform(0.0, 0.3)) * scale
            i = len(jobs)
            if model in EMBED_MODELS:
                chunks = tuple(_sentence(rng, 20, 40) for _ in range(7))
                job = BenchJob(i, at, model, "embed", "normal", f"[bench:{i}] {chunks[0]}", chunks)
            else:
                job = BenchJob(i, at, model, "generate", "normal", _prompt(rng, i))
            jobs.append(job)
    jobs.sort(key=lambda j: (j.at, j.idx))
    n_embed = sum(1 for j in jobs if j.kind == "embed")
    return Workload(
        "embed_mix",
        "4. embed + generate, bursty",
        f"{bursts} bursts (one per 5 s) of {per_burst} jobs from 3 programs (an embedding "
        f"model and two text models, of {len(EMBED_MODELS) + len(generators)}); "
        f"{n_embed} embed jobs of 8 inputs",
        jobs,
    )


def warm(count: int, scale: float, seed: int) -> Workload:
    """One warm model, many tiny jobs (1 token), one at a time: the per-job overhead."""
    rng = random.Random(seed)
    model = "smollm:360m"
    jobs = [
        BenchJob(i, 0.0, model, "generate", "normal", _ping(rng, i), (), 1) for i in range(count)
    ]
    return Workload(
        "warm",
        "5. warm model, small jobs",
        f"{count} one-token generate jobs on a loaded {model}, one at a time (closed loop)",
        jobs,
        sequential=True,
        warm_model=model,
    )


def mixed_burst(per_model: int, scale: float, seed: int) -> Workload:
    """The interleaved burst's 8 models with short jobs (16 tokens) of mixed priority, drawn
    per job (``PRIORITY_SHARES``), all at once, in round-robin order."""
    rng = random.Random(seed)
    jobs = []
    for i, prio in enumerate(_priorities(rng, per_model * len(TEXT_MODELS))):
        model = TEXT_MODELS[i % len(TEXT_MODELS)]
        jobs.append(BenchJob(i, 0.0, model, "generate", prio, _prompt(rng, i), num_predict=16))
    return Workload(
        "mixed",
        "7. mixed-priority burst",
        f"{len(jobs)} 16-token generate jobs over {len(TEXT_MODELS)} models, all at t=0, "
        f"round-robin; {_shares(jobs)} priority",
        jobs,
        high_bound=True,
    )


def short_stream(
    duration: float, scale: float, seed: int, rate: float = 4.0, pressure: bool = False
) -> Workload:
    """A Poisson stream (``rate`` jobs/s for ``duration`` s) of short generate jobs (a
    one-word prompt, 8 to 16 tokens: 30 to 100 ms) over the 5 ``STREAM_MODELS`` in their
    shares, of mixed priority; with ``pressure``, the same stream (same seed) while another
    program takes GPU memory in the outside-pressure workload's windows. It takes up to
    5 GiB, not 3: the three largest of these small runners take 4.4 GiB with their CUDA
    contexts, so 3 GiB would never be in their way; 5 GiB leaves room for about two."""
    rng = random.Random(seed)
    models, weights = tuple(STREAM_MODELS), tuple(STREAM_MODELS.values())
    arrivals: list[float] = []
    t = rng.expovariate(rate)
    while t < duration:
        arrivals.append(t)
        t += rng.expovariate(rate)
    jobs = [
        BenchJob(
            i,
            at * scale,
            rng.choices(models, weights=weights)[0],
            "generate",
            prio,
            _ping(rng, i),
            num_predict=rng.randint(8, 16),
        )
        for i, (at, prio) in enumerate(zip(arrivals, _priorities(rng, len(arrivals)), strict=True))
    ]
    note = (
        f"{len(jobs)} short generate jobs (8-16 tokens) as a Poisson stream at {rate:g}/s for "
        f"{duration:g} s over {len(models)} models ({_shares(jobs)} priority)"
    )
    if not pressure:
        return Workload("stream", "8. short-job stream", note, jobs)
    return Workload(
        "stream_pressure",
        "9. short-job stream, outside pressure",
        f"{note}; another program holds up to 5 GiB during 2 windows covering half the run",
        jobs,
        pressure=_pressure_windows(duration, scale, 5120),
    )


def build(quick: bool, scale: float, seed: int) -> list[Workload]:
    """The job workloads (workload 6, the service alone, is in bench_service.py)."""
    if quick:
        return [
            interleaved(4, scale, seed),
            priority_mix(8.0, scale, seed + 1),
            outside_pressure(8.0, scale, seed + 2),
            embed_mix(2, 12, scale, seed + 3),
            warm(40, scale, seed + 4),
            mixed_burst(4, scale, seed + 5),
            short_stream(8.0, scale, seed + 6),
            short_stream(8.0, scale, seed + 6, pressure=True),
        ]
    return [
        interleaved(30, scale, seed),
        priority_mix(24.0, scale, seed + 1),
        outside_pressure(30.0, scale, seed + 2),
        embed_mix(6, 30, scale, seed + 3),
        warm(300, scale, seed + 4),
        mixed_burst(30, scale, seed + 5),
        short_stream(60.0, scale, seed + 6),
        short_stream(60.0, scale, seed + 6, pressure=True),
    ]


# ------------------------------------------------------------------------- lower bound


def lower_bound(
    wl: Workload, *, time_scale: float, num_parallel: int, max_loaded: int
) -> dict[str, Any]:
    """The makespan no scheduler can beat (see the module docstring); seconds."""
    seconds = {j.idx: j.seconds(time_scale) for j in wl.jobs}
    if wl.sequential:
        serial = sum(seconds.values())
        return {"lb_s": serial, "binding": "serial", "terms": {"serial": serial}}
    work: dict[str, float] = defaultdict(float)
    for j in wl.jobs:
        slots = 1 if CATALOG[j.model].is_embedding else num_parallel
        work[j.model] += seconds[j.idx] / slots
    loads = {m: load_seconds(m, num_parallel, time_scale) for m in work}
    terms = {
        "loads": sum(loads.values()) + min(work.values()),
        "per_model": max(loads[m] + work[m] for m in work),
        "slots": min(loads.values()) + sum(work.values()) / max_loaded,
        "seats": sum(loads[m] + work[m] for m in work) / max_loaded,
        "arrivals": max(j.at + seconds[j.idx] for j in wl.jobs),
    }
    binding = max(terms, key=lambda k: terms[k])
    return {"lb_s": terms[binding], "binding": binding, "terms": terms}


def high_p95_bound(
    wl: Workload, *, time_scale: float, num_parallel: int, q: float = 95.0
) -> dict[str, Any] | None:
    """The ``q``-th percentile (as :func:`tools.bench_procs.pct` takes it) of the
    high-priority latencies no scheduler can beat, for a burst (see the module docstring);
    seconds. None without high-priority jobs. Raises ValueError if a job arrives after 0.

    Returns ``p95_s``; ``high_jobs``; ``rank`` r and ``rank_s`` B(r), ``next_s`` B(r + 1)
    (the bounds of the two latencies ``pct`` interpolates between); ``models``, a
    cheapest set of models holding r high jobs.
    """
    if any(j.at > 0.0 for j in wl.jobs):
        raise ValueError(f"{wl.key}: not a burst, the bound needs every job at t = 0")
    high = [j for j in wl.jobs if j.priority == "high"]
    if not high:
        return None
    count = Counter(j.model for j in high)
    shortest: dict[str, float] = {}
    for j in high:
        s = j.seconds(time_scale)
        shortest[j.model] = min(s, shortest.get(j.model, s))
    loads = {m: load_seconds(m, num_parallel, time_scale) for m in count}
    sets = [g for k in range(1, len(count) + 1) for g in combinations(sorted(count), k)]

    def earliest(rank: int) -> tuple[float, tuple[str, ...]]:
        """B(rank) and its set: the rank-th smallest high latency is at least that."""
        return min(
            (sum(loads[m] for m in g) + min(shortest[m] for m in g), g)
            for g in sets
            if sum(count[m] for m in g) >= rank
        )

    pos = (len(high) - 1) * q / 100.0  # as pct(): 0-based, interpolated
    lo = math.floor(pos)
    frac = pos - lo
    rank_s, models = earliest(lo + 1)
    next_s = earliest(min(lo + 2, len(high)))[0]
    return {
        "p95_s": rank_s + (next_s - rank_s) * frac,
        "high_jobs": len(high),
        "rank": lo + 1,
        "rank_s": rank_s,
        "next_s": next_s,
        "models": list(models),
    }
