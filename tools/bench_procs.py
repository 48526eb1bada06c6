"""Plumbing for ``tools/bench.py``: subprocesses, a lean HTTP client, percentiles.

The simulator (``tools/fake_ollama.py``) and the service (``main.py``) always run as
subprocesses, so the load generator never shares a GIL with what it measures. Every
process started here is registered in a :class:`Procs` group whose ``close()`` kills it;
``tools/bench.py`` closes the group in a ``finally`` and on SIGINT/SIGTERM.

Times: ``time.monotonic()`` is system-wide on Linux, so the simulator's request-log times
compare with this process's clock; the service stamps jobs with ``time.time()``.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FAKE_NVML_DIR = ROOT / ".fake-nvml"
FAKE_NVML_BUILD = ROOT.parent / "shared" / "fake-nvml" / "build.sh"
_LISTEN_RE = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")


class BenchError(RuntimeError):
    """Something the benchmark needs did not work (a process did not start, ...)."""


# ----------------------------------------------------------------------------- numbers


def pct(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100, linear interpolation); None for no values."""
    if not values:
        return None
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def rnd(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def iso_to_epoch(text: str | None) -> float | None:
    """``2026-11-23T10:00:00.123Z`` (the service's timestamps) to seconds since the epoch."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -------------------------------------------------------------------------------- HTTP


class Http:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1 (not thread-safe: one per thread).

    ``request`` reconnects once if the server closed an idle connection.
    """

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port, self.timeout = host, int(port.rstrip("/")), timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (1, 2):
            conn = self._connect()
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, obj: Any = None) -> tuple[int, Any]:
        body = None if obj is None else json.dumps(obj, separators=(",", ":")).encode()
        status, raw = self.request(method, path, body)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode("utf-8", "replace")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fake_nvml_lib() -> Path | None:
    """The fake libnvidia-ml.so.1 (built into ``.fake-nvml/`` on first use), or None."""
    lib = FAKE_NVML_DIR / "libnvidia-ml.so.1"
    if lib.exists():
        return lib
    if not FAKE_NVML_BUILD.exists():
        return None
    done = subprocess.run(
        ["bash", str(FAKE_NVML_BUILD), str(FAKE_NVML_DIR)], capture_output=True, check=False
    )
    return lib if done.returncode == 0 and lib.exists() else None


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without any ``MM_*`` setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MM_")}
    env.update(extra or {})
    return env


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the benchmark dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Proc:
    """One subprocess writing stdout+stderr to a file (never a pipe that could fill)."""

    def __init__(self, argv: list[str], log: Path, env: Mapping[str, str]) -> None:
        self.argv, self.log = argv, log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_bytes().decode("utf-8", "replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_port(self, timeout: float) -> int:
        """The port from the process's ``listening on http://127.0.0.1:PORT`` line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _LISTEN_RE.search(self.log.read_bytes()) if self.log.exists() else None
            if match:
                return int(match.group(1))
            if not self.alive():
                break
            time.sleep(0.02)  # polling the log file for the banner
        raise BenchError(f"{' '.join(self.argv[1:3])} did not start:\n{self.tail()}")

    def memory_kb(self) -> dict[str, int]:
        """VmRSS and VmHWM of the process in KiB, from /proc/<pid>/status."""
        out: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
        return out

    def kill(self, hard: bool = True) -> None:
        """SIGKILL (or with ``hard=False`` SIGTERM, then SIGKILL after 5 s); reap. Safe to
        call twice. The benchmark's processes keep nothing worth a clean stop."""
        if self.popen.poll() is None:
            if hard:
                self.popen.kill()
            else:
                self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


class Procs:
    """Every process the benchmark started; ``close()`` kills what is still running."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._procs: list[Proc] = []
        self._n = 0

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> Proc:
        self._n += 1
        proc = Proc(argv, self.tmp / f"{self._n:02d}-{name}.log", env)
        self._procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.kill()
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)

    def close(self) -> None:
        while self._procs:
            self._procs.pop().kill()


class Sim:
    """``tools/fake_ollama.py`` on a free port, keeping a fake-NVML state file."""

    def __init__(
        self,
        procs: Procs,
        *,
        vram_mb: int,
        time_scale: float,
        num_parallel: int = 1,
        max_loaded_models: int = 3,
        log_size: int = 100_000,
        nvml_state: Path | None = None,
        nvml_index: int = 0,
    ) -> None:
        """``nvml_state``/``nvml_index``: share another simulator's fake-NVML state file
        as its GPU ``nvml_index`` (one Ollama per GPU on one host)."""
        self.procs = procs
        self.vram_mb = vram_mb
        self.nvml_state = nvml_state or procs.tmp / f"sim-{procs._n + 1}.state"
        argv = [
            sys.executable,
            "tools/fake_ollama.py",
            "--port",
            "0",
            "--vram-mb",
            str(vram_mb),
            "--time-scale",
            str(time_scale),
            "--num-parallel",
            str(num_parallel),
            "--max-loaded-models",
            str(max_loaded_models),
            "--request-log-size",
            str(log_size),
            "--nvml-state",
            str(self.nvml_state),
            "--nvml-index",
            str(nvml_index),
        ]
        self.proc = procs.spawn("sim", argv, clean_env())
        self.url = f"http://127.0.0.1:{self.proc.wait_port(20.0)}"
        self.http = Http(self.url)

    def control(self, name: str, body: Any = None) -> Any:
        status, doc = self.http.json("POST" if body is not None else "GET", f"/_sim/{name}", body)
        if status != 200:
            raise BenchError(f"/_sim/{name}: {status} {doc}")
        return doc

    def stats(self) -> dict[str, Any]:
        return dict(self.control("stats"))

    def stop(self) -> None:
        self.http.close()
        self.procs.stop(self.proc)


class Service:
    """``main.py`` against a :class:`Sim` (or several, as backends ``n0``, ``n1``, ...
    sharing one fake-NVML state file), reading the GPUs through fake NVML when it can.

    ``settings`` become ``MM_<NAME>`` variables; everything else keeps its default.
    """

    def __init__(self, procs: Procs, sim: Sim | Sequence[Sim], **settings: Any) -> None:
        self.procs = procs
        sims = [sim] if isinstance(sim, Sim) else list(sim)
        sim = sims[0]
        data = procs.tmp / f"data-{procs._n + 1}"
        env = {f"MM_{k}": str(v) for k, v in settings.items()}
        if len(sims) > 1:
            env["MM_OLLAMA_BACKENDS"] = ",".join(f"n{i}={s.url}" for i, s in enumerate(sims))
        lib = fake_nvml_lib()
        if lib is not None:
            env["LD_LIBRARY_PATH"] = str(lib.parent)
            env["FAKE_NVML_STATE"] = str(sim.nvml_state)
        else:  # no fake NVML here: plan with the simulated GPU's size instead
            env.setdefault("MM_VRAM_BUDGET_MB", str(sim.vram_mb))
        self.vram_source = "nvml" if lib is not None else "budget"
        argv = [
            sys.executable,
            "main.py",
            "--ollama-url",
            sim.url,
            "--http-port",
            "0",
            "--data-dir",
            str(data),
            "--log-file",
            "",
        ]
        self.proc = procs.spawn("service", argv, clean_env(env))
        self.url = f"http://127.0.0.1:{self.proc.wait_port(30.0)}"
        self.http = Http(self.url)
        deadline = time.monotonic() + 30.0
        while True:
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.http.request("GET", "/api/health")[0] == 200:
                    break
            if time.monotonic() > deadline or not self.proc.alive():
                raise BenchError(f"service not healthy:\n{self.proc.tail()}")
            time.sleep(0.05)  # polling until the service answers

    def stats(self) -> dict[str, Any]:
        status, doc = self.http.json("GET", "/api/stats")
        if status != 200:
            raise BenchError(f"/api/stats: {status} {doc}")
        return dict(doc)

    def stop(self) -> None:
        self.http.close()
        self.procs.stop(self.proc)
