"""REQUEST_TIMEOUT measures silence, and a request waiting in Ollama's queue behind
another request of its runner that is streaming its answer is not silent.

Real HTTP against the simulator (one slot per model, as Ollama's default
OLLAMA_NUM_PARALLEL 1): the manager sends a model one job more than it runs
(DISPATCH_AHEAD), and that job gets nothing until the slot frees."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Service

MODEL = "qwen2.5:0.5b"
LONG = {"num_predict": 2000}


@pytest.fixture
def slow_sim(gpu_state: Path, make_sim: Any) -> Any:
    """The simulator at a time scale where a "long" answer (2000 tokens of qwen2.5:0.5b,
    about 6 s at real speed) streams for about 0.9 s."""
    return make_sim(vram_mb=24576, nvml_state=str(gpu_state), time_scale=0.15)


def _warm(make_service: Any, sim: Any, **config: Any) -> Service:
    svc: Service = make_service(sim, **config)
    job = svc.submit(model=MODEL, prompt="warm", options={"num_predict": 4})
    assert svc.wait_done([job])[job]["status"] == "complete"
    return svc


def test_a_job_queued_behind_a_long_answer_waits_it_out(slow_sim: Any, make_service: Any) -> None:
    """Each answer streams for longer than REQUEST_TIMEOUT; the jobs queued in Ollama
    behind it get no byte meanwhile, yet none times out."""
    svc = _warm(make_service, slow_sim, REQUEST_TIMEOUT=0.5)
    t0 = time.monotonic()
    ids = [svc.submit(model=MODEL, prompt=f"long {i}", options=LONG) for i in range(3)]
    done = svc.wait_done(ids)
    elapsed = time.monotonic() - t0
    assert [done[i]["status"] for i in ids] == ["complete"] * 3, [done[i] for i in ids]
    assert [done[i]["attempts"] for i in ids] == [1, 1, 1]
    assert elapsed > 3 * 0.5  # each answer outlasted REQUEST_TIMEOUT
