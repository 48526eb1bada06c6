"""main.py as a newcomer runs it: --simulate serves and runs jobs; bad flags, settings and
busy ports stop it with one sentence; typos in MM_* names are warned about; --help and the
shutdown say what they do."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
import requests

from main import FLAGS, log_in_background, shutdown_message
from modelmanager.logger import get_logger, setup_logging
from tests.conftest import ROOT, free_port, wait_until
from tests.procs import ServiceProcess, SimProcess, clean_env, services_fixture, sim_fixture

MAIN = str(ROOT / "main.py")
sim = sim_fixture()
services = services_fixture()


def run_main(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """main.py with ``args`` in ``cwd`` (where a default log file or data directory would
    go), this environment minus MM_* settings plus ``env``; it is expected to stop by
    itself (a startup error)."""
    return subprocess.run(
        [sys.executable, MAIN, *args],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_simulate_serves_runs_a_job_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    launched = time.time()
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
        # the simulator is reached at the scheduler's first probe, just after start
        wait_until(
            lambda: requests.get(f"{url}/api/health", timeout=5).json()["backend"]["up"],
            timeout=30,
            what="the simulator reachable",
        )
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
        # the simulator keeps the model for the manager's keep_alive in real seconds (at
        # 0.02 a scaled one would drop it within seconds, behind the manager's back)
        [loaded] = requests.get(f"{url}/api/ps", timeout=5).json()["models"]
        expires = datetime.fromisoformat(loaded["expires_at"].replace("Z", "+00:00"))
        assert expires.timestamp() - time.time() > 60, loaded["expires_at"]
        stats = requests.get(f"{url}/api/stats", timeout=5).json()
        assert stats["resources"]["vram"]["total"] == 24576 * 1024 * 1024
        # the counters are this run's: they say since when
        since = datetime.fromisoformat(stats["counters_since"]).timestamp()
        assert launched - 1 <= since <= time.time(), stats["counters_since"]
        assert stats["counters"]["completed"] == 1
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert f"Model Manager listening on http://127.0.0.1:{port}" in out  # default host
        log = (tmp_path / "mm.log").read_text()
        assert "[SYSTEM] Model Manager started" in log and f"job {job} complete" in log
        assert "[SYSTEM] shutting down: no job running" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_bad_setting_stops_startup_naming_it(tmp_path: Path) -> None:
    done = run_main(tmp_path, "--data-dir", str(tmp_path), env={"MM_MAX_ATTEMPTS": "many"})
    assert done.returncode == 2
    assert "MM_MAX_ATTEMPTS" in done.stderr and "'many'" in done.stderr


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--http-port", "99999"], {}, "99999"),
        (["--http-port", "-1"], {}, "-1"),
        ([], {"MM_HTTP_PORT": "70000"}, "70000"),
        (["--http-port", "five"], {}, "'five'"),
        (["--simulate", "--sim-time-scale", "0"], {}, "'0'"),
        (["--simulate", "--sim-time-scale", "-2"], {}, "'-2'"),
        (["--simulate", "--sim-time-scale", "nan"], {}, "'nan'"),
        (["--log-file", "/nonexistent-dir/mm.log"], {}, "'/nonexistent-dir/mm.log'"),
        (["--ollama-url", "localhost:11434"], {}, "'localhost:11434'"),
        (["--no-such-flag"], {}, "--no-such-flag"),
    ],
)
def test_startup_error_is_one_sentence_naming_the_value(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    done = run_main(tmp_path, "--data-dir", str(tmp_path / "data"), *args, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert named in lines[0]
    assert "Traceback" not in done.stderr and "started" not in done.stderr


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port of 127.0.0.1 that something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_busy_port_stops_startup_before_started_is_logged(tmp_path: Path, busy_port: int) -> None:
    log = tmp_path / "mm.log"
    done = run_main(
        tmp_path,
        *("--http-port", str(busy_port), "--data-dir", str(tmp_path / "data")),
        *("--log-file", str(log), "--ollama-url", f"http://127.0.0.1:{free_port()}"),
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"cannot listen on 127.0.0.1 port {busy_port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr
    assert "started" not in log.read_text() and "started" not in done.stderr


def test_misspelt_environment_names_are_warned_with_the_closest_setting(
    tmp_path: Path, busy_port: int
) -> None:
    log = tmp_path / "mm.log"
    done = run_main(
        tmp_path,
        *("--http-port", str(busy_port), "--data-dir", str(tmp_path / "data")),
        "--log-file",
        str(log),
        env={"MM_MAX_ATTMPTS": "5", "MM_http_port": "6000", "MM_XYZZY": "1"},
    )
    assert done.returncode == 3, done.stderr
    expected = [
        "MM_MAX_ATTMPTS is not a setting and is ignored; did you mean MM_MAX_ATTEMPTS?",
        "MM_XYZZY is not a setting and is ignored; see main.py --help for the settings",
        "MM_http_port is not a setting and is ignored; did you mean MM_HTTP_PORT?",
    ]
    for text in (done.stderr, log.read_text()):
        warned = [line.split("] ", 2)[-1] for line in text.splitlines() if "not a setting" in line]
        assert warned == expected, text
    # where a bad value stops startup first, the warnings still come (on stderr)
    stopped = run_main(tmp_path, env={"MM_MAX_ATTMPTS": "5", "MM_HTTP_PORT": "99999"})
    assert stopped.returncode == 2
    assert stopped.stderr.splitlines()[0] == f"warning: {expected[0]}", stopped.stderr


def test_help_shows_each_flag_with_its_default_and_environment_name() -> None:
    done = subprocess.run(
        [sys.executable, MAIN, "--help"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "Port of the HTTP API (default 5001; env MM_HTTP_PORT)" in text
    assert "(default http://localhost:11434; env MM_OLLAMA_BASE_URL)" in text
    assert "(default none; env MM_API_KEY)" in text
    for flag, (name, _) in FLAGS.items():
        assert re.search(rf"{flag} \S+ .*?\(default [^;]+; env MM_{name}\)", text), flag
    assert "(default 1.0)" in text  # --sim-time-scale
    assert "exit status: 0 after a clean stop" in text


def test_shutdown_message_says_what_it_waits_for() -> None:
    assert shutdown_message(0, 30.0) == "shutting down: no job running"
    text = shutdown_message(2, 30.0)
    assert "waiting up to 30s (SHUTDOWN_TIMEOUT) for 2 running job(s)" in text
    assert "a second signal (Ctrl-C) stops at once" in text


def test_sigterm_with_running_jobs_logs_what_the_stop_waits_for(
    sim: SimProcess, services: Callable[..., ServiceProcess]
) -> None:
    svc = services(SHUTDOWN_TIMEOUT=1).start()
    sim.gate(True)
    job = svc.submit(model="qwen2.5:0.5b", prompt="held")
    wait_until(lambda: svc.job(job)["status"] == "running", 20, what="job running")
    svc.signal(signal.SIGTERM)
    assert svc.wait(20) == 0
    out = svc.output()
    assert "shutting down: waiting up to 1s (SHUTDOWN_TIMEOUT) for 1 running job(s)" in out
    assert "a second signal (Ctrl-C) stops at once" in out
    sim.gate(False)


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


def _three_gpus(tmp_path: Path) -> dict[str, str]:
    """The environment of a host whose NVML (the fake library) shows three GPUs."""
    from tests.conftest import FAKE_NVML_DIR, build_fake_nvml

    build_fake_nvml()
    state = tmp_path / "gpu.state"
    state.write_text("device_count=3\n" + "".join(f"gpu{i}.total_mb=8192\n" for i in range(3)))
    return {"LD_LIBRARY_PATH": str(FAKE_NVML_DIR), "FAKE_NVML_STATE": str(state)}


@pytest.mark.parametrize(
    ("args", "named"),
    [
        # two servers on this host, three GPUs: which GPU is whose?
        (["--ollama-backends", "gpu0=http://127.0.0.1:1,gpu1=http://127.0.0.1:2"], "GPUS"),
        # a GPU NVML does not show
        (["--ollama-backends", "gpu0=http://127.0.0.1:1,gpu1=http://127.0.0.1:2"], "gpu1=7"),
        # one Ollama under two names, spelt differently
        (["--ollama-backends", "a=http://127.0.0.1:18210,b=http://localhost:18210/"], "two names"),
        (["--ollama-backends", "a=http://127.0.0.1:18210,b=HTTP://[::1]:18210"], "two names"),
    ],
)
def test_fleet_settings_that_cannot_work_stop_startup_with_one_sentence(
    tmp_path: Path, args: list[str], named: str
) -> None:
    env = _three_gpus(tmp_path)
    if named == "gpu1=7":
        env["MM_OLLAMA_BACKEND_GPUS"] = "gpu0=0,gpu1=7"
    done = run_main(tmp_path, "--data-dir", str(tmp_path / "data"), *args, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert named in lines[0] and "Traceback" not in done.stderr


def test_a_gpu_count_mismatch_with_simulate_stops_with_one_sentence(tmp_path: Path) -> None:
    backends = "gpu0=http://127.0.0.1:1,gpu1=http://127.0.0.1:2"
    args = ["--data-dir", str(tmp_path / "d"), "--simulate", "--ollama-backends", backends]
    done = run_main(tmp_path, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "OLLAMA_BACKEND_GPUS" in done.stderr and "Traceback" not in done.stderr
