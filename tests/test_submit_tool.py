"""tools/submit_test_job.py as a user runs it: a subprocess against a running service."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from tests.conftest import ROOT, Service, free_port

TOOL = str(ROOT / "tools" / "submit_test_job.py")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, TOOL, *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_random_jobs_all_complete_with_a_summary(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    done = _run("--url", svc.url, "--random", "12", "--seed", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "summary: 12 complete, 0 failed, 0 unfinished of 12" in done.stdout
    assert "submitted 12/12" in done.stdout


def test_batch_model_and_priority_options(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    done = _run("--url", svc.url, "--batch")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "summary: 4 complete" in done.stdout
    done = _run("--url", svc.url, "--random", "3", "--model", "llama3.2:1b", "--priority", "low")
    assert done.returncode == 0 and "llama3.2:1b" in done.stdout and "complete 3" in done.stdout
    spam = _run("--url", svc.url, "--spam", "5")
    assert spam.returncode == 0 and "submitted 5/5" in spam.stdout


def test_unreachable_service_gives_a_clear_message() -> None:
    done = _run("--url", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 2
    assert "not reachable" in done.stderr and "main.py --simulate" in done.stderr
