"""Workload 6 of ``tools/bench.py``: the service alone.

- HTTP throughput from concurrent keep-alive clients, each figure next to baselines
  measured with the same driver in the same run: the service's ``GET /api/health``, and
  the ceilings of the stack: a bare Flask "hello" and a raw WSGI callable, each on
  waitress with 8 threads (the service has ``HTTP_THREADS``, 16; 8 or 16 measured the
  same for these two). The driver is ``wrk`` when it is
  installed, else a lean Python one (raw sockets, pre-encoded requests, one process, one
  event loop) run as a subprocess so it does not share a GIL with the benchmark.
- ``POST /api/submit`` (jobs/s), ``GET /api/job/<id>`` (polls/s), ``POST
  /api/submit_batch`` with 10,000 jobs per request (jobs/s).
- Resident memory (VmRSS of the service process) idle and with N pending jobs.
- The scheduler pass (``Manager.tick()``) with N pending jobs over 8 models, timed in a
  separate process that builds the components itself (``tick`` subcommand below).
- submits/s with ``SQLITE_SYNCHRONOUS=FULL`` and ``NORMAL``, each on a fresh service.

The simulator's gate is closed, so jobs the service dispatches stay running and the rest
stay pending; nothing here measures inference.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.bench_procs import ROOT, BenchError, Proc, Procs, Service, Sim, clean_env, pct, rnd
from tools.bench_workloads import TEXT_MODELS

SUBMIT_BODY = {"model": "qwen2.5:0.5b", "prompt": "Summarise the queue state.", "priority": "low"}
BATCH = 10_000


# ----------------------------------------------------------------------------- drivers


def drive(
    driver: str,
    url: str,
    method: str,
    paths: list[str],
    body: bytes | None,
    seconds: float,
    conns: int,
) -> dict[str, Any]:
    """Requests/s of ``method`` on ``paths`` (round-robin) from ``conns`` connections."""
    if driver == "wrk":
        return _wrk(url, method, paths, body, seconds, conns)
    args = {
        "url": url,
        "method": method,
        "paths": paths,
        "body": body.decode() if body else None,
        "seconds": seconds,
        "conns": conns,
    }
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "drive", json.dumps(args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"python driver failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wrk(
    url: str, method: str, paths: list[str], body: bytes | None, seconds: float, conns: int
) -> dict[str, Any]:
    script = [
        f"wrk.method = {_lua_string(method)}",
        'wrk.headers["Content-Type"] = "application/json"',
        f"local paths = {{{','.join(_lua_string(p) for p in paths)}}}",
        "local i = 0",
        "request = function() i = i % #paths + 1; return wrk.format(nil, paths[i]) end",
        "done = function(s, latency, requests)",
        '  io.write(string.format("BENCHJSON %d %d %d %d %d %d\\n", s.requests, s.duration,',
        "    s.errors.status,",
        "    s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout,",
        "    latency:percentile(50), latency:percentile(99)))",
        "end",
    ]
    if body is not None:
        script.insert(1, f"wrk.body = {_lua_string(body.decode())}")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write("\n".join(script) + "\n")
    try:
        threads = max(1, min(2, conns))
        argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(seconds))}s"]
        done = subprocess.run(
            [*argv, "-s", f.name, url],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
    finally:
        os.unlink(f.name)
    match = re.search(r"BENCHJSON (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", done.stdout)
    if not match:
        raise BenchError(f"wrk failed: {done.stdout[-1000:]} {done.stderr[-1000:]}")
    requests, duration_us, non2xx, errors, p50, p99 = (int(x) for x in match.groups())
    return {
        "driver": "wrk",
        "requests": requests,
        "per_s": round(requests / (duration_us / 1e6), 1),
        "non_2xx": non2xx,
        "errors": errors,
        "p50_ms": round(p50 / 1000, 3),
        "p99_ms": round(p99 / 1000, 3),
    }


def _python_driver(args: dict[str, Any]) -> dict[str, Any]:
    """One event loop over ``conns`` raw keep-alive sockets; pre-encoded requests."""
    host, _, port = args["url"].removeprefix("http://").partition(":")
    body = args["body"].encode() if args["body"] else b""
    requests = []
    for path in args["paths"]:
        head = f"{args['method']} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        requests.append(head.encode() + b"\r\n" + body)
    sel = selectors.DefaultSelector()
    state: dict[socket.socket, list[Any]] = {}  # sock -> [buffer, sent_at]
    counter = 0
    lat: list[float] = []
    non2xx = errors = 0
    end = time.monotonic() + float(args["seconds"])

    def send(sock: socket.socket) -> None:
        nonlocal counter
        counter += 1
        state[sock][1] = time.perf_counter()
        sock.sendall(requests[counter % len(requests)])

    for _ in range(int(args["conns"])):
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        state[sock] = [b"", 0.0]
        sel.register(sock, selectors.EVENT_READ)
        send(sock)
    started = time.monotonic()
    while state:
        for key, _ in sel.select(timeout=1.0):
            sock = key.fileobj  # type: ignore[assignment]
            data = sock.recv(262144)
            if not data:
                errors += 1
                sel.unregister(sock)
                sock.close()
                del state[sock]
                continue
            buf = state[sock][0] + data
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                state[sock][0] = buf
                continue
            head = buf[:head_end].decode("latin-1")
            match = re.search(r"(?im)^content-length:\s*(\d+)", head)
            length = int(match.group(1)) if match else 0
            if len(buf) < head_end + 4 + length:
                state[sock][0] = buf
                continue
            state[sock][0] = buf[head_end + 4 + length :]
            lat.append(time.perf_counter() - state[sock][1])
            if not head[9:12].startswith("2"):
                non2xx += 1
            if time.monotonic() < end:
                send(sock)
            else:
                sel.unregister(sock)
                sock.close()
                del state[sock]
    elapsed = time.monotonic() - started
    return {
        "driver": "python",
        "requests": len(lat),
        "per_s": round(len(lat) / elapsed, 1),
        "non_2xx": non2xx,
        "errors": errors,
        "p50_ms": rnd((pct(lat, 50) or 0) * 1000),
        "p99_ms": rnd((pct(lat, 99) or 0) * 1000),
    }


# -------------------------------------------------------------------------------- tick


def _hello_main(args: dict[str, Any]) -> None:
    """Serve ``GET /`` with a small JSON body: Flask on waitress, or a raw WSGI callable."""
    import logging

    from waitress import create_server

    # as main.py does: waitress warns on every request that finds its threads busy
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)

    body = b'{"status":"ok","backend":{"up":true}}'
    app: Any
    if args["kind"] == "flask":
        from flask import Flask, Response

        app = Flask("hello")
        app.add_url_rule("/", "hello", lambda: Response(body, mimetype="application/json"))
    else:

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            start_response("200 OK", headers)
            return [body]

    server = create_server(app, host="127.0.0.1", port=0, threads=8, connection_limit=200)
    print(f"listening on http://127.0.0.1:{server.getsockname()[1]}", flush=True)
    server.run()


def _tick_main(args: dict[str, Any]) -> dict[str, Any]:
    """Build a Manager (not started) over a temp store, queue ``jobs`` over 8 models,
    let loads and dispatch settle (the simulator's gate is closed), time ``tick()``."""
    from config import Config
    from modelmanager.manager import Manager

    tmp = tempfile.mkdtemp(prefix="mm-bench-tick-")
    try:
        config = Config.load(
            environ={},
            overrides={
                "OLLAMA_BASE_URL": args["url"],
                "DATA_DIR": tmp,
                "LOG_FILE": "",
                "VRAM_BUDGET_MB": args["vram_mb"],
                "QUEUE_MAX_SIZE": 10 * int(args["jobs"]) + 1000,
            },
        )
        manager = Manager(config, gpu=None)
        n = int(args["jobs"])
        t = time.perf_counter()
        for start in range(0, n, BATCH):
            chunk = [
                {"model": TEXT_MODELS[i % len(TEXT_MODELS)], "prompt": f"job {i}"}
                for i in range(start, min(n, start + BATCH))
            ]
            manager.api.submit_batch({"jobs": chunk})
        queued_s = time.perf_counter() - t
        settle_end = time.monotonic() + 30.0
        while time.monotonic() < settle_end:  # loads run on the residency's threads
            manager.scheduler.tick()
            runners = manager.scheduler.snapshot().runners
            if sum(1 for r in runners if r.in_flight) >= 3:
                break
            time.sleep(0.05)  # waiting for the simulated loads
        times = []
        for _ in range(int(args["ticks"])):
            t = time.perf_counter()
            manager.scheduler.tick()
            times.append((time.perf_counter() - t) * 1000.0)
        runners = manager.scheduler.snapshot().runners
        return {
            "sqlite_commit_us": _commit_costs(tmp),
            "pending": len(manager.pending),
            "models_waiting": len(manager.pending.depth_by_model()),
            "models_running": sum(1 for r in runners if r.in_flight),
            "ticks": len(times),
            "tick_p50_ms": rnd(pct(times, 50)),
            "tick_p95_ms": rnd(pct(times, 95)),
            "tick_max_ms": rnd(max(times)),
            "queue_jobs_s": rnd(queued_s),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _commit_costs(tmp: str, n: int = 300) -> dict[str, float]:
    """Microseconds per one-job ``Store.insert_jobs`` (one transaction), FULL and NORMAL."""
    import uuid

    from modelmanager.models import Job, JobKind, Priority
    from modelmanager.store import Store

    out = {}
    for mode in ("FULL", "NORMAL"):
        store = Store(Path(tmp) / f"commit-{mode}.db", synchronous=mode)
        t = time.perf_counter()
        for _ in range(n):
            job = Job(
                id=str(uuid.uuid4()),
                model="m",
                kind=JobKind.GENERATE,
                priority=Priority.NORMAL,
                payload={"prompt": "x"},
                metadata=None,
                submitted_at=time.time(),
                idempotency_key=None,
            )
            store.insert_jobs([job])
        out[mode] = round((time.perf_counter() - t) / n * 1e6, 1)
        store.close()
    return out


def measure_tick(sim_url: str, vram_mb: int, jobs: int, ticks: int) -> dict[str, Any]:
    args = {"url": sim_url, "vram_mb": vram_mb, "jobs": jobs, "ticks": ticks}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "tick", json.dumps(args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0 or "{" not in done.stdout:
        raise BenchError(f"tick measurement failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# ----------------------------------------------------------------------------- measure


def measure(
    procs: Procs,
    *,
    driver: str,
    seconds: float,
    rounds: int,
    conns: int,
    pending: int,
    vram_mb: int,
) -> dict[str, Any]:
    """Every figure of workload 6 (see the module docstring).

    The throughput figures are taken in ``rounds`` rounds of ``seconds`` each, the figures
    of one round back to back (FULL and NORMAL services side by side, the ceilings'
    servers alive throughout), and the median of the rounds is reported: a busy moment
    on a shared machine then hits one round of every figure, not one figure.
    """
    sim = Sim(procs, vram_mb=vram_mb, time_scale=1.0)
    sim.control("gate", {"closed": True})
    out: dict[str, Any] = {
        "driver": driver,
        "connections": conns,
        "seconds": seconds,
        "rounds": rounds,
    }
    limit = 10 * pending + 100_000
    full = Service(procs, sim, QUEUE_MAX_SIZE=limit, SQLITE_SYNCHRONOUS="FULL")
    normal = Service(procs, sim, QUEUE_MAX_SIZE=limit, SQLITE_SYNCHRONOUS="NORMAL")
    out["rss_idle_mb"] = round(full.proc.memory_kb().get("VmRSS", 0) / 1024, 1)
    ceilings = {kind: _hello(procs, kind) for kind in ("flask", "wsgi")}
    body = json.dumps(SUBMIT_BODY).encode()
    runs: dict[str, list[dict[str, Any]]] = {}
    paths: list[str] = []

    def run(name: str, url: str, method: str, figure_paths: list[str], data: bytes | None) -> None:
        result = drive(driver, url, method, figure_paths, data, seconds, conns)
        runs.setdefault(name, []).append(result)

    for _ in range(rounds):
        for mode, svc in (("full", full), ("normal", normal)):
            run(f"{mode}_health", svc.url, "GET", ["/api/health"], None)
            run(f"{mode}_submit", svc.url, "POST", ["/api/submit"], body)
        if not paths:
            _, doc = full.http.json("GET", "/api/jobs?limit=1000")
            paths = [f"/api/job/{j['job_id']}" for j in doc["jobs"]]
        run("poll", full.url, "GET", paths, None)
        for kind, (_, url) in ceilings.items():
            run(kind, url, "GET", ["/"], None)
    for proc, _ in ceilings.values():
        procs.stop(proc)
    normal.stop()
    fig = {name: _median_figure(results) for name, results in runs.items()}
    out["sync_full"] = {"health": fig["full_health"], "submit": fig["full_submit"]}
    out["sync_normal"] = {"health": fig["normal_health"], "submit": fig["normal_submit"]}
    out["poll"] = fig["poll"]
    out["ceilings"] = {"flask": fig["flask"], "wsgi": fig["wsgi"]}
    out["batch"] = _batches(full, pending)
    mem = full.proc.memory_kb()
    out["pending_for_rss"] = full.stats()["queue"]["waiting"]
    out["rss_pending_mb"] = round(mem.get("VmRSS", 0) / 1024, 1)
    out["rss_peak_mb"] = round(mem.get("VmHWM", 0) / 1024, 1)
    full.stop()
    health, flask = fig["full_health"]["per_s"], fig["flask"]["per_s"]
    out["submit_per_s"] = fig["full_submit"]["per_s"]
    out["poll_per_s"] = fig["poll"]["per_s"]
    out["submit_vs_health"] = rnd(out["submit_per_s"] / health)
    out["poll_vs_health"] = rnd(out["poll_per_s"] / health)
    out["submit_vs_flask_hello"] = rnd(out["submit_per_s"] / flask)
    out["poll_vs_flask_hello"] = rnd(out["poll_per_s"] / flask)
    out["normal_over_full_submits"] = rnd(fig["normal_submit"]["per_s"] / out["submit_per_s"])
    out["tick"] = measure_tick(sim.url, vram_mb, pending, ticks=200)
    sim.stop()
    return out


def _hello(procs: Procs, kind: str) -> tuple[Proc, str]:
    argv = [sys.executable, "tools/bench_service.py", "hello", json.dumps({"kind": kind})]
    proc = procs.spawn(f"hello-{kind}", argv, clean_env())
    return proc, f"http://127.0.0.1:{proc.wait_port(30.0)}"


def _median_figure(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One figure over its rounds: median rate and latencies, summed counts."""
    rates = [r["per_s"] for r in results]
    return {
        "driver": results[0]["driver"],
        "per_s": round(float(pct(rates, 50) or 0.0), 1),
        "rounds_per_s": rates,
        "requests": sum(r["requests"] for r in results),
        "non_2xx": sum(r["non_2xx"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "p50_ms": rnd(pct([r["p50_ms"] for r in results], 50)),
        "p99_ms": rnd(pct([r["p99_ms"] for r in results], 50)),
    }


def _batches(svc: Service, pending: int) -> dict[str, Any]:
    """submit_batch until ``pending`` jobs wait; jobs/s over the batch requests alone."""
    waiting = int(svc.stats()["queue"]["waiting"])
    size = min(BATCH, max(1, pending // 4))
    jobs = [dict(SUBMIT_BODY, prompt=f"batch job {i}") for i in range(size)]
    body = json.dumps({"jobs": jobs}, separators=(",", ":")).encode()
    elapsed, sent, requests = 0.0, 0, 0
    while waiting + sent < pending or requests == 0:
        t = time.perf_counter()
        status, raw = svc.http.request("POST", "/api/submit_batch", body)
        elapsed += time.perf_counter() - t
        if status != 200:
            raise BenchError(f"submit_batch: {status} {raw[:200]!r}")
        sent += size
        requests += 1
    return {
        "jobs": sent,
        "requests": requests,
        "jobs_per_request": size,
        "seconds": rnd(elapsed),
        "jobs_per_s": round(sent / elapsed, 1),
    }


if __name__ == "__main__":
    command, raw_args = sys.argv[1], json.loads(sys.argv[2])
    if command == "hello":
        _hello_main(raw_args)
    result = _python_driver(raw_args) if command == "drive" else _tick_main(raw_args)
    print(json.dumps(result), flush=True)
    os._exit(0)  # the tick process holds requests the closed gate keeps: do not join them
