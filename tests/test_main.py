"""main.py as a newcomer runs it: --simulate serves and runs jobs; bad settings stop it."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import requests

from main import log_in_background
from modelmanager.logger import get_logger, setup_logging
from tests.conftest import ROOT, free_port, wait_until


def test_simulate_serves_runs_a_job_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MM_", "FAKE_NVML"))}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "--simulate",
            "--sim-time-scale",
            "0.02",
            "--http-port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
            "--log-file",
            str(tmp_path / "mm.log"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            try:
                return requests.get(f"{url}/api/health", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(healthy, timeout=30, interval=0.05)
        health = requests.get(f"{url}/api/health", timeout=5).json()
        assert health["backend"]["up"] is True
        job = requests.post(
            f"{url}/api/submit", json={"model": "llama3.2:1b", "prompt": "hi"}, timeout=5
        ).json()["job_id"]
        body = wait_until(
            lambda: (
                (b := requests.get(f"{url}/api/job/{job}", timeout=5).json())["status"]
                == "complete"
                and b
            ),
            timeout=30,
        )
        assert body["result"]
        stats = requests.get(f"{url}/api/stats", timeout=5).json()
        assert stats["resources"]["vram"]["total"] == 24576 * 1024 * 1024
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert f"Model Manager listening on http://127.0.0.1:{port}" in out  # default host
        log = (tmp_path / "mm.log").read_text()
        assert "[SYSTEM] Model Manager started" in log and f"job {job} complete" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_bad_setting_stops_startup_naming_it(tmp_path: Path) -> None:
    env = {**os.environ, "MM_MAX_ATTEMPTS": "many"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "MM_MAX_ATTEMPTS" in done.stderr and "'many'" in done.stderr


def test_log_lines_written_in_the_background_read_as_written_in_place(tmp_path: Path) -> None:
    """main.py hands records to a logging thread: the file gets the same one-line records,
    tracebacks and escaped control characters included, and stop() writes what is queued."""
    path = tmp_path / "mm.log"
    setup_logging(path)
    writer = log_in_background()
    log = get_logger("API")
    try:
        log.info("job %s accepted: %s", "j1", "forged\n[00:00:00.000] [API] line")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("submit failed on %s", "/api/submit")
        for i in range(200):
            log.info("burst %d", i)
    finally:
        writer.stop()
        root = logging.getLogger("modelmanager")
        for handler in [*root.handlers, *writer.handlers]:
            root.removeHandler(handler)
            handler.close()
        root.propagate = True
        root.setLevel(logging.NOTSET)
    lines = path.read_text().splitlines()
    assert len(lines) == 202
    assert all(re.match(r"^\[\d\d:\d\d:\d\d\.\d{3}\] \[API\] ", line) for line in lines)
    assert lines[0].endswith("job j1 accepted: forged\\n[00:00:00.000] [API] line")
    assert "submit failed on /api/submit | Traceback" in lines[1]
    assert lines[1].endswith("ValueError: boom")
    assert lines[-1].endswith("burst 199")
