"""``door``: a burst sent through the manager's Ollama API by the official ``ollama``
client, unchanged, against the same burst through the job API in the same run.

Each job is one blocking ``Client.generate`` (or ``embed``) call from its own client
thread at the job's arrival time, with its priority in the ``X-Priority`` header: what a
program written for Ollama does once ``OLLAMA_HOST`` points at the manager. The service
runs with ``MAX_OPEN_REQUESTS`` above the burst, so every request is held open while it
waits. Latencies run from the arrival time to the answer, as in ``direct`` mode.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from tools.bench_procs import BenchError, Service, Sim
from tools.bench_run import MAX_CLIENT_THREADS, Outcome, compared, managed_on_fresh, summarize
from tools.bench_workloads import BenchJob, Workload


def run_door(wl: Workload, sim: Sim, procs: Any, cap: float) -> dict[str, Any]:
    """``wl`` through the Ollama API of a service on ``sim`` (figures as ``summarize``)."""
    try:
        import httpx
        import ollama
    except ImportError as exc:  # a development requirement
        raise BenchError(f"'door' needs {exc.name}: pip install -r requirements-dev.txt") from None
    svc = Service(procs, sim, MAX_OPEN_REQUESTS=len(wl.jobs) + 16)
    # one client per priority, made before the start and shared by the client threads
    # (httpx clients are thread-safe), without httpx's default cap of 100 connections
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    clients = {
        prio: ollama.Client(host=svc.url, headers={"X-Priority": prio}, timeout=cap, limits=limits)
        for prio in ("high", "normal", "low")
    }

    def call(job: BenchJob) -> None:
        c = clients[job.priority]
        if job.kind == "embed":
            c.embed(model=job.model, input=job.inputs if job.extra_inputs else job.text)
        else:
            options = {"num_predict": job.num_predict} if job.num_predict is not None else None
            c.generate(model=job.model, prompt=job.text, options=options)

    try:
        if wl.warm_model:
            clients["normal"].generate(model=wl.warm_model, prompt="warm up")
            sim.control("reset", {})
        out = {j.idx: Outcome(j) for j in wl.jobs}
        t0 = time.monotonic() + 0.05
        t0_wall = time.time() + 0.05

        def send(job: BenchJob) -> None:
            rec = out[job.idx]
            rec.sent = time.monotonic()
            try:
                call(job)
                rec.ok = True
            except (ollama.ResponseError, httpx.HTTPError) as exc:
                rec.ok, rec.error = False, f"{type(exc).__name__}: {exc}"
            rec.end = time.monotonic()
            rec.latency = rec.end - (t0 + job.at)

        with ThreadPoolExecutor(min(len(wl.jobs), MAX_CLIENT_THREADS)) as pool:
            futures = []
            for job in wl.jobs:
                time.sleep(max(0.0, t0 + job.at - time.monotonic()))  # the arrival time
                futures.append(pool.submit(send, job))
            wait(futures, timeout=cap)
        return summarize(wl, list(out.values()), t0, t0_wall, cap, sim.stats(), direct=True)
    finally:
        for made in clients.values():
            made.close()
        svc.stop()


def compare_door(
    procs: Any, wl: Workload, job_api: dict[str, Any] | None, sim: Any, cap: float
) -> dict[str, Any]:
    """``wl`` through the Ollama API against the job API (``job_api``: the managed figures
    of this run, or None to measure them here). ``sim``: makes a fresh simulator."""
    if job_api is None:
        job_api = managed_on_fresh(procs, wl, sim(), cap)
    second = sim()
    try:
        door = run_door(wl, second, procs, cap)
    finally:
        second.stop()
    return compared(wl, ("job_api", "ollama_api"), job_api, door, "makespan_ollama_over_job_api")
