"""Submit test jobs to Model Manager and wait for their results.

    python3 tools/submit_test_job.py                 # one job
    python3 tools/submit_test_job.py --batch         # 4 predefined jobs
    python3 tools/submit_test_job.py --random 50     # 50 random jobs over the catalog
    python3 tools/submit_test_job.py --spam 100      # submit only, no waiting
    python3 tools/submit_test_job.py --random 50 --delay 0.5 --no-check
    options: --url http://localhost:5001 --model NAME --priority high|normal|low

Exit status: 0 when every job completed (or was only submitted), 1 if any failed, 2 if the
service could not be reached.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from typing import Any

import requests

TEXT_MODELS = [
    "smollm:360m",
    "qwen2.5:0.5b",
    "tinyllama:1.1b",
    "smollm:1.7b",
    "llama3.2:1b",
    "gemma:2b",
    "qwen2.5:1.5b",
    "phi3:mini",
]
EMBED_MODELS = ["all-minilm:latest", "nomic-embed-text:latest"]
PROMPTS = [
    "Explain what a GPU does in one sentence.",
    "List three uses of a scheduler.",
    "Summarise the benefits of batching model requests.",
    "Write a haiku about VRAM.",
    "What is the capital of France?",
    "Describe a manufacturing quality check.",
]
PRIORITIES = ["high", "normal", "low"]
TERMINAL = {"complete", "failed", "cancelled"}


def predefined_batch() -> list[dict[str, Any]]:
    return [
        {"model": "qwen2.5:0.5b", "prompt": "Say hello.", "priority": "high"},
        {"model": "llama3.2:1b", "prompt": "Name a colour.", "priority": "normal"},
        {"model": "nomic-embed-text:latest", "input": "an embedding test", "priority": "normal"},
        {"model": "phi3:mini", "prompt": "Count to three.", "priority": "low"},
    ]


def random_job(rng: random.Random, model: str | None, priority: str | None) -> dict[str, Any]:
    chosen = model or rng.choice(TEXT_MODELS + EMBED_MODELS)
    job: dict[str, Any] = {"model": chosen, "priority": priority or rng.choice(PRIORITIES)}
    if chosen in EMBED_MODELS:
        job["input"] = rng.choice(PROMPTS)
    else:
        job["prompt"] = rng.choice(PROMPTS)
    job["metadata"] = {"source": "submit_test_job"}
    return job


def submit(session: requests.Session, url: str, job: dict[str, Any]) -> str:
    r = session.post(f"{url}/api/submit", json=job, timeout=30)
    if r.status_code != 200:
        raise RuntimeError(f"submit refused ({r.status_code}): {r.text.strip()}")
    return str(r.json()["job_id"])


def wait_all(
    session: requests.Session, url: str, ids: dict[str, str], timeout: float
) -> dict[str, dict[str, Any]]:
    """Poll every job until all are finished or ``timeout`` passes; print progress."""
    final: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    last_line = ""
    while len(final) < len(ids) and time.monotonic() < deadline:
        states: Counter[str] = Counter()
        for job_id in ids:
            if job_id in final:
                states[final[job_id]["status"]] += 1
                continue
            body = session.get(f"{url}/api/job/{job_id}", timeout=30).json()
            states[body["status"]] += 1
            if body["status"] in TERMINAL:
                final[job_id] = body
        line = " ".join(f"{k}={states[k]}" for k in sorted(states))
        if line != last_line:
            print(f"  [{len(final)}/{len(ids)}] {line}", flush=True)
            last_line = line
        if len(final) < len(ids):
            time.sleep(0.5)  # polling interval for a human-facing tool
    return final


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Submit test jobs to Model Manager")
    p.add_argument("--url", default="http://localhost:5001", help="Model Manager URL")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--batch", action="store_true", help="submit 4 predefined jobs")
    mode.add_argument("--random", type=int, metavar="N", help="submit N random jobs")
    mode.add_argument("--spam", type=int, metavar="N", help="submit N jobs without waiting")
    p.add_argument("--delay", type=float, default=0.0, help="seconds between submissions")
    p.add_argument("--no-check", action="store_true", help="do not wait for results")
    p.add_argument("--model", help="use this model for every job")
    p.add_argument("--priority", choices=PRIORITIES, help="use this priority for every job")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for results")
    p.add_argument("--seed", type=int, default=None, help="random seed (repeatable runs)")
    args = p.parse_args(argv)
    url = args.url.rstrip("/")
    rng = random.Random(args.seed)
    session = requests.Session()

    try:
        session.get(f"{url}/api/health", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        print(
            f"error: Model Manager is not reachable at {url} ({exc.__class__.__name__}).",
            file=sys.stderr,
        )
        print("Start it with: python3 main.py --simulate", file=sys.stderr)
        return 2

    if args.batch:
        jobs = predefined_batch()
    else:
        count = args.random or args.spam or 1
        jobs = [random_job(rng, args.model, args.priority) for _ in range(count)]
    if args.model and args.batch:
        for job in jobs:
            job["model"] = args.model
    if args.priority:
        for job in jobs:
            job["priority"] = args.priority

    started = time.monotonic()
    ids: dict[str, str] = {}
    for i, job in enumerate(jobs):
        try:
            ids[submit(session, url, job)] = job["model"]
        except (RuntimeError, requests.RequestException) as exc:
            print(f"error: job {i + 1}: {exc}", file=sys.stderr)
        if args.delay and i + 1 < len(jobs):
            time.sleep(args.delay)
    print(f"submitted {len(ids)}/{len(jobs)} job(s) in {time.monotonic() - started:.2f}s")
    if args.spam or args.no_check:
        return 0 if len(ids) == len(jobs) else 1

    final = wait_all(session, url, ids, args.timeout)
    elapsed = time.monotonic() - started
    statuses = Counter(body["status"] for body in final.values())
    per_model: dict[str, Counter[str]] = {}
    for job_id, model in ids.items():
        status = final.get(job_id, {}).get("status", "unfinished")
        per_model.setdefault(model, Counter())[status] += 1
    if len(jobs) == 1 and final:
        body = next(iter(final.values()))
        print(f"result: {str(body.get('result'))[:200]}")
        if body.get("error"):
            print(f"error: {body['error']}")
    print(
        f"\nsummary: {statuses.get('complete', 0)} complete, {statuses.get('failed', 0)} failed, "
        f"{len(ids) - len(final)} unfinished of {len(ids)} in {elapsed:.1f}s"
    )
    for model in sorted(per_model):
        counts = ", ".join(f"{k} {v}" for k, v in sorted(per_model[model].items()))
        print(f"  {model:28s} {counts}")
    for body in final.values():
        if body["status"] == "failed":
            print(f"  failed {body['job_id']} ({body['model']}): {body.get('error')}")
    ok = len(final) == len(ids) == len(jobs) and statuses.get("complete", 0) == len(ids)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
