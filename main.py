"""Model Manager entry point: parse the CLI, build the Manager, serve HTTP with waitress.

    .venv/bin/python main.py [--host HOST] [--http-port PORT] [--ollama-url URL]
                             [--data-dir DIR] [--log-file FILE] [--vram-budget-mb MB]
                             [--api-key KEY] [--database-url URL]
                             [--simulate [--sim-time-scale X]]

``--simulate`` starts the built-in Ollama simulator (tools/fake_ollama.py) with a 24 GiB
simulated GPU and uses it as the backend; the GPU monitor reads the simulated GPU through
the fake NVML library when it can be built (../shared/fake-nvml), else through the budget.
Startup stops with one sentence and a non-zero status on a bad flag or setting, a locked
data directory or a port that cannot be bound (checked before the manager starts).
SIGINT/SIGTERM stop cleanly: new submits get 503, running jobs finish (up to
SHUTDOWN_TIMEOUT), waiting jobs stay stored for the next start; a second signal stops at
once.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import math
import os
import queue
import signal
import subprocess
import sys
import threading
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path
from typing import Any, NoReturn

from config import Config, unknown_environment
from modelmanager.errors import ConfigError, DatabaseUnavailable, DataDirLocked
from modelmanager.logger import get_logger, setup_logging

ROOT = Path(__file__).resolve().parent
SIM_VRAM_MB = 24576
log = get_logger("SYSTEM")


# flag -> (setting, metavar); each flag's help, default and environment name come from Config
FLAGS = {
    "--host": ("HOST", "HOST"),
    "--http-port": ("HTTP_PORT", "PORT"),
    "--ollama-url": ("OLLAMA_BASE_URL", "URL"),
    "--ollama-backends": ("OLLAMA_BACKENDS", "NAME=URL,..."),
    "--data-dir": ("DATA_DIR", "DIR"),
    "--log-file": ("LOG_FILE", "FILE"),
    "--vram-budget-mb": ("VRAM_BUDGET_MB", "MB"),
    "--api-key": ("API_KEY", "KEY"),
    "--database-url": ("DATABASE_URL", "URL"),
}
EPILOG = """\
Every setting can also be set in the environment as MM_<NAME> (all of them are listed in
the README, section Configuration); a flag wins over the environment.

exit status: 0 after a clean stop (SIGTERM or Ctrl-C), 1 after a second signal (stop at
once), 2 for a bad flag or setting, 3 when the data directory is locked by another
instance or the address cannot be bound (port in use).
"""


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line that names the flag and the value, not the whole usage."""
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number greater than 0, got {text!r}")
    return value


def _setting_help(name: str) -> str:
    meta = {f.name: f for f in dataclasses.fields(Config)}[name]
    shown = meta.default if meta.default != "" else "none"
    text = f"{meta.metadata['help'].rstrip('.')} (default {shown}; env MM_{name})"
    return text.replace("%", "%%")  # argparse formats help with %


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _ArgumentParser(
        prog="main.py",
        description="Model Manager: VRAM-aware scheduler in front of Ollama.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    for flag, (name, metavar) in FLAGS.items():
        kind = type(defaults[name])
        p.add_argument(flag, type=kind, metavar=metavar, help=_setting_help(name))
    p.add_argument(
        "--simulate",
        action="store_true",
        help="run against the built-in Ollama simulator with a 24 GiB simulated GPU "
        "(no Ollama or GPU needed)",
    )
    p.add_argument(
        "--sim-time-scale",
        type=_positive_float,
        default=1.0,
        metavar="X",
        help="simulator speed with --simulate: its durations times X, so 0.1 runs ten "
        "times faster (default 1.0)",
    )
    return p.parse_args(argv)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, flag[2:].replace("-", "_")) for flag, (name, _) in FLAGS.items()}


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
    models = data / "sim-models"  # its models directory: sparse files, next to no disk
    sim = FakeOllama(
        vram_mb=SIM_VRAM_MB,
        time_scale=time_scale,
        nvml_state=str(state),
        models_dir=models,
        # keep_alive in real seconds, as the manager sends it: scaled, a faster simulator
        # would drop idle models before the manager unloads them
        scale_keep_alive=False,
    ).start()
    config.OLLAMA_BASE_URL = sim.url
    if not config.OLLAMA_MODELS_DIR:
        config.OLLAMA_MODELS_DIR = str(models)
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


def _unknown_environment_lines() -> list[str]:
    """One warning per ``MM_*`` environment name that is no setting (likely a typo)."""
    lines = []
    for name, closest in unknown_environment():
        hint = f"did you mean {closest}?" if closest else "see main.py --help for the settings"
        lines.append(f"{name} is not a setting and is ignored; {hint}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    typos = _unknown_environment_lines()
    try:
        config = Config.load(overrides=_overrides(args))
    except ConfigError as exc:
        for line in typos:
            print(f"warning: {line}", file=sys.stderr)
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        setup_logging(config.LOG_FILE or None)
    except OSError as exc:
        print(
            f"error: cannot open the log file {config.LOG_FILE!r}: {exc.strerror}", file=sys.stderr
        )
        return 2
    writer = log_in_background()
    for line in typos:
        log.warning("%s", line)
    # waitress warns "Task queue depth is N" whenever all its threads are busy, which is
    # expected under load; thousands of such lines a second cost throughput and say nothing
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)

    from modelmanager.http_api import create_app
    from modelmanager.manager import Manager
    from modelmanager.resource_monitor import NvmlGpuSource
    from modelmanager.server import bound_address, build_server

    sim = None
    gpu: NvmlGpuSource | None
    if args.simulate:
        sim, gpu = start_simulator(config, args.sim_time_scale)
    else:
        gpu = NvmlGpuSource()

    def fail(message: str, status: int) -> int:
        print(f"error: {message}", file=sys.stderr)
        if sim is not None:
            sim.stop()
        writer.stop()
        return status

    try:
        manager = Manager(config, gpu=gpu)
    except DataDirLocked as exc:
        return fail(str(exc), 3)
    except DatabaseUnavailable as exc:
        return fail(str(exc), 2)
    except ConfigError as exc:  # settings that cannot work with the GPUs or nodes found
        print(f"configuration error: {exc}", file=sys.stderr)
        if sim is not None:
            sim.stop()
        writer.stop()
        return 2
    except OSError as exc:
        return fail(f"cannot use the data directory {config.DATA_DIR!r}: {exc.strerror}", 2)
    try:
        # bound before the manager starts, so a busy port stops startup before "started"
        server = build_server(create_app(manager.api, config), config)
    except OSError as exc:
        manager.stop(timeout=0)
        return fail(
            f"cannot listen on {config.HOST} port {config.HTTP_PORT}: "
            f"{exc.strerror or exc} (choose another with --http-port or MM_HTTP_PORT)",
            3,
        )
    host, port = bound_address(server)
    manager.start(http_port=port)
    if config.HOST not in ("127.0.0.1", "localhost", "::1") and not config.API_KEY:
        log.warning(
            "binding %s without an API key: anyone who reaches it can use the GPU; "
            "set MM_API_KEY or --api-key",
            config.HOST,
        )
    log.info("HTTP API on http://%s:%s", host, port)
    print(f"Model Manager listening on http://{host}:{port}", flush=True)

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():  # a second signal: cold stop, unfinished jobs rerun next start
            log.warning("second signal: stopping now; running jobs rerun at the next start")
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
    log.info("%s", shutdown_message(manager.jobs.in_flight(), config.SHUTDOWN_TIMEOUT))
    manager.stop(timeout=config.SHUTDOWN_TIMEOUT)
    server.close()
    if sim is not None:
        sim.stop()
    # Jobs still running after the drain stay "running" in the store and rerun at the
    # next start; their threads must not hold the exit (they wait on Ollama).
    writer.stop()
    logging.shutdown()
    os._exit(0)


def shutdown_message(running: int, timeout: float) -> str:
    """What the first SIGTERM/SIGINT logs: what the stop waits for, how long, how to skip."""
    if not running:
        return "shutting down: no job running"
    return (
        f"shutting down: waiting up to {timeout:g}s (SHUTDOWN_TIMEOUT) for {running} running "
        "job(s) to finish; a second signal (Ctrl-C) stops at once, and they rerun at the "
        "next start"
    )


if __name__ == "__main__":
    sys.exit(main())
