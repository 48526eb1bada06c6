"""Shared fixtures.

``fake_nvml`` builds ``../shared/fake-nvml`` (once, into ``.fake-nvml/``) and loads it into
this process by path, so the real ``pynvml`` binding talks to it. Each test points it at
its own state file through ``FAKE_NVML_STATE``.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import requests

if TYPE_CHECKING:
    from tools.fake_ollama import FakeOllama

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
FAKE_NVML_DIR = ROOT / ".fake-nvml"
FAKE_NVML_SRC = ROOT.parent / "shared" / "fake-nvml"
FAKE_NVML_LIB = FAKE_NVML_DIR / "libnvidia-ml.so.1"


def build_fake_nvml() -> Path:
    """Build the fake libnvidia-ml.so.1 unless it is already there; return its path."""
    if not FAKE_NVML_LIB.exists():
        build = FAKE_NVML_SRC / "build.sh"
        if not build.exists():
            pytest.skip(f"fake-nvml sources not found at {FAKE_NVML_SRC}")
        subprocess.run(["bash", str(build), str(FAKE_NVML_DIR)], check=True, capture_output=True)
    return FAKE_NVML_LIB


@pytest.fixture(scope="session")
def fake_nvml_lib() -> Path:
    """The fake NVML library, loaded into this process so ``pynvml`` finds it by soname."""
    lib = build_fake_nvml()
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    return lib


@pytest.fixture
def gpu_state(fake_nvml_lib: Path, tmp_path: Path) -> Iterator[Path]:
    """A fresh fake-NVML state file for this test (written by the test or the simulator)."""
    state = tmp_path / "gpu.state"
    old = os.environ.get("FAKE_NVML_STATE")
    os.environ["FAKE_NVML_STATE"] = str(state)
    try:
        yield state
    finally:
        if old is None:
            os.environ.pop("FAKE_NVML_STATE", None)
        else:
            os.environ["FAKE_NVML_STATE"] = old


def write_gpu_state(path: Path, text: str) -> None:
    """Replace a fake-NVML state file atomically, as its README asks."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------- integration


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then closed):
    nothing listens there unless something binds it next."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 20.0,
    interval: float = 0.01,
    *,
    what: str = "",
) -> T:
    """Poll ``predicate`` every ``interval`` seconds until it returns something truthy, and
    return that; fail the test after ``timeout`` seconds (the message names ``what``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            if what:
                raise AssertionError(f"{what}: not reached within {timeout}s")
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)  # polling interval, not a wait for a fixed event


@pytest.fixture
def make_sim() -> Iterator[Callable[..., FakeOllama]]:
    """Factory: ``make_sim(**kwargs)`` starts an Ollama simulator on a free port
    (``time_scale`` 0.02 unless given). At teardown every one is stopped, its gate opened
    first so no held request outlives the test."""
    from tools.fake_ollama import FakeOllama

    sims: list[FakeOllama] = []

    def start(**kwargs: Any) -> FakeOllama:
        kwargs.setdefault("time_scale", 0.02)
        sim = FakeOllama(**kwargs).start()
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        sim.set_gate(False)
        sim.stop()


@pytest.fixture
def sim(gpu_state: Path, make_sim: Callable[..., FakeOllama]) -> FakeOllama:
    """The Ollama simulator on a free port, fast, with its GPU visible through fake NVML."""
    return make_sim(vram_mb=24576, nvml_state=str(gpu_state))


@dataclass
class Service:
    """A running Model Manager (scheduler + HTTP API on 127.0.0.1) for one test."""

    url: str
    manager: Any
    server: Any
    session: requests.Session
    thread: threading.Thread | None = None

    def submit(self, **job: Any) -> str:
        r = self.session.post(f"{self.url}/api/submit", json=job, timeout=10)
        assert r.status_code == 200, r.text
        return str(r.json()["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.session.get(f"{self.url}/api/job/{job_id}", timeout=10)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_done(self, ids: list[str], timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        done: dict[str, dict[str, Any]] = {}

        def all_done() -> bool:
            for job_id in ids:
                if job_id not in done:
                    body = self.job(job_id)
                    if body["status"] in ("complete", "failed", "cancelled"):
                        done[job_id] = body
            return len(done) == len(ids)

        wait_until(all_done, timeout, interval=0.02)
        return done

    stopping: threading.Event = field(default_factory=threading.Event)

    def serve(self) -> None:
        """The HTTP loop (in ``thread``). Closing waitress from another thread can make its
        select() see a closed descriptor; that is the expected end of a stop, nothing else."""
        try:
            self.server.run()
        except OSError:
            if not self.stopping.is_set():
                raise

    def stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.manager.stop(timeout=5.0)
        self.server.close()  # its daemon thread may linger in select(); serve() covers it
        self.session.close()


def serve_manager(manager: Any, config: Any) -> Service:
    """Serve a started Manager's HTTP API in a daemon thread, on the server main.py builds
    (``build_server``), at ``config``'s HOST and HTTP_PORT (0 for a free port)."""
    from modelmanager.http_api import create_app
    from modelmanager.server import build_server

    server = build_server(create_app(manager.api, config), config)
    port = server.getsockname()[1]
    service = Service(f"http://127.0.0.1:{port}", manager, server, requests.Session())
    service.thread = threading.Thread(target=service.serve, daemon=True)
    service.thread.start()
    return service


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Factory: ``make_service(sim, **config)`` starts a service against ``sim``."""

    from config import Config
    from modelmanager.manager import Manager
    from modelmanager.resource_monitor import NvmlGpuSource

    started: list[Service] = []

    def start(backend: Any, *, nvml: bool = True, **overrides: Any) -> Service:
        settings: dict[str, Any] = {
            "OLLAMA_BASE_URL": backend.url,
            "DATA_DIR": str(tmp_path / "data"),
            "LOG_FILE": "",
            "HTTP_PORT": 0,
            "MONITOR_INTERVAL": 0.05,
            "RETRY_BASE_SECONDS": 0.05,
            "RETRY_MAX_SECONDS": 0.5,
            "REQUEST_TIMEOUT": 10.0,
            "LOAD_TIMEOUT": 20.0,
        }
        settings.update(overrides)
        config = Config.load(environ={}, overrides=settings)
        manager = Manager(config, gpu=NvmlGpuSource() if nvml else None).start()
        service = serve_manager(manager, config)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
