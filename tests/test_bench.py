"""``tools/bench.py --quick`` runs and reports every workload and every field, sanely.

Structure and arithmetic only: a benchmark's figures are never asserted here (the machine
running the tests may be busy). The quick run takes 30 to 60 s.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tools.bench import parse_args
from tools.bench_procs import pct
from tools.bench_report import TARGETS, render
from tools.bench_service import drive
from tools.bench_workloads import (
    STREAM_MODELS,
    TEXT_MODELS,
    BenchJob,
    Workload,
    high_p95_bound,
    lower_bound,
    mixed_burst,
    short_stream,
)
from tools.fake_ollama import generate_seconds, load_seconds

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = (
    "interleaved",
    "priority",
    "pressure",
    "embed_mix",
    "warm",
    "mixed",
    "stream",
    "stream_pressure",
)
PRIORITIZED = ("priority", "mixed", "stream", "stream_pressure")  # high and low jobs
HIGH_BOUND_FIELDS = {
    "p95_s": float,
    "over_lb": float,
    "rank": int,
    "rank_s": float,
    "next_s": float,
    "high_jobs": int,
    "models": list,
    "direct_over_bound": float,
    "managed_over_bound": float,
}
MODE_FIELDS = {
    "jobs": int,
    "complete": int,
    "failed": int,
    "unfinished": int,
    "capped": bool,
    "makespan_s": float,
    "makespan_estimate_s": float,
    "loads": int,
    "ooms": int,
    "crashes": int,
    "latency_p50_s": float,
    "latency_p95_s": float,
    "latency_by_priority": dict,
    "dispatch_ms": dict,
    "errors": dict,
    "load_timeline": list,
}
RATIO_FIELDS = (
    "makespan_managed_over_direct",
    "direct_capped",
    "p95_managed_over_direct",
    "managed_over_lb",
    "direct_over_lb",
    "direct_estimate_over_lb",
    "managed_loads_over_models",
    "direct_loads_over_models",
)


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "tools/bench.py", "--quick", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _check_mode(name: str, r: dict[str, Any]) -> None:
    for key, kind in MODE_FIELDS.items():
        assert key in r, f"{name}: {key} missing"
        if kind is float:
            assert _number(r[key]), f"{name}: {key} = {r[key]!r}"
        elif kind is int:
            assert isinstance(r[key], int) and r[key] >= 0, f"{name}: {key} = {r[key]!r}"
        else:
            assert isinstance(r[key], kind), f"{name}: {key} = {r[key]!r}"
    assert r["complete"] + r["failed"] + r["unfinished"] == r["jobs"] > 0, name
    assert r["capped"] == (r["unfinished"] > 0), name
    assert r["latency_p50_s"] <= r["latency_p95_s"], name
    assert r["makespan_s"] <= r["makespan_estimate_s"] + 1e-6, name
    prios = r["latency_by_priority"]
    assert prios and set(prios) <= {"high", "normal", "low"}, name
    assert sum(p["n"] for p in prios.values()) == r["complete"], name
    for p in prios.values():
        assert _number(p["p50_s"]) and p["p50_s"] <= p["p95_s"], name
    d = r["dispatch_ms"]
    assert 0 < d["n"] <= r["jobs"], name
    assert all(_number(d[k]) for k in ("p50", "p95", "p99")), name
    assert d["p50"] <= d["p95"] <= d["p99"], name
    assert sum(r["errors"].values()) <= r["failed"] + r["unfinished"], name
    for model, start, end in r["load_timeline"]:
        assert isinstance(model, str) and start <= end, name


def test_quick_run_reports_the_fleet_door_and_front_comparisons(report: dict[str, Any]) -> None:
    """Two backends against one, the Ollama API against the job API, and the streamed
    front-door figures: each measured in the same run, with its ratio computed from it."""
    for key in ("interleaved", "mixed"):
        fleet = report["fleet"][key]
        _check_mode(f"fleet/{key}/one", fleet["one"])
        _check_mode(f"fleet/{key}/two", fleet["two"])
        assert fleet["makespan_two_over_one"] == pytest.approx(
            fleet["two"]["makespan_s"] / fleet["one"]["makespan_s"], abs=1e-3
        )
        door = report["door"][key]
        _check_mode(f"door/{key}/job_api", door["job_api"])
        _check_mode(f"door/{key}/ollama_api", door["ollama_api"])
        # every request through the ollama client got its answer
        assert door["ollama_api"]["complete"] == door["jobs"], door["ollama_api"]["errors"]
        assert door["makespan_ollama_over_job_api"] == pytest.approx(
            door["ollama_api"]["makespan_s"] / door["job_api"]["makespan_s"], abs=1e-3
        )
    front = report["front"]
    assert front["direct"]["n"] > 0 and front["managed"]["n"] == front["direct"]["n"]
    assert _number(front["throughput_managed_over_direct"])
    keys = {t["key"] for t in report["targets"]}
    assert {"fleet_mixed", "door_interleaved", "door_mixed", "front_ttft"} <= keys


def test_quick_run_reports_every_workload_and_field(report: dict[str, Any]) -> None:
    assert report["command"].startswith("python3 tools/bench.py")
    assert isinstance(report["machine"]["cores"], int) and report["machine"]["cores"] >= 1
    assert report["settings"]["quick"] is True
    assert report["settings"]["sqlite_synchronous_default"] in ("FULL", "NORMAL")
    assert _number(report["elapsed_s"])
    assert set(report["workloads"]) == set(WORKLOADS)
    for key, wl in report["workloads"].items():
        assert wl["title"] and wl["note"] and wl["jobs"] > 0 and wl["models"] >= 1, key
        lb = wl["lower_bound"]
        assert lb["lb_s"] > 0 and lb["binding"] in lb["terms"], key
        assert lb["lb_s"] == max(lb["terms"].values()), key
        for mode in ("direct", "managed"):
            _check_mode(f"{key}/{mode}", wl[mode])
            assert wl[mode]["jobs"] == wl["jobs"], key
        assert set(RATIO_FIELDS) <= set(wl["ratios"]), key
        counters = wl["managed"]["service_counters"]
        warmup = 1 if key == "warm" else 0  # the untimed job that loads the warm model
        assert counters["completed"] == wl["managed"]["complete"] + warmup, key
    for key in PRIORITIZED:
        prio = report["workloads"][key]
        for mode in ("direct", "managed"):
            assert {"high", "low"} <= set(prio[mode]["latency_by_priority"]), (key, mode)
            assert f"{mode}_p95_high_over_low" in prio["ratios"], key
    for key in ("pressure", "stream_pressure"):
        assert report["workloads"][key]["managed"]["other_program_peak_mb"] > 0, key
    stream, pressured = report["workloads"]["stream"], report["workloads"]["stream_pressure"]
    assert stream["jobs"] == pressured["jobs"] and stream["lower_bound"] == pressured["lower_bound"]
    for key, wl in report["workloads"].items():
        assert ("high_p95_bound" in wl) == (key == "mixed"), key
    hb = report["workloads"]["mixed"]["high_p95_bound"]
    for key, kind in HIGH_BOUND_FIELDS.items():
        ok = _number(hb[key]) if kind is float else isinstance(hb[key], kind)
        assert ok, f"high_p95_bound: {key} = {hb[key]!r}"
    assert hb["p95_s"] > 0 and 1 <= hb["rank"] <= hb["high_jobs"] and hb["models"]
    assert hb["rank_s"] <= hb["p95_s"] <= hb["next_s"]
    lb = report["workloads"]["mixed"]["lower_bound"]["lb_s"]
    assert hb["over_lb"] == pytest.approx(hb["p95_s"] / lb, abs=2e-3)
    warm = report["workloads"]["warm"]
    assert warm["managed"]["loads"] == warm["direct"]["loads"] == 0
    assert set(warm["ratios"]["added_latency_ms"]) == {"p50", "p95"}


def test_quick_run_reports_the_service_alone(report: dict[str, Any]) -> None:
    s = report["service"]
    assert s["driver"] in ("wrk", "python")
    for mode in ("sync_full", "sync_normal"):
        for figure in ("health", "submit"):
            result = s[mode][figure]
            assert result["driver"] == s["driver"] and result["requests"] > 0, (mode, figure)
            assert result["non_2xx"] == 0 and _number(result["per_s"]), (mode, figure)
    assert s["poll"]["requests"] > 0 and s["poll"]["non_2xx"] == 0
    for key in ("submit_per_s", "poll_per_s", "submit_vs_health", "poll_vs_health"):
        assert _number(s[key]) and s[key] > 0, key
    assert _number(s["normal_over_full_submits"])
    assert s["batch"]["jobs"] == s["batch"]["requests"] * s["batch"]["jobs_per_request"]
    assert s["batch"]["jobs_per_s"] > 0
    assert s["pending_for_rss"] >= 10_000 * 0.9
    assert 0 < s["rss_idle_mb"] <= s["rss_peak_mb"] and s["rss_pending_mb"] <= s["rss_peak_mb"]
    tick = s["tick"]
    assert set(tick["sqlite_commit_us"]) == {"FULL", "NORMAL"}
    assert all(v > 0 for v in tick["sqlite_commit_us"].values())
    assert tick["pending"] > 0 and tick["ticks"] > 0
    assert 0 <= tick["tick_p50_ms"] <= tick["tick_p95_ms"] <= tick["tick_max_ms"]


def test_quick_run_checks_every_target_and_renders(report: dict[str, Any]) -> None:
    assert [t["key"] for t in report["targets"]] == [key for key, _, _ in TARGETS]
    for t in report["targets"]:
        assert t["value"] is not None and isinstance(t["met"], bool), t
    text = render(report)
    assert "| workload | mode |" in text and "| target | measured | met |" in text
    for wl in report["workloads"].values():
        assert wl["title"] in text
    assert "p95 high bound" in text
    assert "submits/s (synchronous=FULL)" in text and report["command"] in text


def test_lower_bound_is_the_largest_term() -> None:
    a = BenchJob(0, 0.0, "llama3.2:1b", "generate", "normal", "[bench:0] a b c")
    b = BenchJob(1, 5.0, "gemma:2b", "generate", "high", "[bench:1] d e f")
    wl = Workload("t", "t", "t", [a, b])
    lb = lower_bound(wl, time_scale=1.0, num_parallel=1, max_loaded=3)
    sa, sb = generate_seconds(a.model, a.text), generate_seconds(b.model, b.text)
    la, lb_load = load_seconds(a.model), load_seconds(b.model)
    terms = lb["terms"]
    assert terms["loads"] == pytest.approx(la + lb_load + min(sa, sb))
    assert terms["per_model"] == pytest.approx(max(la + sa, lb_load + sb))
    assert terms["slots"] == pytest.approx(min(la, lb_load) + (sa + sb) / 3)
    assert terms["seats"] == pytest.approx((la + sa + lb_load + sb) / 3)
    assert terms["arrivals"] == pytest.approx(5.0 + sb)
    assert lb["lb_s"] == max(terms.values()) and lb["binding"] == "arrivals"
    serial = Workload("s", "s", "s", [a, b], sequential=True)
    assert lower_bound(serial, time_scale=0.5, num_parallel=1, max_loaded=3)[
        "lb_s"
    ] == pytest.approx((sa + sb) / 2)


def test_only_accepts_every_workload_key() -> None:
    assert parse_args(["--only", "mixed,stream,stream_pressure"]).only == {
        "mixed",
        "stream",
        "stream_pressure",
    }
    with pytest.raises(SystemExit):
        parse_args(["--only", "stream,nonesuch"])


def test_mixed_burst_is_a_round_robin_burst_of_short_jobs_in_exact_shares() -> None:
    wl = mixed_burst(30, 0.5, 12)
    assert len(wl.jobs) == 240 and wl.models == sorted(TEXT_MODELS) and wl.high_bound
    assert all(j.at == 0.0 and j.num_predict == 16 for j in wl.jobs)
    assert [j.model for j in wl.jobs[:8]] == list(TEXT_MODELS)
    prios = [j.priority for j in wl.jobs]
    assert (prios.count("high"), prios.count("normal"), prios.count("low")) == (48, 144, 48)
    assert prios != sorted(prios)  # shuffled, not in blocks
    assert [j.priority for j in mixed_burst(30, 0.5, 12).jobs] == prios  # seeded


def test_short_stream_is_a_seeded_poisson_stream_of_short_jobs() -> None:
    wl = short_stream(60.0, 0.5, 13, rate=4.0)
    at = [j.at for j in wl.jobs]
    assert at == sorted(at) and at[0] > 0 and at[-1] < 60.0 * 0.5
    assert 180 <= len(wl.jobs) <= 300  # 240 expected
    assert set(wl.models) == set(STREAM_MODELS) and not wl.pressure
    assert all(8 <= (j.num_predict or 0) <= 16 for j in wl.jobs)
    assert all(0.02 <= j.seconds(1.0) <= 0.1 for j in wl.jobs)  # a few tens of ms
    assert {j.priority for j in wl.jobs} == {"high", "normal", "low"}
    pressured = short_stream(60.0, 0.5, 13, rate=4.0, pressure=True)
    assert pressured.jobs == wl.jobs and pressured.key != wl.key
    assert pressured.pressure and all(0 < a < b <= 30.0 for a, b, _ in pressured.pressure)
    assert {mb for _, _, mb in pressured.pressure} == {5120}  # leaves room for ~2 of the 5


def _high(idx: int, model: str, priority: str = "high") -> BenchJob:
    return BenchJob(idx, 0.0, model, "generate", priority, f"[bench:{idx}] a b c {idx}")


def test_high_p95_bound_interpolates_the_cheapest_loads_covering_each_rank() -> None:
    big, small, mid = "phi3:mini", "smollm:360m", "qwen2.5:0.5b"
    jobs = [_high(0, big), _high(1, big), _high(2, small), _high(3, mid), _high(4, mid, "low")]
    wl = Workload("t", "t", "t", jobs)
    bound = high_p95_bound(wl, time_scale=1.0, num_parallel=1)
    assert bound is not None
    # 4 high jobs: pct() = 0.15 x the 3rd smallest + 0.85 x the 4th; {big, small} or
    # {big, mid} hold 3 of them, only all three models hold 4
    h = {j.idx: generate_seconds(j.model, j.text) for j in jobs}
    l_big, l_small, l_mid = load_seconds(big), load_seconds(small), load_seconds(mid)
    third = min(
        (l_big + l_small + min(h[0], h[1], h[2]), [big, small]),
        (l_big + l_mid + min(h[0], h[1], h[3]), sorted([big, mid])),
    )
    fourth = l_big + l_small + l_mid + min(h[0], h[1], h[2], h[3])
    assert bound["rank"] == 3 and bound["high_jobs"] == 4 and bound["models"] == third[1]
    assert bound["rank_s"] == pytest.approx(third[0])
    assert bound["next_s"] == pytest.approx(fourth)
    assert bound["p95_s"] == pytest.approx(0.15 * third[0] + 0.85 * fourth)
    scaled = high_p95_bound(wl, time_scale=0.1, num_parallel=1)
    assert scaled is not None and scaled["p95_s"] == pytest.approx(bound["p95_s"] * 0.1)
    no_high = Workload("t", "t", "t", jobs[4:])
    assert high_p95_bound(no_high, time_scale=1.0, num_parallel=1) is None
    late = Workload("t", "t", "t", [BenchJob(0, 1.0, big, "generate", "high", "x")])
    with pytest.raises(ValueError, match="t = 0"):
        high_p95_bound(late, time_scale=1.0, num_parallel=1)


def test_high_p95_bound_never_beats_a_load_order() -> None:
    """Every order of serial loads, each high job run the moment its model is loaded (the
    bound's relaxation): the p95 of the high latencies is never below the bound."""
    five = TEXT_MODELS[3:]
    wl = Workload("t", "t", "t", [j for j in mixed_burst(6, 1.0, 5).jobs if j.model in five])
    bound = high_p95_bound(wl, time_scale=1.0, num_parallel=1)
    assert bound is not None
    high = [j for j in wl.jobs if j.priority == "high"]
    models = sorted({j.model for j in high})
    best = float("inf")
    for order in itertools.permutations(models):
        ready, t = {}, 0.0
        for m in order:
            t += load_seconds(m)
            ready[m] = t
        p95 = pct([ready[j.model] + j.seconds(1.0) for j in high], 95)
        assert p95 is not None and p95 >= bound["p95_s"] - 1e-9, order
        best = min(best, p95)
    assert best <= 1.1 * bound["p95_s"]  # and it is close to the best order


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def tiny_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("driver", ["python", "wrk"])
def test_throughput_drivers_count_requests(tiny_server: str, driver: str) -> None:
    if driver == "wrk" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    result = drive(driver, tiny_server, "GET", ["/a", "/b"], None, 1.0, 2)
    assert result["driver"] == driver and result["requests"] > 0
    assert result["non_2xx"] == 0 and result["errors"] == 0 and result["per_s"] > 0
    assert 0 <= result["p50_ms"] <= result["p99_ms"]
