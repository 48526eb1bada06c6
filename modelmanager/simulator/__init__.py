"""An Ollama simulator with VRAM accounting, for tests and demos without a GPU.

It speaks Ollama's HTTP API (``../shared/OLLAMA_FACTS.md`` §1: field names, status
codes, error texts, NDJSON streaming; the request and response fields of Ollama 0.21:
thinking, tool calls, log probabilities) and reproduces Ollama's scheduler as of v0.11.5+
(§2): a fast path for loaded models, ONE FIFO pending queue worked by ONE scheduler thread
with head-of-line blocking, one load at a time, per-runner ``num_parallel`` slots,
eviction by (keep_alive, name) with idle runners first, a max-loaded-models cap, reloads
when runner options change, idle expiry, and an asynchronous unload whose VRAM comes back
with a lag. Model names are matched as Ollama matches them (case-insensitive, default
host, namespace and tag) and listed as stored. A client that disconnects has its work
stopped at once (logged with status 499, as Ollama logs it).

The GPUs are simulated (one by default; ``gpus``/``vram_mb`` for more, placed as Ollama
up to v0.11.4 places runners: the single GPU with the most free memory, else spread over
all, see :mod:`.gpu`): Ollama's fit check only sees its own runners, while a settable
"other program" per GPU also holds memory. A load that does not fit in a GPU's REAL free
memory fails with a CUDA out-of-memory error; growing the other program past a GPU's
capacity crashes the most recently loaded runners on that GPU. With ``nvml_state`` the
simulator keeps a fake-NVML state file (``../shared/fake-nvml``) in step, so NVML readers
see the same memory; several simulators (``nvml_index``: one Ollama per GPU) can share
one file, each updating its own devices (:mod:`.nvml`).

Use it in-process::

    with FakeOllama(time_scale=0.02).start() as sim:
        requests.post(sim.url + "/api/generate", json={"model": "llama3.2:1b", "prompt": "hi"})

or as a program: ``python3 -m modelmanager.simulator --port 11434`` (or the older
``python3 tools/fake_ollama.py``). Tests steer it through the Python methods
(``inject_fault``, ``set_gate``, ``set_other_program_mb``, ...) or the same controls over
HTTP under ``/_sim/`` (real Ollama has no such path); see :mod:`.faults`.

The request log keeps the last ``request_log_size`` requests, each with its arrival time
``t`` (``time.monotonic()``, system-wide on Linux, so other processes can compare it with
their own clock). A request whose prompt (generate), first input (embed) or last message
(chat) starts with ``[bench:<tag>]`` (``<tag>``: up to 64 of ``A-Z a-z 0-9 _ . : -``) has
``"tag": "<tag>"`` in its entry, so a load generator can tell when each of its jobs
reached "Ollama" (``tools/bench.py``).

Units: memory in bytes unless a name ends in ``_mb`` (MiB, 1 MB = 2**20 bytes, as NVML and
``--vram-mb`` count it); durations in the HTTP API in nanoseconds as Ollama reports them;
everything else in seconds. Every simulated duration (load, tokens, unload lag, pull
progress and, unless ``scale_keep_alive=False``, keep_alive) is multiplied by
``time_scale``; control durations (fault hang, refuse, latency) are real seconds.

The package imports nothing of Model Manager but :mod:`modelmanager.names`.
"""

from .catalog import CATALOG, CUDA_CONTEXT_BYTES, GB, MIB, ModelSpec, find_spec
from .cli import main
from .fake import FakeOllama
from .runners import RunnerOptions
from .timing import embed_seconds, generate_seconds, load_seconds
from .wire import (
    ERR_LOAD_OOM,
    ERR_MIDSTREAM_OOM,
    ERR_QUEUE_FULL,
    ERR_RUNNER_STOPPED,
    VERSION,
    canonical_name,
    parse_go_duration,
    parse_keep_alive,
)

__all__ = [
    "CATALOG",
    "CUDA_CONTEXT_BYTES",
    "ERR_LOAD_OOM",
    "ERR_MIDSTREAM_OOM",
    "ERR_QUEUE_FULL",
    "ERR_RUNNER_STOPPED",
    "GB",
    "MIB",
    "VERSION",
    "FakeOllama",
    "ModelSpec",
    "RunnerOptions",
    "canonical_name",
    "embed_seconds",
    "find_spec",
    "generate_seconds",
    "load_seconds",
    "main",
    "parse_go_duration",
    "parse_keep_alive",
]
