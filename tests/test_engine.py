"""ExecutionEngine against the simulator over real HTTP: what a person tailing the log sees."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.conftest import Service, wait_until

MODEL = "qwen2.5:0.5b"


def test_each_job_logs_one_start_line_before_its_end_line(
    sim: Any, make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modelmanager.ENGINE")
    svc: Service = make_service(sim)
    ids = [svc.submit(model=MODEL, prompt=f"job {i}") for i in range(4)]
    svc.wait_done(ids)

    def engine_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "modelmanager.ENGINE"]

    # the end line follows the stored result, so it may come just after the job reads done
    wait_until(
        lambda: all(any(f"job {j} complete" in m for m in engine_lines()) for j in ids),
        what="a complete line per job",
    )
    lines = engine_lines()
    for job_id in ids:
        started = [i for i, m in enumerate(lines) if m.startswith(f"job {job_id} started")]
        ended = [i for i, m in enumerate(lines) if m.startswith(f"job {job_id} complete")]
        assert len(started) == 1 and len(ended) == 1
        assert lines[started[0]] == f"job {job_id} started on {MODEL} (attempt 1)"
        assert started[0] < ended[0]
