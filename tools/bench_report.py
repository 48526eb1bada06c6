"""The targets of the benchmark and the Markdown rendering of ``tools/bench.py``'s report."""

from __future__ import annotations

from typing import Any

from tools.bench_front import render_front

# (key, text, limit): each checked by `targets` below
TARGETS = (
    ("interleaved_makespan", "interleaved: managed makespan <= 1.2x lower bound", 1.2),
    ("interleaved_loads", "interleaved: managed loads <= 1.1x distinct models", 1.1),
    ("priority_p95", "priority mix: managed p95 high <= 0.2x p95 low", 0.2),
    ("pressure_failed", "outside pressure: managed failed jobs = 0", 0),
    ("pressure_ooms", "outside pressure: managed OOMs (load OOMs + runner crashes) = 0", 0),
    ("warm_dispatch_p50", "warm: dispatch latency median <= 2 ms", 2.0),
    ("warm_dispatch_p99", "warm: dispatch latency p99 <= 10 ms", 10.0),
    ("warm_added", "warm: added latency per job, median <= 5 ms over direct", 5.0),
    ("service_submits", "service: submits/s >= 1,500", 1500.0),
    ("service_polls", "service: status polls/s >= 3,000", 3000.0),
    ("service_batch", "service: submit_batch jobs/s >= 20,000", 20000.0),
    ("service_tick", "service: scheduler tick p95 <= 5 ms with the pending jobs", 5.0),
    ("service_rss", "service: resident memory <= 300 MB with the pending jobs", 300.0),
    ("mixed_loads", "mixed burst: managed loads <= 1.5x distinct models", 1.5),
    ("mixed_makespan", "mixed burst: managed makespan <= 1.3x lower bound", 1.3),
    ("mixed_p95", "mixed burst: managed p95 high <= 0.4x p95 low", 0.4),
    ("stream_makespan", "short-job stream: managed makespan <= direct makespan", 1.0),
    (
        "stream_pressure_makespan",
        "short-job stream, outside pressure: managed makespan <= direct makespan",
        1.0,
    ),
    ("fleet_interleaved", "interleaved on two backends: makespan <= 0.6x on one", 0.6),
    ("fleet_mixed", "mixed burst on two backends: makespan <= 0.6x on one", 0.6),
    ("door_interleaved", "interleaved via the Ollama API: makespan <= 1.1x job API", 1.1),
    ("door_mixed", "mixed burst via the Ollama API: makespan <= 1.1x job API", 1.1),
    ("front_ttft", "Ollama API: added time to first token, p50 <= 5 ms", 5.0),
    ("front_throughput", "Ollama API: streamed tokens/s >= 0.95x direct", 0.95),
)


def _get(doc: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value and ``met`` (None where not measured)."""
    w, s = report["workloads"], report.get("service")
    values: dict[str, tuple[Any, bool]] = {  # key -> (value, higher_is_better)
        "interleaved_makespan": (_get(w, "interleaved", "ratios", "managed_over_lb"), False),
        "interleaved_loads": (
            _get(w, "interleaved", "ratios", "managed_loads_over_models"),
            False,
        ),
        "priority_p95": (_get(w, "priority", "ratios", "managed_p95_high_over_low"), False),
        "pressure_failed": (_get(w, "pressure", "managed", "failed"), False),
        "pressure_ooms": (_sum(_get(w, "pressure", "managed"), "ooms", "crashes"), False),
        "mixed_loads": (_get(w, "mixed", "ratios", "managed_loads_over_models"), False),
        "mixed_makespan": (_get(w, "mixed", "ratios", "managed_over_lb"), False),
        "mixed_p95": (_get(w, "mixed", "ratios", "managed_p95_high_over_low"), False),
        # a direct run stopped at its cap counts as the cap: the ratio is then an upper bound
        "stream_makespan": (
            _get(w, "stream", "ratios", "makespan_managed_over_direct"),
            False,
        ),
        "stream_pressure_makespan": (
            _get(w, "stream_pressure", "ratios", "makespan_managed_over_direct"),
            False,
        ),
        "warm_dispatch_p50": (_get(w, "warm", "managed", "dispatch_ms", "p50"), False),
        "warm_dispatch_p99": (_get(w, "warm", "managed", "dispatch_ms", "p99"), False),
        "warm_added": (_get(w, "warm", "ratios", "added_latency_ms", "p50"), False),
        "fleet_interleaved": (
            _get(report, "fleet", "interleaved", "makespan_two_over_one"),
            False,
        ),
        "fleet_mixed": (_get(report, "fleet", "mixed", "makespan_two_over_one"), False),
        "door_interleaved": (
            _get(report, "door", "interleaved", "makespan_ollama_over_job_api"),
            False,
        ),
        "door_mixed": (_get(report, "door", "mixed", "makespan_ollama_over_job_api"), False),
        "service_submits": (_get(s, "submit_per_s"), True),
        "service_polls": (_get(s, "poll_per_s"), True),
        "service_batch": (_get(s, "batch", "jobs_per_s"), True),
        "service_tick": (_get(s, "tick", "tick_p95_ms"), False),
        "service_rss": (_get(s, "rss_pending_mb"), False),
        "front_ttft": (_get(report, "front", "added_ttft_ms", "p50"), False),
        "front_throughput": (_get(report, "front", "throughput_managed_over_direct"), True),
    }
    out = []
    for key, text, limit in TARGETS:
        value, higher = values[key]
        met = None if value is None else (value >= limit if higher else value <= limit)
        out.append({"key": key, "target": text, "limit": limit, "value": value, "met": met})
    return out


def _sum(doc: dict[str, Any] | None, *keys: str) -> int | None:
    return None if doc is None else sum(int(doc.get(k) or 0) for k in keys)


# ------------------------------------------------------------------------------ render


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _prio(r: dict[str, Any]) -> str:
    p = r["latency_by_priority"]
    return " / ".join(_f(_get(p, k, "p95_s")) for k in ("high", "normal", "low"))


def _high_bound_brief(wl: dict[str, Any]) -> str:
    hb = wl.get("high_p95_bound")
    return f"; p95 high bound {_f(hb['p95_s'])} s" if hb else ""


def render(report: dict[str, Any]) -> str:
    m, st = report["machine"], report["settings"]
    lines = [
        "## Benchmark: Model Manager vs. direct Ollama",
        "",
        f"`{report['command']}` on {m['cores']} cores ({m['cpu']}), Python {m['python']}, "
        f"{m['system']}; simulator time scale {st['time_scale']}, {st['vram_mb']} MiB GPU, "
        f"{st['num_parallel']} parallel slot, {st['max_loaded_models']} loaded models at most, "
        f"VRAM read through {st['vram_source']}; seed {st['seed']}; "
        f"run took {_f(report.get('elapsed_s'), 0)} s.",
        "",
    ]
    if report["workloads"]:
        lines += [
            "| workload | mode | ok / failed / unfinished | makespan s | x lower bound "
            "| loads | OOMs / crashes | p50 s | p95 s | p95 high / normal / low s "
            "| dispatch p50 / p99 ms |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for wl in report["workloads"].values():
            lb = wl["lower_bound"]
            for mode in ("direct", "managed"):
                r = wl[mode]
                capped = r["capped"]
                span = f">= {_f(r['makespan_s'], 1)} (est. {_f(r['makespan_estimate_s'], 0)})"
                over = wl["ratios"][f"{mode}_over_lb"]
                name = (
                    f"{wl['title']} ({wl['jobs']} jobs, {wl['models']} models; "
                    f"lower bound {_f(lb['lb_s'], 2 if lb['lb_s'] < 10 else 1)} s, "
                    f"{lb['binding']}{_high_bound_brief(wl)})"
                    if mode == "direct"
                    else ""
                )
                lines.append(
                    f"| {name} | {mode} | {r['complete']} / {r['failed']} / {r['unfinished']} "
                    f"| {span if capped else _f(r['makespan_s'], 1)} "
                    f"| {'>= ' if capped else ''}{_f(over)} | {r['loads']} "
                    f"| {r['ooms']} / {r['crashes']} | {_f(r['latency_p50_s'])} "
                    f"| {_f(r['latency_p95_s'])} | {_prio(r)} "
                    f"| {_f(r['dispatch_ms']['p50'])} / {_f(r['dispatch_ms']['p99'])} |"
                )
        lines += ["", "| workload | managed / direct makespan | managed / direct p95 | other |"]
        lines.append("|---|---|---|---|")
        for wl in report["workloads"].values():
            ra = wl["ratios"]
            other = []
            for key in ("managed_p95_high_over_low", "direct_p95_high_over_low"):
                if key in ra:
                    other.append(f"{key.split('_')[0]} p95 high/low {_f(ra[key])}")
            hb = wl.get("high_p95_bound")
            if hb:
                other.append(
                    f"p95 high bound / lower bound {_f(hb['over_lb'])}; p95 high / bound "
                    f"managed {_f(hb['managed_over_bound'])}, direct {_f(hb['direct_over_bound'])}"
                )
            if "added_latency_ms" in ra:
                other.append(f"added latency p50 {_f(ra['added_latency_ms']['p50'])} ms")
            other.append(
                f"loads/models managed {_f(ra['managed_loads_over_models'])}, "
                f"direct {_f(ra['direct_loads_over_models'])}"
            )
            le = "<= " if ra["direct_capped"] else ""
            lines.append(
                f"| {wl['title']} | {le}{_f(ra['makespan_managed_over_direct'])} "
                f"| {_f(ra['p95_managed_over_direct'])} | {'; '.join(other)} |"
            )
        lines.append("")
    fleet = report.get("fleet")
    if fleet:
        lines += [
            "Two backends against one (managed; two simulated 8 GiB GPUs, one Ollama each):",
            "",
            "| workload | makespan s one / two | two / one | loads one / two "
            "| OOMs / crashes two | p95 high / normal / low s two |",
            "|---|---|---|---|---|---|",
        ]
        for f in fleet.values():
            one, two = f["one"], f["two"]
            lines.append(
                f"| {f['title']} ({f['jobs']} jobs, {f['models']} models) "
                f"| {_f(one['makespan_s'], 1)} / {_f(two['makespan_s'], 1)} "
                f"| {_f(f['makespan_two_over_one'])} | {one['loads']} / {two['loads']} "
                f"| {two['ooms']} / {two['crashes']} | {_prio(two)} |"
            )
        lines.append("")
    door = report.get("door")
    if door:
        lines += [
            "Through the Ollama API (the ollama client, X-Priority) against the job API:",
            "",
            "| workload | makespan s job API / Ollama API | Ollama / job API | loads "
            "| failed | p95 high / normal / low s, job API | Ollama API |",
            "|---|---|---|---|---|---|---|",
        ]
        for d in door.values():
            one, two = d["job_api"], d["ollama_api"]
            lines.append(
                f"| {d['title']} ({d['jobs']} jobs, {d['models']} models) "
                f"| {_f(one['makespan_s'], 1)} / {_f(two['makespan_s'], 1)} "
                f"| {_f(d['makespan_ollama_over_job_api'])} | {one['loads']} / {two['loads']} "
                f"| {one['failed']} / {two['failed']} | {_prio(one)} | {_prio(two)} |"
            )
        lines.append("")
    s = report.get("service")
    if s:
        full, normal = s["sync_full"], s["sync_normal"]
        flask = s["ceilings"]["flask"]["per_s"]
        lines += [
            f"Service alone ({s['driver']} driver, {s['connections']} connections, median of "
            f"{s['rounds']} rounds of {_f(s['seconds'], 0)} s per figure). Baselines with the "
            "same driver in the same "
            f"run: the service's GET /api/health; a bare Flask hello on waitress "
            f"{_f(flask, 0)} req/s; a raw WSGI callable on waitress "
            f"{_f(s['ceilings']['wsgi']['per_s'], 0)} req/s.",
            "",
            "| figure | value | GET /api/health | / health | / Flask hello |",
            "|---|---|---|---|---|",
            f"| submits/s (synchronous=FULL) | {_f(full['submit']['per_s'], 0)} "
            f"| {_f(full['health']['per_s'], 0)} | {_f(s['submit_vs_health'])} "
            f"| {_f(s['submit_vs_flask_hello'])} |",
            f"| submits/s (synchronous=NORMAL) | {_f(normal['submit']['per_s'], 0)} "
            f"| {_f(normal['health']['per_s'], 0)} "
            f"| {_f(normal['submit']['per_s'] / normal['health']['per_s'])} "
            f"| {_f(normal['submit']['per_s'] / flask)} |",
            f"| status polls/s | {_f(s['poll']['per_s'], 0)} "
            f"| {_f(full['health']['per_s'], 0)} | {_f(s['poll_vs_health'])} "
            f"| {_f(s['poll_vs_flask_hello'])} |",
            f"| submit_batch jobs/s ({s['batch']['jobs_per_request']:,} per request) "
            f"| {_f(s['batch']['jobs_per_s'], 0)} | | | |",
            f"| scheduler tick p50 / p95 / max ms ({s['tick']['pending']:,} pending) "
            f"| {_f(s['tick']['tick_p50_ms'])} / {_f(s['tick']['tick_p95_ms'])} "
            f"/ {_f(s['tick']['tick_max_ms'])} | | | |",
            f"| resident memory MB: idle / {s['pending_for_rss']:,} pending / peak "
            f"| {_f(s['rss_idle_mb'], 0)} / {_f(s['rss_pending_mb'], 0)} "
            f"/ {_f(s['rss_peak_mb'], 0)} | | | |",
            "",
            f"SQLite: NORMAL / FULL submits/s = {_f(s['normal_over_full_submits'])}; one "
            "single-job submit transaction costs "
            f"{_f(s['tick']['sqlite_commit_us']['FULL'], 0)} us with FULL, "
            f"{_f(s['tick']['sqlite_commit_us']['NORMAL'], 0)} us with NORMAL (in process). "
            f"Default: {st['sqlite_synchronous_default']} (an accepted job survives power "
            "loss, not only a crash).",
            "",
        ]
    if report.get("front"):
        lines += render_front(report["front"])
    lines += ["| target | measured | met |", "|---|---|---|"]
    for t in report.get("targets", []):
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {_f(t['value'])} | {met} |")
    return "\n".join(lines)
