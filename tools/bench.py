#!/usr/bin/env python3
"""Benchmark: Model Manager against programs talking to Ollama directly, in one run.

    python3 tools/bench.py                 # full run, about 16 minutes on 2 cores
    python3 tools/bench.py --quick         # smoke run (< 60 s): small counts, time scale 0.1
    python3 tools/bench.py --json          # machine-readable output instead of tables
    options: --time-scale X --seed N --direct-cap S --only interleaved,mixed,fleet,service
             --driver auto|wrk|python --connections N --service-seconds S --rounds N
             --pending N --modes direct,managed --keep

Every workload runs twice against a fresh simulator (``tools/fake_ollama.py``, an 8 GiB
GPU with Ollama's defaults: 1 parallel slot, 3 loaded models at most, so the workloads'
models must swap): **direct**, each job sent straight to the simulator by its own client
thread at its arrival time (no retries); **managed**, the same jobs submitted to a fresh
Model Manager (``main.py``, default settings, reading the simulated GPU through fake
NVML) and polled to completion. Both are subprocesses. Workloads, job counts and the
lower bounds are described in ``tools/bench_workloads.py``; what is measured in
``tools/bench_run.py``; workload 6 (the service alone) in ``tools/bench_service.py``;
``front`` (streamed generation through the manager's Ollama API against the simulator
directly) in ``tools/bench_front.py``.

``door`` sends the interleaved and mixed bursts through the manager's Ollama API with the
official ``ollama`` client (``tools/bench_door.py``) and compares them with the job API.

``fleet`` runs the interleaved and mixed bursts once more, managed, on two backends (two
such simulators, one GPU each, sharing one fake-NVML state file as two Ollamas pinned to
one GPU each on one host), and reports the makespan on two over the makespan on one.

A direct run that has not finished after ``--direct-cap`` seconds (default 150; it would
take several minutes more, reloading on nearly every model switch) is stopped: its
makespan is reported as at least the cap, with a linear estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config import Config
from tools.bench_door import compare_door
from tools.bench_front import measure_front
from tools.bench_procs import Procs, Service, Sim, fake_nvml_lib, pct, rnd
from tools.bench_report import render, targets
from tools.bench_run import compared, managed_on_fresh, run_direct, run_managed
from tools.bench_service import measure
from tools.bench_workloads import Workload, build, high_p95_bound, lower_bound

WORKLOADS = (
    "interleaved",
    "priority",
    "pressure",
    "embed_mix",
    "warm",
    "service",
    "mixed",
    "stream",
    "stream_pressure",
    "fleet",
    "front",
    "door",
)
FLEET = ("interleaved", "mixed")  # the bursts run again on two backends (``fleet``)
VRAM_MB = 8192
NUM_PARALLEL = 1
MAX_LOADED = 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short smoke run (under 60 s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    p.add_argument("--time-scale", type=float, help="simulator time scale (1.0; --quick 0.1)")
    p.add_argument("--seed", type=int, default=7, help="workload seed")
    p.add_argument("--direct-cap", type=float, help="stop a direct run after S s (150; 15)")
    p.add_argument("--managed-cap", type=float, help="stop a managed run after S s (300; 30)")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("--modes", default="direct,managed", help="run only these modes (debugging)")
    p.add_argument("--keep", action="store_true", help="keep the process logs (path on stderr)")
    p.add_argument("--driver", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--connections", type=int, default=16, help="HTTP clients for workload 6")
    p.add_argument("--service-seconds", type=float, help="seconds per throughput round (2; 1)")
    p.add_argument("--rounds", type=int, help="rounds per throughput figure, median kept (3; 1)")
    p.add_argument("--pending", type=int, help="pending jobs for tick and RSS (100000; 10000)")
    args = p.parse_args(argv)
    q = args.quick
    args.time_scale = args.time_scale or (0.1 if q else 1.0)
    args.direct_cap = args.direct_cap or (15.0 if q else 150.0)
    args.managed_cap = args.managed_cap or (30.0 if q else 300.0)
    args.service_seconds = args.service_seconds or (1.0 if q else 2.0)
    args.rounds = args.rounds or (1 if q else 3)
    args.pending = args.pending or (10_000 if q else 100_000)
    if args.driver == "auto":
        args.driver = "wrk" if shutil.which("wrk") else "python"
    only = set((args.only or ",".join(WORKLOADS)).split(","))
    if only - set(WORKLOADS):
        p.error(f"--only: unknown {', '.join(sorted(only - set(WORKLOADS)))}")
    args.only = only
    args.modes = set(args.modes.split(","))
    return args


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def run_workload(procs: Procs, wl: Workload, args: argparse.Namespace) -> dict[str, Any]:
    lb = lower_bound(
        wl, time_scale=args.time_scale, num_parallel=NUM_PARALLEL, max_loaded=MAX_LOADED
    )
    out: dict[str, Any] = {
        "title": wl.title,
        "note": wl.note,
        "jobs": len(wl.jobs),
        "models": len(wl.models),
        "lower_bound": {k: rnd(v) if isinstance(v, float) else v for k, v in lb.items()},
    }
    out["lower_bound"]["terms"] = {k: rnd(v) for k, v in lb["terms"].items()}
    high = (
        high_p95_bound(wl, time_scale=args.time_scale, num_parallel=NUM_PARALLEL)
        if wl.high_bound
        else None
    )
    for mode in ("direct", "managed"):
        if mode not in args.modes:
            out[mode] = _skipped(len(wl.jobs))
            continue
        sim = _sim(procs, args)
        try:
            if mode == "direct":
                out[mode] = run_direct(wl, sim, args.direct_cap)
            else:
                svc = Service(procs, sim)
                try:
                    out[mode] = run_managed(wl, svc, sim, args.managed_cap)
                finally:
                    svc.stop()
        finally:
            sim.stop()
        _progress(f"{wl.key} {mode}: {_brief(out[mode])}")
    out["ratios"] = ratios(out, lb["lb_s"], wl.sequential)
    if high is not None:
        out["high_p95_bound"] = _high_bound(out, high, lb["lb_s"])
    return out


def run_fleet(
    procs: Procs, wl: Workload, one: dict[str, Any] | None, args: argparse.Namespace
) -> dict[str, Any]:
    """``wl`` managed on two backends (two simulators like the one of every workload, one
    GPU each, one NVML) against one backend, measured in this run (``one``: the managed
    figures of the workload when it ran already)."""
    if one is None:
        one = managed_on_fresh(procs, wl, _sim(procs, args), args.managed_cap)
    first = _sim(procs, args)
    second = _sim(procs, args, nvml_state=first.nvml_state, nvml_index=1)
    two = managed_on_fresh(procs, wl, [first, second], args.managed_cap)
    _progress(f"{wl.key} on two backends: {_brief(two)}")
    return compared(wl, ("one", "two"), one, two, "makespan_two_over_one")


def _sim(procs: Procs, args: argparse.Namespace, **kwargs: Any) -> Sim:
    return Sim(
        procs,
        vram_mb=VRAM_MB,
        time_scale=args.time_scale,
        num_parallel=NUM_PARALLEL,
        max_loaded_models=MAX_LOADED,
        **kwargs,
    )


def _skipped(jobs: int) -> dict[str, Any]:
    return {
        "jobs": jobs,
        "complete": 0,
        "failed": 0,
        "unfinished": jobs,
        "capped": True,
        "makespan_s": None,
        "makespan_estimate_s": None,
        "loads": 0,
        "ooms": 0,
        "crashes": 0,
        "latency_p50_s": None,
        "latency_p95_s": None,
        "latency_by_priority": {},
        "dispatch_ms": {"n": 0, "p50": None, "p95": None, "p99": None},
        "errors": {"not run (--modes)": jobs},
        "load_timeline": [],
    }


def ratios(res: dict[str, Any], lb: float, sequential: bool = False) -> dict[str, Any]:
    """Managed/direct and each/lower-bound ratios of one workload (None where undefined)."""
    d, m = res["direct"], res["managed"]

    def div(a: float | None, b: float | None) -> float | None:
        return rnd(a / b) if a is not None and b else None

    out: dict[str, Any] = {
        "makespan_managed_over_direct": div(m["makespan_s"], d["makespan_s"]),
        "direct_capped": d["capped"],
        "p95_managed_over_direct": div(m["latency_p95_s"], d["latency_p95_s"]),
        "managed_over_lb": div(m["makespan_s"], lb),
        "direct_over_lb": div(d["makespan_s"], lb),
        "direct_estimate_over_lb": div(d["makespan_estimate_s"], lb),
        "managed_loads_over_models": div(m["loads"], res["models"]),
        "direct_loads_over_models": div(d["loads"], res["models"]),
    }
    for mode, r in (("managed", m), ("direct", d)):
        prio = r["latency_by_priority"]
        if "high" in prio and "low" in prio:
            out[f"{mode}_p95_high_over_low"] = div(prio["high"]["p95_s"], prio["low"]["p95_s"])
    dl, ml = d.get("_latency_by_job", {}), m.get("_latency_by_job", {})
    added = [(ml[i] - dl[i]) * 1000.0 for i in ml if i in dl]
    if added and sequential:  # the same job alone on a warm model, in both modes
        out["added_latency_ms"] = {"p50": rnd(pct(added, 50)), "p95": rnd(pct(added, 95))}
    return out


def _high_bound(res: dict[str, Any], high: dict[str, Any], lb: float) -> dict[str, Any]:
    """The high-priority p95 bound, its ratio to the makespan bound and each mode's p95
    high over it (None where a mode has no high-priority latency)."""
    out = {k: rnd(v) if isinstance(v, float) else v for k, v in high.items()}
    out["over_lb"] = rnd(high["p95_s"] / lb)
    for mode in ("direct", "managed"):
        p95 = res[mode]["latency_by_priority"].get("high", {}).get("p95_s")
        out[f"{mode}_over_bound"] = None if p95 is None else rnd(p95 / high["p95_s"])
    return out


def _brief(r: dict[str, Any]) -> str:
    return (
        f"{r['complete']}/{r['jobs']} ok, {r['failed']} failed, {r['unfinished']} unfinished, "
        f"makespan {r['makespan_s']} s, {r['loads']} loads"
    )


def _progress(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    tmp = Path(tempfile.mkdtemp(prefix="mm-bench-"))
    procs = Procs(tmp)
    started = time.monotonic()
    # the command that reproduces the figures (output-only flags left out)
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--json", "--keep")]
    command = " ".join(["python3 tools/bench.py", *given])
    report: dict[str, Any] = {
        "command": command,
        "machine": machine(),
        "settings": {
            "quick": args.quick,
            "time_scale": args.time_scale,
            "seed": args.seed,
            "vram_mb": VRAM_MB,
            "num_parallel": NUM_PARALLEL,
            "max_loaded_models": MAX_LOADED,
            "direct_cap_s": args.direct_cap,
            "managed_cap_s": args.managed_cap,
            "vram_source": "nvml" if fake_nvml_lib() else "budget",
            "sqlite_synchronous_default": Config.SQLITE_SYNCHRONOUS,
        },
        "workloads": {},
    }
    try:
        workloads = build(args.quick, args.time_scale, args.seed)
        for wl in workloads:
            if wl.key in args.only:
                report["workloads"][wl.key] = run_workload(procs, wl, args)
        if "fleet" in args.only:
            report["fleet"] = {}
            for wl in (w for w in workloads if w.key in FLEET):
                done = report["workloads"].get(wl.key, {}).get("managed")
                one = None if done is None or done["errors"].get("not run (--modes)") else done
                report["fleet"][wl.key] = run_fleet(procs, wl, one, args)
        if "door" in args.only:
            report["door"] = {}
            for wl in (w for w in workloads if w.key in FLEET):
                done = report["workloads"].get(wl.key, {}).get("managed")
                one = None if done is None or done["errors"].get("not run (--modes)") else done
                report["door"][wl.key] = compare_door(
                    procs, wl, one, lambda: _sim(procs, args), args.managed_cap
                )
                _progress(f"{wl.key} through the Ollama API: done")
        for done in report["workloads"].values():
            for mode in ("direct", "managed"):
                done[mode].pop("_latency_by_job", None)
        if "service" in args.only:
            report["service"] = measure(
                procs,
                driver=args.driver,
                seconds=args.service_seconds,
                rounds=args.rounds,
                conns=args.connections,
                pending=args.pending,
                vram_mb=VRAM_MB,
            )
            _progress("service: done")
        if "front" in args.only:
            report["front"] = measure_front(
                procs, vram_mb=VRAM_MB, time_scale=args.time_scale, pairs=20 if args.quick else 100
            )
            _progress("front: done")
        report["targets"] = targets(report)
        report["elapsed_s"] = rnd(time.monotonic() - started, 1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        procs.close()
        if args.keep:
            _progress(f"process logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
