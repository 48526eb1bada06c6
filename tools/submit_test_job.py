"""Submit test jobs to Model Manager and wait for their results (through
:mod:`modelmanager.client`).

    .venv/bin/python tools/submit_test_job.py                 # one job
    .venv/bin/python tools/submit_test_job.py --batch         # 4 predefined jobs
    .venv/bin/python tools/submit_test_job.py --random 50     # 50 random jobs over the catalog
    .venv/bin/python tools/submit_test_job.py --spam 100      # submit only, no waiting
    .venv/bin/python tools/submit_test_job.py --random 50 --delay 0.5 --no-check
    options: --url localhost:5001 --api-key KEY --model NAME --priority high|normal|low

Exit status: 0 when every job completed (or, with --spam / --no-check, was submitted),
1 if any failed, was refused or did not finish in time, 2 for a bad argument (or an API
key the service refuses), 3 if the service could not be reached.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if not __package__:  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modelmanager.client import ClientError, Job, ModelManagerClient, Unreachable

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
WAIT_SECONDS = 10.0  # the longest wait for one job before the progress line is printed

ALL_COMPLETE, SOME_FAILED, BAD_ARGUMENTS, UNREACHABLE = 0, 1, 2, 3
EPILOG = """\
exit status: 0 every job completed (with --spam or --no-check: was submitted), 1 some
failed, were refused or did not finish within --timeout, 2 bad arguments (or an API key
the service refuses), 3 the service could not be reached.
"""


def service_url(text: str) -> str:
    """``--url``: a base URL; ``host:port`` without a scheme means http://host:port."""
    url = text.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected host:port or http://host:port, got {text!r}")
    return url


def at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    port = os.environ.get("MM_HTTP_PORT") or "5001"
    p = argparse.ArgumentParser(
        prog="submit_test_job.py",
        description="Submit test jobs to Model Manager and wait for their results.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--url",
        type=service_url,
        default=f"http://localhost:{port}",
        help="Model Manager's address, host:port or a URL (default http://localhost:5001; "
        "the port from env MM_HTTP_PORT if set)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("MM_API_KEY") or None,
        metavar="KEY",
        help="the service's API key, sent as 'Authorization: Bearer KEY' (default none; "
        "env MM_API_KEY)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--batch", action="store_true", help="submit 4 predefined jobs")
    mode.add_argument(
        "--random", type=at_least_one, metavar="N", help="submit N random jobs (N >= 1)"
    )
    mode.add_argument(
        "--spam", type=at_least_one, metavar="N", help="submit N jobs without waiting (N >= 1)"
    )
    p.add_argument(
        "--delay",
        type=non_negative,
        default=0.0,
        metavar="S",
        help="seconds between submissions (default 0)",
    )
    p.add_argument("--no-check", action="store_true", help="do not wait for results")
    p.add_argument("--model", help="use this model for every job (default: random per job)")
    p.add_argument(
        "--priority",
        choices=PRIORITIES,
        help="use this priority for every job (default: random per job)",
    )
    p.add_argument(
        "--timeout",
        type=non_negative,
        default=600.0,
        metavar="S",
        help="seconds to wait for results (default 600)",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="random seed, for repeatable runs (default none)"
    )
    return p.parse_args(argv)


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


def wait_all(client: ModelManagerClient, ids: dict[str, str], timeout: float) -> dict[str, Job]:
    """Wait for every job until all are finished or ``timeout`` passes; print progress.

    One job at a time through :meth:`ModelManagerClient.wait`, which long-polls
    ``GET /api/job/<id>?wait=S``: the service answers as soon as that job is finished
    (at once if it already is), so nothing is polled in a loop.
    """
    final: dict[str, Job] = {}
    unfinished = list(ids)
    deadline = time.monotonic() + timeout
    last_line = ""
    while unfinished and (left := deadline - time.monotonic()) > 0:
        job_id = unfinished[0]
        try:
            job = client.wait(job_id, timeout=min(WAIT_SECONDS, left))
        except Unreachable:
            raise
        except ClientError as exc:
            if exc.status != 404:
                raise
            print(f"  job {job_id} is no longer stored", flush=True)  # RESULT_TTL
            unfinished.pop(0)
            continue
        if job.finished:
            final[job_id] = job
            unfinished.pop(0)
        states = Counter(b.status for b in final.values())
        line = " ".join(f"{k}={states[k]}" for k in sorted(states))
        line += f" waiting={len(unfinished)}" if unfinished else ""
        if line != last_line:
            print(f"  [{len(final)}/{len(ids)}] {line}", flush=True)
            last_line = line
    return final


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    url = args.url
    rng = random.Random(args.seed)
    client = ModelManagerClient(url, api_key=args.api_key, timeout=30.0)

    auth = 200
    try:
        client.health()
        # health needs no key; stats does: a refused key stops here, not at every submit
        client.stats()
    except Unreachable as exc:
        cause = exc.__cause__.__class__.__name__ if exc.__cause__ else "no answer"
        print(f"error: Model Manager is not reachable at {url} ({cause}).", file=sys.stderr)
        print("Start it with: .venv/bin/python main.py --simulate", file=sys.stderr)
        return UNREACHABLE
    except ClientError as exc:
        auth = exc.status or 0
        if auth != 401:
            print(f"error: {url} answered {auth}: {exc.message}", file=sys.stderr)
            return UNREACHABLE
    if auth == 401:
        given = "the API key given was refused" if args.api_key else "it needs an API key"
        print(
            f"error: {url} answered 401: {given}; pass --api-key KEY or set MM_API_KEY.",
            file=sys.stderr,
        )
        return BAD_ARGUMENTS

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
            ids[client.submit(job)] = job["model"]
        except ClientError as exc:
            what = f"submit refused ({exc.status}): {exc.message}" if exc.status else exc.message
            print(f"error: job {i + 1}: {what}", file=sys.stderr)
        if args.delay and i + 1 < len(jobs):
            time.sleep(args.delay)
    print(f"submitted {len(ids)}/{len(jobs)} job(s) in {time.monotonic() - started:.2f}s")
    if args.spam or args.no_check:
        return ALL_COMPLETE if len(ids) == len(jobs) else SOME_FAILED

    try:
        final = wait_all(client, ids, args.timeout)
    except ClientError as exc:
        print(f"error: lost Model Manager at {url} while waiting ({exc.message}).", file=sys.stderr)
        return UNREACHABLE
    elapsed = time.monotonic() - started
    statuses = Counter(job.status for job in final.values())
    per_model: dict[str, Counter[str]] = {}
    for job_id, model in ids.items():
        done = final.get(job_id)
        per_model.setdefault(model, Counter())[done.status if done else "unfinished"] += 1
    if len(jobs) == 1 and final:
        only = next(iter(final.values()))
        print(f"result: {str(only.result)[:200]}")
        if only.error:
            print(f"error: {only.error}")
    print(
        f"\nsummary: {statuses.get('complete', 0)} complete, {statuses.get('failed', 0)} failed, "
        f"{len(ids) - len(final)} unfinished of {len(ids)} in {elapsed:.1f}s"
    )
    for model in sorted(per_model):
        counts = ", ".join(f"{k} {v}" for k, v in sorted(per_model[model].items()))
        print(f"  {model:28s} {counts}")
    for done in final.values():
        if done.status == "failed":
            print(f"  failed {done.job_id} ({done.model}): {done.error}")
    ok = len(final) == len(ids) == len(jobs) and statuses.get("complete", 0) == len(ids)
    client.close()
    return ALL_COMPLETE if ok else SOME_FAILED


if __name__ == "__main__":
    sys.exit(main())
