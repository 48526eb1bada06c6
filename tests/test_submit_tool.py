"""tools/submit_test_job.py as a user runs it: a subprocess against a running service."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import ROOT, Service, free_port

TOOL = str(ROOT / "tools" / "submit_test_job.py")
KEY = "k" * 16


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the tool with this environment minus any MM_* setting, plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MM_")}
    return subprocess.run(
        [sys.executable, TOOL, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**clean, **(env or {})},
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


def test_failed_jobs_exit_1(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    done = _run("--url", svc.url, "--random", "2", "--model", "no-such-model:7b")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "summary: 0 complete, 2 failed" in done.stdout


def test_url_without_a_scheme_is_http(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim)
    done = _run("--url", svc.url.removeprefix("http://"), "--spam", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted 2/2" in done.stdout


def test_api_key_from_the_flag_or_the_environment(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim, API_KEY=KEY)
    missing = _run("--url", svc.url, "--spam", "1")
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "needs an API key" in missing.stderr and "MM_API_KEY" in missing.stderr
    wrong = _run("--url", svc.url, "--spam", "1", "--api-key", "x" * 16)
    assert wrong.returncode == 2 and "refused" in wrong.stderr
    flag = _run("--url", svc.url, "--spam", "1", "--api-key", KEY)
    assert flag.returncode == 0 and "submitted 1/1" in flag.stdout, flag.stderr
    env = _run("--url", svc.url, "--spam", "1", env={"MM_API_KEY": KEY})
    assert env.returncode == 0 and "submitted 1/1" in env.stdout, env.stderr


def test_unreachable_service_exits_3_with_a_clear_message() -> None:
    done = _run("--url", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 3
    assert "not reachable" in done.stderr
    assert ".venv/bin/python main.py --simulate" in done.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--random", "0"], "'0'"),
        (["--random", "-3"], "'-3'"),
        (["--random", "many"], "'many'"),
        (["--spam", "0"], "'0'"),
        (["--delay", "-1"], "'-1'"),
        (["--url", "ftp://host:5001"], "'ftp://host:5001'"),
        (["--url", "localhost:port"], "'localhost:port'"),
        (["--priority", "urgent"], "'urgent'"),
    ],
)
def test_bad_argument_exits_2_naming_it(args: list[str], named: str) -> None:
    # the port is never asked: arguments are checked before the service is
    done = _run(*args, "--url", f"127.0.0.1:{free_port()}") if "--url" not in args else _run(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert named in done.stderr and args[0] in done.stderr
    assert "Traceback" not in done.stderr


def test_help_shows_defaults_environment_and_exit_statuses() -> None:
    done = _run("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "(default http://localhost:5001; the port from env MM_HTTP_PORT if set)" in text
    assert "(default none; env MM_API_KEY)" in text
    assert "(default 600)" in text
    assert "0 every job completed" in text and "3 the service could not be reached" in text
