"""The simulator as a program: ``python3 -m modelmanager.simulator --port 11434``."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
from collections.abc import Iterable

from .fake import DEFAULT_REQUEST_LOG_SIZE, FakeOllama
from .wire import parse_env_keep_alive


def _sizes(text: str) -> int | list[int]:
    """``--vram-mb``: one size in MiB for every GPU, or sizes separated by commas."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected MiB or a comma-separated list of MiB, got {text!r}"
        ) from None
    return sizes[0] if len(sizes) == 1 else sizes


def _parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Ollama simulator with VRAM accounting.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=11434, help="TCP port (0: any free port)")
    parser.add_argument(
        "--vram-mb",
        type=_sizes,
        default=24576,
        help="memory of each GPU in MiB, or one size per GPU: 8192,4096",
    )
    parser.add_argument(
        "--gpus", type=int, default=None, help="number of GPUs (default 1, or one per size)"
    )
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="factor on every simulated duration"
    )
    parser.add_argument(
        "--nvml-state",
        default=None,
        help="fake-NVML state file to maintain (other simulators may share it)",
    )
    parser.add_argument(
        "--nvml-index",
        type=int,
        default=0,
        help="NVML device number of this simulator's first GPU (as CUDA_VISIBLE_DEVICES)",
    )
    parser.add_argument("--num-parallel", type=int, default=1, help="OLLAMA_NUM_PARALLEL")
    parser.add_argument(
        "--max-loaded-models",
        type=int,
        default=0,
        help="OLLAMA_MAX_LOADED_MODELS (0: 3 per GPU)",
    )
    parser.add_argument("--max-queue", type=int, default=512, help="OLLAMA_MAX_QUEUE")
    parser.add_argument(
        "--keep-alive",
        default="5m",
        help="OLLAMA_KEEP_ALIVE: seconds or a Go duration; negative = forever",
    )
    parser.add_argument(
        "--vram-release-lag",
        type=float,
        default=0.5,
        help="seconds (scaled) before an unloaded runner's VRAM is free",
    )
    parser.add_argument(
        "--request-log-size",
        type=int,
        default=DEFAULT_REQUEST_LOG_SIZE,
        help="how many of the latest requests /_sim/stats lists",
    )
    parser.add_argument(
        "--models-dir",
        default=None,
        help="a folder to keep as Ollama's models directory (manifests, sparse blobs)",
    )
    parser.add_argument(
        "--no-scale-keep-alive",
        action="store_true",
        help="keep_alive counts real seconds, not scaled ones",
    )
    return parser.parse_args(None if argv is None else list(argv))


def main(argv: Iterable[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM; exit status 0 on a clean stop, 2 on bad arguments,
    1 if the port cannot be bound."""
    args = _parse_args(argv)
    try:
        keep_alive = parse_env_keep_alive(args.keep_alive)
        sim = FakeOllama(
            vram_mb=args.vram_mb,
            gpus=args.gpus,
            time_scale=args.time_scale,
            nvml_state=args.nvml_state,
            nvml_index=args.nvml_index,
            num_parallel=args.num_parallel,
            max_loaded_models=args.max_loaded_models,
            max_queue=args.max_queue,
            host=args.host,
            port=args.port,
            default_keep_alive=-1.0 if math.isinf(keep_alive) else keep_alive,
            vram_release_lag=args.vram_release_lag,
            scale_keep_alive=not args.no_scale_keep_alive,
            request_log_size=args.request_log_size,
            models_dir=args.models_dir,
        )
    except (ValueError, OSError) as exc:
        print(f"fake ollama: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        sim.start()
    except OSError as exc:
        print(f"fake ollama: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"fake ollama listening on {sim.url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
    return 0
