#!/usr/bin/env python3
"""Benchmark of the shared queue (``DATABASE_URL``): PostgreSQL against SQLite, two
instances against one, in one run, so the ratios compare like with like.

    .venv/bin/python tools/bench_pg.py            # about 2 minutes on 2 cores
    .venv/bin/python tools/bench_pg.py --quick    # smoke run (< 60 s)
    options: --database-url URL (default: a throwaway cluster, tools/pg_throwaway.py)
             --submits N --clients N --samples N --per-model N --time-scale X --json

Three measurements, each on fresh simulators (``tools/fake_ollama.py``, as in
``tools/bench.py``: an 8 GiB GPU, 1 parallel slot, 3 loaded models at most) and fresh
services (``main.py``, default settings but for ``QUEUE_MAX_SIZE`` and, with
PostgreSQL, a fresh schema per setup):

1. **Submits/s**: ``--clients`` threads send ``--submits`` single ``POST /api/submit``
   in all, as fast as the answers come, while the simulators hold every request (their
   gate is closed) so that only accepting is measured. Setups: one instance on SQLite,
   one on PostgreSQL, two on PostgreSQL (the clients split over both).
2. **Dispatch latency**: one job at a time on a model already loaded, from the client
   sending the submit to the request reaching the simulator (the simulator's request log,
   on the same monotonic clock); median and p95 of ``--samples``. Setups: SQLite, one
   PostgreSQL instance, and two, submitting on the instance that does *not* hold the model
   (instance A), so each job crosses to B through the database (NOTIFY, claim).
3. **Interleaved burst** (``tools/bench.py``'s workload 1 over 8 models, submitted to one
   instance): two instances with one backend each, against one instance with both
   backends (makespan ratio; goal: within 10 %).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from tools import pg_throwaway
from tools.bench_procs import Http, Procs, Service, Sim, rnd
from tools.bench_run import _poll_job, _submit, run_managed
from tools.bench_workloads import interleaved

VRAM_MB = 8192
QUEUE = 1_000_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_pg.py", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short smoke run (under 60 s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    p.add_argument("--database-url", help="a PostgreSQL database to use (schemas are added)")
    p.add_argument("--submits", type=int, help="submits per setup (3000; --quick 600)")
    p.add_argument("--clients", type=int, default=8, help="client threads (8)")
    p.add_argument("--samples", type=int, help="dispatch latency samples (40; --quick 10)")
    p.add_argument("--per-model", type=int, help="burst jobs per model (12; --quick 4)")
    p.add_argument(
        "--time-scale",
        type=float,
        help="simulator time scale (1.0, as tools/bench.py; --quick 0.1)",
    )
    p.add_argument("--seed", type=int, default=7, help="workload seed")
    args = p.parse_args(argv)
    args.submits = args.submits or (600 if args.quick else 3000)
    args.samples = args.samples or (10 if args.quick else 40)
    args.per_model = args.per_model or (4 if args.quick else 12)
    args.time_scale = args.time_scale or (0.1 if args.quick else 1.0)
    return args


def fresh_schema(server: str) -> str:
    """``server`` with a new empty schema as its search path (each setup starts empty)."""
    return pg_throwaway.fresh_schema(server, "bench")


class Setup:
    """Simulators and services of one measurement, stopped by :meth:`close`."""

    def __init__(self, procs: Procs, args: argparse.Namespace) -> None:
        self.procs, self.args = procs, args
        self.sims: list[Sim] = []
        self.svcs: list[Service] = []

    def sim(self, **kwargs: Any) -> Sim:
        sim = Sim(self.procs, vram_mb=VRAM_MB, time_scale=self.args.time_scale, **kwargs)
        self.sims.append(sim)
        return sim

    def service(self, sims: Sim | list[Sim], **settings: Any) -> Service:
        svc = Service(self.procs, sims, QUEUE_MAX_SIZE=QUEUE, **settings)
        self.svcs.append(svc)
        return svc

    def close(self) -> None:
        for svc in self.svcs:
            svc.stop()
        for sim in self.sims:
            sim.stop()


@contextmanager
def setup(procs: Procs, args: argparse.Namespace) -> Iterator[Setup]:
    s = Setup(procs, args)
    try:
        yield s
    finally:
        s.close()


def instances(s: Setup, n: int, server: str | None, **settings: Any) -> list[Service]:
    """``n`` instances, one simulator each; on PostgreSQL when ``server`` is given."""
    db = {"DATABASE_URL": fresh_schema(server)} if server else {}
    return [s.service(s.sim(), **db, **settings) for _ in range(n)]


# --------------------------------------------------------------------- measurements


def submits_per_second(svcs: list[Service], sims: list[Sim], n: int, clients: int) -> float:
    for sim in sims:
        sim.control("gate", {"closed": True})
    counter = iter(range(n))
    lock = threading.Lock()
    failures: list[str] = []

    def client(k: int) -> None:
        conn = Http(svcs[k % len(svcs)].url)
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                ok, value = _submit(conn, {"model": "qwen2.5:0.5b", "prompt": f"s{i}"})
                if not ok:
                    failures.append(str(value))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    if failures:
        raise RuntimeError(f"{len(failures)} submits refused, e.g. {failures[0]}")
    return n / elapsed


def holder(svcs: list[Service]) -> int:
    """Which of ``svcs`` holds a model (from ``GET /api/v1/instances``); 0 with one."""
    if len(svcs) == 1:
        return 0
    _, doc = svcs[0].http.json("GET", "/api/v1/instances")
    held = [i["url"] for i in doc["instances"] if i["runners"]]
    ports = [svc.url.rsplit(":", 1)[1] for svc in svcs]
    for i, port in enumerate(ports):
        if any(url.endswith(f":{port}") for url in held):
            return i
    raise RuntimeError(f"no instance holds the model: {doc}")


def dispatch_latency(svcs: list[Service], sims: list[Sim], samples: int) -> dict[str, Any]:
    model = "qwen2.5:0.5b"
    warm = _submit(svcs[0].http, {"model": model, "prompt": "warm up"})[1]
    _poll_job(svcs[0].http, str(warm), time.monotonic() + 60)
    b = holder(svcs)
    a = (b + 1) % len(svcs)  # submit where the model is *not* (the same one, alone)
    sent: dict[str, float] = {}
    for i in range(samples):
        tag = f"lat{i}"
        sent[tag] = time.monotonic()
        ok, job_id = _submit(svcs[a].http, {"model": model, "prompt": f"[bench:{tag}] hi"})
        if not ok:
            raise RuntimeError(f"submit refused: {job_id}")
        _poll_job(svcs[a].http, str(job_id), time.monotonic() + 60)
    arrived: dict[str, float] = {}
    for sim in sims:
        for entry in sim.stats()["request_log"]:
            if entry.get("tag") in sent:
                arrived.setdefault(entry["tag"], entry["t"])
    ms = sorted((arrived[t] - sent[t]) * 1000 for t in sent if t in arrived)
    if len(ms) < samples:
        raise RuntimeError(f"only {len(ms)} of {samples} requests reached a simulator")
    ran_on_b = sum(1 for e in sims[b].stats()["request_log"] if e.get("tag") in sent)
    return {
        "median_ms": rnd(statistics.median(ms)),
        "p95_ms": rnd(ms[max(0, int(len(ms) * 0.95) - 1)]),
        "crossed": ran_on_b if len(svcs) > 1 else None,
    }


def burst(s: Setup, server: str, args: argparse.Namespace, two_instances: bool) -> dict[str, Any]:
    wl = interleaved(args.per_model, args.time_scale, args.seed)
    if two_instances:
        url = fresh_schema(server)
        sims = [s.sim(), s.sim()]
        svcs = [s.service(sim, DATABASE_URL=url) for sim in sims]
    else:
        first = s.sim()
        sims = [first, s.sim(nvml_state=first.nvml_state, nvml_index=1)]
        svcs = [s.service(sims)]
    res = run_managed(wl, svcs[0], sims, cap=600)
    return {"makespan_s": res["makespan_s"], "loads": res["loads"]}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    cluster: Path | None = None
    server = args.database_url
    if not server:
        server, cluster = pg_throwaway.start()
    procs = Procs(tmp)
    out: dict[str, Any] = {
        "command": " ".join(["tools/bench_pg.py", *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start",
    }
    try:
        rates: dict[str, float] = {}
        for name, n, db in (("sqlite", 1, None), ("pg", 1, server), ("pg_two", 2, server)):
            with setup(procs, args) as s:
                svcs = instances(s, n, db)
                rates[name] = submits_per_second(svcs, s.sims, args.submits, args.clients)
            print(f"submits/s {name}: {rates[name]:.0f}", file=sys.stderr)
        out["submits_per_s"] = {k: rnd(v) for k, v in rates.items()}
        out["submits_pg_over_sqlite"] = rnd(rates["pg"] / rates["sqlite"])
        out["submits_two_over_one_pg"] = rnd(rates["pg_two"] / rates["pg"])
        lat: dict[str, Any] = {}
        for name, n, db in (("sqlite", 1, None), ("pg", 1, server), ("pg_two", 2, server)):
            with setup(procs, args) as s:
                svcs = instances(s, n, db)
                lat[name] = dispatch_latency(svcs, s.sims, args.samples)
            print(f"dispatch latency {name}: {lat[name]}", file=sys.stderr)
        out["dispatch_latency"] = lat
        out["latency_pg_over_sqlite"] = rnd(lat["pg"]["median_ms"] / lat["sqlite"]["median_ms"])
        out["latency_two_over_one_pg"] = rnd(lat["pg_two"]["median_ms"] / lat["pg"]["median_ms"])
        spans: dict[str, Any] = {}
        for name, two in (("one_instance_two_backends", False), ("two_instances", True)):
            with setup(procs, args) as s:
                spans[name] = burst(s, server, args, two)
            print(f"interleaved {name}: {spans[name]}", file=sys.stderr)
        out["interleaved"] = spans
        out["interleaved_two_instances_over_one"] = rnd(
            spans["two_instances"]["makespan_s"] / spans["one_instance_two_backends"]["makespan_s"]
        )
    finally:
        procs.close()
        if cluster is not None:
            pg_throwaway.stop(cluster)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(report(out))
    return 0


def report(out: dict[str, Any]) -> str:
    r, lat, sp = out["submits_per_s"], out["dispatch_latency"], out["interleaved"]
    return "\n".join(
        [
            f"`{out['command']}` ({out['machine']})",
            "",
            "| measure | SQLite, 1 instance | PostgreSQL, 1 | PostgreSQL, 2 | ratios |",
            "|---|---|---|---|---|",
            f"| submits/s | {r['sqlite']} | {r['pg']} | {r['pg_two']} |"
            f" PG/SQLite {out['submits_pg_over_sqlite']}, 2/1 {out['submits_two_over_one_pg']} |",
            f"| dispatch latency, median ms (p95) | {lat['sqlite']['median_ms']}"
            f" ({lat['sqlite']['p95_ms']}) | {lat['pg']['median_ms']} ({lat['pg']['p95_ms']}) |"
            f" {lat['pg_two']['median_ms']} ({lat['pg_two']['p95_ms']}) |"
            f" PG/SQLite {out['latency_pg_over_sqlite']}, 2/1 {out['latency_two_over_one_pg']} |",
            "",
            "| interleaved burst | makespan s | loads |",
            "|---|---|---|",
            f"| 1 instance, 2 backends | {sp['one_instance_two_backends']['makespan_s']} |"
            f" {sp['one_instance_two_backends']['loads']} |",
            f"| 2 instances, 1 backend each | {sp['two_instances']['makespan_s']} |"
            f" {sp['two_instances']['loads']} |",
            "",
            f"two instances / one: {out['interleaved_two_instances_over_one']}",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
