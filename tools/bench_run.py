"""Running one workload in one mode, and what is measured.

- direct: one client thread per job in flight sends it straight to the simulator at its
  arrival time, as programs do today: no retries, a failure is a failure.
- managed: jobs are submitted to Model Manager at their arrival times (4 submitting
  threads), the service's ``/api/stats`` is polled until nothing is unfinished, then every
  job is read once for its status and timestamps.

A job's latency runs from its arrival time to its answer (direct) or to the service's
``completed_at`` (managed; millisecond resolution); closed-loop (sequential) workloads
measure from the moment the job was sent. Dispatch latency runs from sending the request
(direct) or the submit (managed) to the request's arrival in the simulator, read from
the simulator's request log by the job's ``[bench:<index>]`` tag (first arrival if a job
was retried). A run that reaches its cap stops: jobs not finished by then are
``unfinished`` and the makespan is the cap, with a linear estimate next to it.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from tools.bench_procs import Http, Service, Sim, iso_to_epoch, pct, rnd
from tools.bench_workloads import BenchJob, Workload

TERMINAL = ("complete", "failed", "cancelled")
MAX_CLIENT_THREADS = 512


@dataclass
class Outcome:
    """One job's fate. ``ok`` None: not finished when the run stopped."""

    job: BenchJob
    ok: bool | None = None
    end: float | None = None  # time.monotonic() (direct) or time.time() (managed)
    sent: float | None = None  # time.monotonic() when sent / submitted
    latency: float | None = None
    error: str | None = None


class Pressure(threading.Thread):
    """Another program on the GPU: inside each (start, end, target MiB) window it holds up
    to ``target`` MiB, taking only memory that is free (as a polite CUDA program must)
    and topping up as memory frees; outside the windows it holds nothing."""

    def __init__(self, sim_url: str, windows: list[tuple[float, float, int]], t0: float) -> None:
        super().__init__(name="pressure", daemon=True)
        self.http = Http(sim_url, timeout=10.0)
        self.windows, self.t0 = windows, t0
        self.stop_event = threading.Event()
        self.peak_mb = 0
        self.changes = 0

    def run(self) -> None:
        held = 0
        with contextlib.suppress(OSError, http.client.HTTPException):
            while not self.stop_event.wait(0.05):
                now = time.monotonic() - self.t0
                target = max((mb for a, b, mb in self.windows if a <= now < b), default=0)
                want = held
                if target == 0:
                    want = 0
                elif held < target:
                    _, gpu = self.http.json("GET", "/_sim/gpu")
                    want = min(target, held + max(0, int(gpu["free_mb"]) - 64))
                if want != held:
                    self.http.json("POST", "/_sim/gpu", {"other_mb": want})
                    held = want
                    self.changes += 1
                    self.peak_mb = max(self.peak_mb, held)
            self.http.json("POST", "/_sim/gpu", {"other_mb": 0})
        self.http.close()

    def finish(self) -> None:
        self.stop_event.set()
        self.join(15.0)


def _wait_until(t: float, stop: threading.Event) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        stop.wait(delay)


# ------------------------------------------------------------------------------ direct


def run_direct(wl: Workload, sim: Sim, cap: float) -> dict[str, Any]:
    """Send every job straight to the simulator; kills the simulator at the cap."""
    if wl.warm_model:
        conn = Http(sim.url)
        conn.request("POST", "/api/generate", _warmup_body(wl.warm_model))
        conn.close()
        sim.control("reset", {})
    out = {j.idx: Outcome(j) for j in wl.jobs}
    stop = threading.Event()
    local = threading.local()
    t0 = time.monotonic() + 0.05
    t0_wall = time.time() + 0.05

    def send(job: BenchJob) -> None:
        conn: Http | None = getattr(local, "http", None)
        if conn is None:
            conn = local.http = Http(sim.url, timeout=3600.0)
        rec = out[job.idx]
        path, body = job.direct_request()
        rec.sent = time.monotonic()
        try:
            status, raw = conn.request("POST", path, body)
        except (OSError, http.client.HTTPException) as exc:
            if not stop.is_set():
                rec.ok, rec.end, rec.error = False, time.monotonic(), f"connection: {exc}"
            return
        rec.end = time.monotonic()
        rec.ok = status == 200
        start = rec.sent if wl.sequential else t0 + job.at
        rec.latency = rec.end - start
        if not rec.ok:
            rec.error = f"{status} {raw[:100].decode('utf-8', 'replace')}"

    pressure = Pressure(sim.url, wl.pressure, t0) if wl.pressure else None
    if pressure:
        pressure.start()
    deadline = t0 + cap
    if wl.sequential:
        for job in wl.jobs:
            if time.monotonic() > deadline:
                break
            send(job)
        stats = sim.stats()
    else:
        futures: list[Future[None]] = []
        with ThreadPoolExecutor(min(len(wl.jobs), MAX_CLIENT_THREADS)) as pool:
            for job in wl.jobs:
                _wait_until(t0 + job.at, stop)
                if time.monotonic() > deadline:
                    break
                futures.append(pool.submit(send, job))
            wait(futures, timeout=max(0.0, deadline - time.monotonic()))
            capped = not all(f.done() for f in futures) or len(futures) < len(wl.jobs)
            stats = sim.stats()
            if capped:
                stop.set()
                sim.stop()  # in-flight requests end with a connection error: unfinished
    if pressure:
        pressure.finish()
    result = summarize(wl, list(out.values()), t0, t0_wall, cap, stats, direct=True)
    if pressure:
        result["other_program_peak_mb"] = pressure.peak_mb
    return result


def _warmup_body(model: str) -> bytes:
    return b'{"model":"%s","prompt":"warm up","stream":false}' % model.encode()


# ----------------------------------------------------------------------------- managed


def run_managed(wl: Workload, svc: Service, sim: Sim | Sequence[Sim], cap: float) -> dict[str, Any]:
    """Submit every job to Model Manager at its arrival time and wait for all to end.
    With several simulators (backends), their loads, OOMs and logs are summed."""
    sims = [sim] if isinstance(sim, Sim) else list(sim)
    sim = sims[0]
    if wl.warm_model:
        job_id = _submit(svc.http, {"model": wl.warm_model, "prompt": "warm up"})[1]
        _poll_job(svc.http, str(job_id), time.monotonic() + 60.0)
        for each in sims:
            each.control("reset", {})
    out = {j.idx: Outcome(j) for j in wl.jobs}
    ids: dict[int, str] = {}
    stop = threading.Event()
    local = threading.local()
    t0 = time.monotonic() + 0.05
    t0_wall = time.time() + 0.05
    deadline = t0 + cap

    def submit(job: BenchJob) -> None:
        conn: Http | None = getattr(local, "http", None)
        if conn is None:
            conn = local.http = Http(svc.url)
        rec = out[job.idx]
        rec.sent = time.monotonic()
        ok, value = _submit(conn, job.submission())
        if ok:
            ids[job.idx] = str(value)
        else:
            rec.ok, rec.end, rec.error = False, time.time(), f"submit refused: {value}"

    pressure = Pressure(sim.url, wl.pressure, t0) if wl.pressure else None
    if pressure:
        pressure.start()
    if wl.sequential:
        for job in wl.jobs:
            if time.monotonic() > deadline:
                break
            submit(job)
            if job.idx in ids:
                _poll_job(svc.http, ids[job.idx], deadline)
    else:
        with ThreadPoolExecutor(4) as pool:
            futures = []
            for job in wl.jobs:
                _wait_until(t0 + job.at, stop)
                futures.append(pool.submit(submit, job))
            wait(futures)
        while time.monotonic() < deadline:
            by_status = svc.stats()["queue"]["by_status"]
            if not any(by_status.get(s) for s in ("pending", "queued", "running")):
                break
            time.sleep(0.2)  # polling the service until every job has ended
    if pressure:
        pressure.finish()
    for idx, job_id in ids.items():
        status, doc = svc.http.json("GET", f"/api/job/{job_id}")
        rec = out[idx]
        if status != 200 or doc["status"] not in TERMINAL:
            continue  # unfinished at the cap
        rec.ok = doc["status"] == "complete"
        rec.end = iso_to_epoch(doc["completed_at"])
        if rec.end is not None and rec.sent is not None:
            start = t0_wall + (rec.sent - t0) if wl.sequential else t0_wall + rec.job.at
            rec.latency = rec.end - start
        if not rec.ok:
            rec.error = f"{doc['error_code']}: {(doc['error'] or '')[:100]}"
    stats = merged_stats([each.stats() for each in sims])
    result = summarize(wl, list(out.values()), t0, t0_wall, cap, stats, direct=False)
    counters = svc.stats()["counters"]
    result["service_counters"] = counters
    if pressure:
        result["other_program_peak_mb"] = pressure.peak_mb
    return result


def managed_on_fresh(
    procs: Any, wl: Workload, sims: Sim | Sequence[Sim], cap: float
) -> dict[str, Any]:
    """``wl`` managed by a fresh service on ``sims`` (stopped afterwards, with it)."""
    try:
        svc = Service(procs, sims)
        try:
            return run_managed(wl, svc, sims, cap)
        finally:
            svc.stop()
    finally:
        for each in [sims] if isinstance(sims, Sim) else sims:
            each.stop()


def compared(
    wl: Workload, keys: tuple[str, str], one: dict[str, Any], two: dict[str, Any], ratio: str
) -> dict[str, Any]:
    """Two runs of ``wl`` side by side under ``keys``, with ``ratio`` (second makespan
    over first) and both load counts."""
    for r in (one, two):
        r.pop("_latency_by_job", None)
    span1, span2 = one["makespan_s"], two["makespan_s"]
    return {
        "title": wl.title,
        "jobs": len(wl.jobs),
        "models": len(wl.models),
        keys[0]: one,
        keys[1]: two,
        ratio: rnd(span2 / span1) if span1 and span2 else None,
        "loads": {keys[0]: one["loads"], keys[1]: two["loads"]},
    }


def merged_stats(all_stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Several simulators' ``/_sim/stats`` as one: counters summed, logs merged in time."""
    if len(all_stats) == 1:
        return all_stats[0]
    out: dict[str, Any] = {k: sum(int(s.get(k, 0)) for s in all_stats) for k in COUNTERS}
    for log in ("load_events", "request_log"):
        key = "started" if log == "load_events" else "t"
        out[log] = sorted((e for s in all_stats for e in s.get(log, [])), key=lambda e: e[key])
    return out


COUNTERS = ("loads", "ooms", "crashes")


def _submit(conn: Http, body: dict[str, Any]) -> tuple[bool, Any]:
    status, doc = conn.json("POST", "/api/submit", body)
    if status == 200:
        return True, doc["job_id"]
    return False, f"{status} {str(doc)[:100]}"


def _poll_job(conn: Http, job_id: str, deadline: float) -> dict[str, Any] | None:
    while time.monotonic() < deadline:
        status, doc = conn.json("GET", f"/api/job/{job_id}")
        if status == 200 and doc["status"] in TERMINAL:
            return dict(doc)
        time.sleep(0.002)  # a client's polling interval
    return None


# ------------------------------------------------------------------------------ report


def summarize(
    wl: Workload,
    outcomes: list[Outcome],
    t0: float,
    t0_wall: float,
    cap: float,
    sim_stats: dict[str, Any],
    *,
    direct: bool,
) -> dict[str, Any]:
    """The per-mode figures of one workload (seconds unless a key ends in _ms)."""
    done = [o for o in outcomes if o.ok is not None]
    ok = [o for o in done if o.ok]
    ends = [o.end for o in done if o.end is not None]
    origin = t0 if direct else t0_wall
    unfinished = len(outcomes) - len(done)
    makespan = cap if unfinished else (max(ends) - origin if ends else 0.0)
    estimate = makespan if not unfinished else (cap * len(outcomes) / max(1, len(done)))
    lat = [o.latency for o in ok if o.latency is not None]
    by_prio: dict[str, dict[str, Any]] = {}
    for prio in ("high", "normal", "low"):
        values = [o.latency for o in ok if o.job.priority == prio and o.latency is not None]
        if values:
            by_prio[prio] = {
                "n": len(values),
                "p50_s": rnd(pct(values, 50)),
                "p95_s": rnd(pct(values, 95)),
            }
    arrivals: dict[str, float] = {}
    for entry in sim_stats.get("request_log", []):
        tag = entry.get("tag")
        if tag is not None and (tag not in arrivals or entry["t"] < arrivals[tag]):
            arrivals[tag] = entry["t"]
    dispatch = [
        (arrivals[o.job.tag] - o.sent) * 1000.0
        for o in outcomes
        if o.sent is not None and o.job.tag in arrivals
    ]
    errors = Counter((o.error or "?")[:80] for o in done if not o.ok)
    timeline = [
        [e["model"], rnd(e["started"] - t0, 2), rnd((e["finished"] or e["started"]) - t0, 2)]
        for e in sim_stats.get("load_events", [])[:100]
    ]
    return {
        "jobs": len(outcomes),
        "complete": len(ok),
        "failed": len(done) - len(ok),
        "unfinished": unfinished,
        "capped": bool(unfinished),
        "makespan_s": rnd(makespan),
        "makespan_estimate_s": rnd(estimate),
        "loads": int(sim_stats.get("loads", 0)),
        "ooms": int(sim_stats.get("ooms", 0)),
        "crashes": int(sim_stats.get("crashes", 0)),
        "latency_p50_s": rnd(pct(lat, 50)),
        "latency_p95_s": rnd(pct(lat, 95)),
        "latency_by_priority": by_prio,
        "dispatch_ms": {
            "n": len(dispatch),
            "p50": rnd(pct(dispatch, 50)),
            "p95": rnd(pct(dispatch, 95)),
            "p99": rnd(pct(dispatch, 99)),
        },
        "_latency_by_job": {o.job.idx: o.latency for o in ok if o.latency is not None},
        "errors": dict(errors.most_common(3)),
        "load_timeline": timeline,  # [model, load start, load end] in s after the start
    }
