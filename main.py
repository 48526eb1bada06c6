"""Model Manager entry point: parse the CLI, build the Manager, serve HTTP with waitress.

    python3 main.py [--host 127.0.0.1] [--http-port 5001] [--ollama-url URL]
                    [--data-dir DIR] [--log-file FILE] [--vram-budget-mb N]
                    [--api-key KEY] [--simulate]

``--simulate`` starts the built-in Ollama simulator (tools/fake_ollama.py) with a 24 GiB
simulated GPU and uses it as the backend; the GPU monitor reads the simulated GPU through
the fake NVML library when it can be built (../shared/fake-nvml), else through the budget.
SIGINT/SIGTERM stop cleanly: new submits get 503, running jobs finish (up to a timeout),
waiting jobs stay stored for the next start.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path
from typing import Any

from config import Config
from modelmanager.errors import ConfigError, DataDirLocked
from modelmanager.logger import get_logger, setup_logging

ROOT = Path(__file__).resolve().parent
SIM_VRAM_MB = 24576
log = get_logger("SYSTEM")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="main.py", description="Model Manager: VRAM-aware Ollama scheduler"
    )
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="HTTP port (default 5001)")
    p.add_argument("--ollama-url", help="Ollama base URL (default http://localhost:11434)")
    p.add_argument("--data-dir", help="folder of the job store (default ./data)")
    p.add_argument("--log-file", help="log file (default model_manager.log)")
    p.add_argument("--vram-budget-mb", type=int, help="VRAM to plan with when NVML is unavailable")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (or set MM_API_KEY)")
    p.add_argument(
        "--simulate",
        action="store_true",
        help="run against the built-in Ollama simulator (no Ollama or GPU needed)",
    )
    p.add_argument(
        "--sim-time-scale",
        type=float,
        default=1.0,
        help="simulator speed factor with --simulate (smaller is faster)",
    )
    return p.parse_args(argv)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "HOST": args.host,
        "HTTP_PORT": args.http_port,
        "OLLAMA_BASE_URL": args.ollama_url,
        "DATA_DIR": args.data_dir,
        "LOG_FILE": args.log_file,
        "VRAM_BUDGET_MB": args.vram_budget_mb,
        "API_KEY": args.api_key,
    }


def _fake_nvml_library(data_dir: Path) -> Path | None:
    """Build (once) and return the fake NVML library for --simulate, or None."""
    for lib in (
        ROOT / ".fake-nvml" / "libnvidia-ml.so.1",
        data_dir / "fake-nvml" / "libnvidia-ml.so.1",
    ):
        if lib.exists():
            return lib
    build = ROOT.parent / "shared" / "fake-nvml" / "build.sh"
    if not build.exists():
        return None
    out = data_dir / "fake-nvml"
    done = subprocess.run(["bash", str(build), str(out)], capture_output=True, text=True)
    return out / "libnvidia-ml.so.1" if done.returncode == 0 else None


def start_simulator(config: Config, time_scale: float) -> tuple[Any, Any]:
    """Start the simulator; point the config at it; return (simulator, gpu source or None)."""
    from modelmanager.resource_monitor import NvmlGpuSource
    from modelmanager.simulator import FakeOllama

    data = Path(config.DATA_DIR)
    data.mkdir(parents=True, exist_ok=True)
    state = data / "sim-gpu.state"
    sim = FakeOllama(vram_mb=SIM_VRAM_MB, time_scale=time_scale, nvml_state=str(state)).start()
    config.OLLAMA_BASE_URL = sim.url
    lib = _fake_nvml_library(data)
    if lib is None:
        config.VRAM_BUDGET_MB = SIM_VRAM_MB
        log.info(
            "simulator at %s; fake NVML unavailable, planning with a %d MB budget",
            sim.url,
            SIM_VRAM_MB,
        )
        return sim, None
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)  # pynvml then finds it by soname
    os.environ["FAKE_NVML_STATE"] = str(state)
    log.info("simulator at %s with a %d MB GPU read through fake NVML", sim.url, SIM_VRAM_MB)
    return sim, NvmlGpuSource()


class _Handoff(QueueHandler):
    """Hands records to the logging thread with the message and traceback already
    rendered (as ``LineFormatter`` would), so nothing changes in what gets written."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        message = record.getMessage()
        if record.exc_info:
            message += " | " + logging.Formatter().formatException(record.exc_info)
        record = logging.makeLogRecord(record.__dict__)
        record.msg, record.args, record.exc_info, record.exc_text = message, None, None, None
        return record


def log_in_background() -> QueueListener:
    """Move the writing of log lines to one thread; return it, started (``stop()`` drains).

    Request threads then only queue a record. Every submit logs a line, and with many
    HTTP threads writing and flushing lines under the handler's lock, submits/s halved in
    the service benchmark. The price: a kill -9 loses the lines still queued (the last
    milliseconds); a clean stop writes them all.
    """
    root = logging.getLogger("modelmanager")
    handlers = list(root.handlers)
    for handler in handlers:
        root.removeHandler(handler)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root.addHandler(_Handoff(records))
    listener = QueueListener(records, *handlers)
    listener.start()
    return listener


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = Config.load(overrides=_overrides(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.LOG_FILE or None)
    writer = log_in_background()
    # waitress warns "Task queue depth is N" whenever all its threads are busy, which is
    # expected under load; thousands of such lines a second cost throughput and say nothing
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)

    from waitress import create_server

    from modelmanager.http_api import MAX_BODY_BYTES, create_app
    from modelmanager.manager import Manager
    from modelmanager.resource_monitor import NvmlGpuSource

    sim = None
    gpu: NvmlGpuSource | None
    if args.simulate:
        sim, gpu = start_simulator(config, args.sim_time_scale)
    else:
        gpu = NvmlGpuSource()
    try:
        manager = Manager(config, gpu=gpu)
    except DataDirLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        if sim is not None:
            sim.stop()
        writer.stop()
        return 3
    manager.start()
    if config.HOST not in ("127.0.0.1", "localhost", "::1") and not config.API_KEY:
        log.warning(
            "binding %s without an API key: anyone who reaches it can use the GPU; "
            "set MM_API_KEY or --api-key",
            config.HOST,
        )
    app = create_app(manager.api, config)
    server = create_server(
        app,
        host=config.HOST,  # always explicit: waitress would bind every interface
        port=config.HTTP_PORT,
        threads=config.HTTP_THREADS,
        connection_limit=200,
        channel_timeout=60,
        max_request_body_size=MAX_BODY_BYTES,
        ident="modelmanager",
    )
    host, port = server.getsockname()[:2]
    log.info("HTTP API on http://%s:%s", host, port)
    print(f"Model Manager listening on http://{host}:{port}", flush=True)

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():  # a second signal: cold stop, unfinished jobs rerun next start
            log.warning("second signal: stopping now")
            writer.stop()
            logging.shutdown()
            os._exit(1)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    serving = threading.Thread(target=server.run, name="http", daemon=True)
    serving.start()
    while not stop.wait(0.5):  # wake now and then so the signal handler runs
        pass
    log.info("shutting down")
    manager.stop(timeout=config.SHUTDOWN_TIMEOUT)
    server.close()
    if sim is not None:
        sim.stop()
    # Jobs still running after the drain stay "running" in the store and rerun at the
    # next start; their threads must not hold the exit (they wait on Ollama).
    writer.stop()
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
