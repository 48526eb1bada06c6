"""Helpers for tests that run the simulator and the service as real subprocesses.

A subprocess service is what a crash test needs: it can be SIGKILLed and restarted on the
same data directory, and its HTTP server does not share the test's GIL. Every process
started here writes its stdout and stderr to a file under the test's ``tmp_path`` (never
a pipe, which could fill up and stall it); failures quote the tail of that file.

Teardown is the fixtures': :func:`sim_fixture` and :func:`services_fixture` make the
``sim`` and ``services`` fixtures a test module declares, and call :meth:`Proc.kill` in a
``finally``, so nothing outlives a failed test.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import ROOT, build_fake_nvml, wait_until

TERMINAL = frozenset({"complete", "failed", "cancelled"})
UNFINISHED = ("pending", "queued", "running")
_LISTEN_RE = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any ``MM_*`` setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MM_")}
    env.update(extra or {})
    return env


class Proc:
    """One subprocess whose output goes to ``log``. ``kill`` is safe to call any time."""

    def __init__(self, argv: list[str], log: Path, env: Mapping[str, str]) -> None:
        self.argv = argv
        self.log = log
        self.env = dict(env)
        self.popen: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def spawn(self) -> None:
        assert self.popen is None or self.popen.poll() is not None, "already running"
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def output(self, whole: bool = False) -> str:
        """What this run (or, with ``whole``, every run) wrote so far."""
        if not self.log.exists():
            return ""
        data = self.log.read_bytes()
        return (data if whole else data[self._offset :]).decode("utf-8", "replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output(whole=True).splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit status; fails the test if it has not exited within ``timeout``."""
        assert self.popen is not None
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.argv[1]} (pid {self.popen.pid}) still running after {timeout}s;"
                f" its output ends:\n{self.tail()}"
            ) from None

    def kill(self) -> None:
        """SIGKILL and reap (no-op if it already ended)."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def wait_listening(self, timeout: float) -> int:
        """The port from this run's 'listening on http://127.0.0.1:PORT' line."""

        def port() -> int | None:
            match = _LISTEN_RE.search(self.output())
            if match:
                return int(match.group(1))
            if not self.alive():
                raise AssertionError(
                    f"{self.argv[1]} exited with {self.popen and self.popen.returncode}"
                    f" before listening; output:\n{self.tail()}"
                )
            return None

        return wait_until(port, timeout, what=f"{self.argv[1]} listening")


class SimProcess(Proc):
    """``tools/fake_ollama.py`` on a free port of 127.0.0.1, keeping a fake-NVML state file."""

    def __init__(self, tmp: Path, *args: str, time_scale: float = 0.02) -> None:
        self.nvml_state = tmp / "sim-gpu.state"
        argv = [
            sys.executable,
            "tools/fake_ollama.py",
            "--port",
            "0",
            "--time-scale",
            str(time_scale),
            "--nvml-state",
            str(self.nvml_state),
            *args,
        ]
        super().__init__(argv, tmp / "sim.log", clean_env())
        self.url = ""
        self.session = requests.Session()

    def start(self, timeout: float = 20.0) -> SimProcess:
        self.spawn()
        self.url = f"http://127.0.0.1:{self.wait_listening(timeout)}"
        return self

    def gate(self, closed: bool) -> None:
        r = self.session.post(f"{self.url}/_sim/gate", json={"closed": closed}, timeout=5)
        assert r.status_code == 200, r.text

    def stats(self) -> dict[str, Any]:
        return dict(self.session.get(f"{self.url}/_sim/stats", timeout=5).json())

    def generate(self, model: str, prompt: str) -> str:
        """The simulator's own answer, as the service would store it."""
        body = {"model": model, "prompt": prompt, "stream": False}
        r = self.session.post(f"{self.url}/api/generate", json=body, timeout=30)
        assert r.status_code == 200, r.text
        return str(r.json()["response"])

    def kill(self) -> None:
        super().kill()
        self.session.close()


class ServiceProcess(Proc):
    """``main.py`` against a simulator, on one data directory, restartable on one port.

    The first start binds port 0 and reads the port from the service's banner; restarts
    reuse it (what a client sees after a crash). The GPU is the simulator's, read through
    the fake NVML library.
    """

    def __init__(self, tmp: Path, sim: SimProcess, name: str = "svc", **settings: Any) -> None:
        self.data_dir = tmp / f"{name}-data"
        self.port = 0
        env = {
            "LD_LIBRARY_PATH": str(build_fake_nvml().parent),
            "FAKE_NVML_STATE": str(sim.nvml_state),
            "MM_MONITOR_INTERVAL": "0.05",
            "MM_RETRY_BASE_SECONDS": "0.05",
            "MM_RETRY_MAX_SECONDS": "0.5",
            "MM_REQUEST_TIMEOUT": "30",
            "MM_LOAD_TIMEOUT": "30",
        }
        env.update({f"MM_{k}": str(v) for k, v in settings.items()})
        self.sim = sim
        super().__init__([], tmp / f"{name}.log", clean_env(env))
        self.session = requests.Session()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.db"

    def argv_for(self, port: int, data_dir: Path | None = None) -> list[str]:
        return [
            sys.executable,
            "main.py",
            "--ollama-url",
            self.sim.url,
            "--data-dir",
            str(data_dir or self.data_dir),
            "--http-port",
            str(port),
            "--log-file",
            "",
        ]

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        """Start (or restart) and wait until /api/health answers 200."""
        self.argv = self.argv_for(self.port)
        self.spawn()
        with self.log.open("ab") as out:
            out.write(f"----- started pid {self.pid}\n".encode())
        self.port = self.wait_listening(timeout)
        self.session.close()
        self.session = requests.Session()

        def healthy() -> bool:
            if not self.alive():
                raise AssertionError(f"service exited while starting:\n{self.tail()}")
            try:
                return self.session.get(f"{self.url}/api/health", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(healthy, timeout, what="service health")
        return self

    def kill(self) -> None:
        super().kill()
        self.session.close()

    def sigkill(self) -> None:
        """Kill -9 now and reap."""
        assert self.alive(), f"service already ended:\n{self.tail()}"
        os.kill(self.pid, signal.SIGKILL)
        self.wait(10)
        self.session.close()

    # -------------------------------------------------------------- HTTP helpers

    def submit(self, **job: Any) -> str:
        r = self.session.post(f"{self.url}/api/submit", json=job, timeout=10)
        assert r.status_code == 200, r.text
        return str(r.json()["job_id"])

    def submit_batch(self, jobs: list[dict[str, Any]]) -> list[str]:
        r = self.session.post(f"{self.url}/api/submit_batch", json={"jobs": jobs}, timeout=30)
        assert r.status_code == 200, r.text
        return [str(i) for i in r.json()["job_ids"]]

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.session.get(f"{self.url}/api/job/{job_id}", timeout=10)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def health(self) -> dict[str, Any]:
        r = self.session.get(f"{self.url}/api/health", timeout=10)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def by_status(self) -> dict[str, int]:
        r = self.session.get(f"{self.url}/api/stats", timeout=10)
        assert r.status_code == 200, r.text
        return dict(r.json()["queue"]["by_status"])

    def wait_idle(self, timeout: float) -> dict[str, int]:
        """Poll until no job is pending, queued or running; return the status counts."""

        def idle() -> dict[str, int] | None:
            counts = self.by_status()
            return None if any(counts.get(s) for s in UNFINISHED) else counts or {"-": 0}

        return wait_until(idle, timeout, interval=0.05, what="all jobs finished")


def sim_fixture(*args: str) -> Any:
    """The ``sim`` fixture of a test module (``sim = sim_fixture("--num-parallel", "2")``):
    a :class:`SimProcess` started with the extra ``args``, killed at teardown."""

    @pytest.fixture
    def sim(tmp_path: Path) -> Iterator[SimProcess]:
        proc = SimProcess(tmp_path, *args)
        try:
            yield proc.start()
        finally:
            proc.kill()

    return sim


def services_fixture() -> Any:
    """The ``services`` fixture of a test module (``services = services_fixture()``): a
    factory ``services(name="svc", **settings)`` of :class:`ServiceProcess` objects (not
    yet started) against the module's ``sim``, all killed at teardown."""

    @pytest.fixture
    def services(tmp_path: Path, sim: SimProcess) -> Iterator[Callable[..., ServiceProcess]]:
        made: list[ServiceProcess] = []

        def make(name: str = "svc", **settings: Any) -> ServiceProcess:
            svc = ServiceProcess(tmp_path, sim, name, **settings)
            made.append(svc)
            return svc

        try:
            yield make
        finally:
            for svc in made:
                svc.kill()

    return services


def read_jobs(db_path: Path) -> dict[str, dict[str, Any]]:
    """Every job row of a store whose service is not running, by id."""
    with _readonly(db_path) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT id, status, result, error, error_code, attempts, started_at, completed_at,"
            " model, payload FROM jobs"
        ).fetchall()
    return {r["id"]: dict(r) for r in rows}


def integrity_check(db_path: Path) -> str:
    """``PRAGMA integrity_check`` of a store whose service is not running."""
    with _readonly(db_path) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


@contextmanager
def _readonly(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection: it never checkpoints, so the next start finds the WAL
    exactly as the crash left it."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        yield db
    finally:
        db.close()
