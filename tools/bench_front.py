"""Workload ``front``: streamed generation through the manager's Ollama API against the
simulator directly, on a warm model, in one run.

One client (a keep-alive connection to each server, as an Ollama client keeps) sends
the same streamed ``/api/generate`` requests (a fixed ``num_predict``,
so every answer has the same number of tokens) alternately straight to the simulator and
to Model Manager's Ollama API (``main.py``, default settings), one at a time, after both
paths are warm. Per request it measures the time to the first token (send to the first
NDJSON line that carries text) and the throughput in tokens per second from the send to
the final chunk. Alternating the two paths spreads the machine's noise over both; the
ratios are taken within the run:

- added time to first token: p50 managed minus p50 direct (target <= 5 ms);
- throughput: median managed over median direct (target >= 0.95).
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

from tools.bench_procs import BenchError, Procs, Service, Sim, pct, rnd

MODEL = "qwen2.5:0.5b"


class _Client:
    """One keep-alive connection to one server, as a program's Ollama client keeps."""

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.url = url
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def stream(self, prompt: str, tokens: int) -> tuple[float, float, int]:
        """One streamed generate: (seconds to the first token, seconds to the final
        chunk, tokens received)."""
        body = json.dumps(
            {"model": MODEL, "prompt": prompt, "options": {"num_predict": tokens}}
        ).encode()
        headers = {"Content-Type": "application/json"}
        sent = time.perf_counter()
        self.conn.request("POST", "/api/generate", body=body, headers=headers)
        resp = self.conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"{self.url}/api/generate: {resp.status} {resp.read()[:200]!r}")
        first: float | None = None
        received = 0
        while True:
            line = resp.readline()
            if not line:
                raise BenchError(f"{self.url}/api/generate: the stream ended early")
            chunk = json.loads(line)
            if "error" in chunk:
                raise BenchError(f"{self.url}/api/generate: {chunk['error']}")
            if chunk.get("response"):
                received += 1
                if first is None:
                    first = time.perf_counter() - sent
            if chunk.get("done"):
                resp.read()  # the end of the chunked body: the connection is free again
                return first or 0.0, time.perf_counter() - sent, received

    def close(self) -> None:
        self.conn.close()


def _figures(runs: list[tuple[float, float, int]]) -> dict[str, Any]:
    ttft = [r[0] * 1000.0 for r in runs]
    rates = [r[2] / r[1] for r in runs if r[1] > 0]
    return {
        "n": len(runs),
        "ttft_ms": {"p50": rnd(pct(ttft, 50)), "p95": rnd(pct(ttft, 95))},
        "tokens": runs[0][2] if runs else 0,
        "tokens_per_s": {"p50": rnd(pct(rates, 50)), "p5": rnd(pct(rates, 5))},
    }


def measure_front(procs: Procs, *, vram_mb: int, time_scale: float, pairs: int) -> dict[str, Any]:
    """Run the workload: ``pairs`` requests each way, alternating, after a warm-up."""
    tokens = 64
    sim = Sim(procs, vram_mb=vram_mb, time_scale=time_scale)
    try:
        svc = Service(procs, sim)
        to_sim, to_svc = _Client(sim.url), _Client(svc.url)
        try:
            for i in range(3):  # loads the model, warms both paths' connections and code
                to_svc.stream(f"warm {i}", 8)
                to_sim.stream(f"warm {i}", 8)
            direct: list[tuple[float, float, int]] = []
            managed: list[tuple[float, float, int]] = []
            for i in range(pairs):
                prompt = f"Tell a short story, number {i}"
                pair = [(to_sim, direct), (to_svc, managed)]
                for client, out in pair if i % 2 == 0 else reversed(pair):
                    out.append(client.stream(prompt, tokens))
            jobs = svc.stats()["queue"]["by_status"]
        finally:
            to_sim.close()
            to_svc.close()
            svc.stop()
    finally:
        sim.stop()
    d, m = _figures(direct), _figures(managed)
    added = [(b[0] - a[0]) * 1000.0 for a, b in zip(direct, managed, strict=True)]
    return {
        "model": MODEL,
        "time_scale": time_scale,
        "num_predict": tokens,
        "direct": d,
        "managed": m,
        "managed_jobs": jobs,
        "added_ttft_ms": {
            "p50": rnd(m["ttft_ms"]["p50"] - d["ttft_ms"]["p50"]),
            "paired_p50": rnd(pct(added, 50)),
            "paired_p95": rnd(pct(added, 95)),
        },
        "throughput_managed_over_direct": rnd(m["tokens_per_s"]["p50"] / d["tokens_per_s"]["p50"]),
    }


def render_front(front: dict[str, Any]) -> list[str]:
    """The Markdown lines of the workload's figures."""
    d, m = front["direct"], front["managed"]

    def row(name: str, r: dict[str, Any]) -> str:
        return (
            f"| {name} | {r['n']} | {r['ttft_ms']['p50']} / {r['ttft_ms']['p95']} "
            f"| {r['tokens_per_s']['p50']} / {r['tokens_per_s']['p5']} |"
        )

    a = front["added_ttft_ms"]
    return [
        f"Ollama API, warm model ({front['model']}, {front['num_predict']} tokens per streamed "
        f"generate, time scale {front['time_scale']}, requests alternating between the paths):",
        "",
        "| path | requests | first token p50 / p95 ms | tokens/s p50 / p5 |",
        "|---|---|---|---|",
        row("simulator directly", d),
        row("through the manager", m),
        "",
        f"Added time to first token: p50 {a['p50']} ms (paired p50 {a['paired_p50']} ms, "
        f"p95 {a['paired_p95']} ms); throughput managed / direct "
        f"{front['throughput_managed_over_direct']}.",
        "",
    ]
