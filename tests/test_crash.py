"""Nothing is lost when the service dies: SIGKILL at random moments, restart, check the store.

The service and the Ollama simulator run as real subprocesses (``tests/procs.py``); the
service reads the simulator's GPU through the fake NVML library. The simulator is
deterministic (same model and prompt, same answer), which is how results are checked.
Kill moments come from a seeded ``random.Random``: ``MM_CRASH_SEED=<n>`` replays a run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import requests

from tests.conftest import wait_until
from tests.procs import (
    TERMINAL,
    ServiceProcess,
    SimProcess,
    integrity_check,
    read_jobs,
    services_fixture,
    sim_fixture,
)

SEED = int(os.environ.get("MM_CRASH_SEED", "1123"))
MODELS = ("qwen2.5:0.5b", "llama3.2:1b", "smollm:360m")
PROMPTS = 40  # distinct prompts per model: many jobs share an answer to compare
KILLS = 5
BATCH = 120  # jobs per round through submit_batch, on top of the single submits
SINGLES = 200  # single submits by the client thread across all rounds
MAX_ATTEMPTS = 3  # the default, stated so the checks below can rely on it


sim = sim_fixture("--num-parallel", "2")
services = services_fixture()


def job_body(rng: random.Random) -> dict[str, Any]:
    return {"model": rng.choice(MODELS), "prompt": f"crash prompt {rng.randrange(PROMPTS)}"}


class Submitter(threading.Thread):
    """A client that submits one job at a time in a loop, through kills and restarts.

    ``acked`` holds every job id answered 200 (with what was submitted); ``unanswered``
    counts submits that got no answer at all (the service was dead or died meanwhile).
    With ``keys``, every submit carries an idempotency key and one that got no answer is
    sent again with the same key, so each logical submit must end as exactly one job.
    """

    def __init__(self, url: str, seed: int, limit: int, *, keys: bool = False) -> None:
        super().__init__(name="submitter", daemon=True)
        self.url = url
        self.rng = random.Random(seed)
        self.limit = limit
        self.keys = keys
        self.stop = threading.Event()
        self.acked: dict[str, dict[str, Any]] = {}
        self.unanswered = 0
        self.rejected: Counter[int] = Counter()
        # with keys: a submit that got no answer, to send again (it may be stored already)
        self.unsent: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def acked_ids(self) -> set[str]:
        with self._lock:
            return set(self.acked)

    def acked_at_least(self, n: int) -> bool:
        with self._lock:
            return len(self.acked) >= n

    def run(self) -> None:
        session = requests.Session()
        n = 0
        try:
            while not self.stop.is_set() and len(self.acked) < self.limit:
                body = self.unsent or job_body(self.rng)
                if self.keys and self.unsent is None:
                    n += 1
                    body["idempotency_key"] = f"submitter-{n}"
                try:
                    r = session.post(f"{self.url}/api/submit", json=body, timeout=10)
                except requests.RequestException:
                    self.unanswered += 1
                    self.unsent = body if self.keys else None
                    session.close()
                    session = requests.Session()
                    self.stop.wait(0.02)  # the service is down: try again shortly
                    continue
                self.unsent = None
                if r.status_code == 200:
                    with self._lock:
                        job_id = str(r.json()["job_id"])
                        assert job_id not in self.acked, f"two submits answered {job_id}"
                        self.acked[job_id] = body
                else:
                    self.rejected[r.status_code] += 1
                self.stop.wait(0.01)  # pace: a steady trickle, not a flood
        finally:
            session.close()


def has(svc: ServiceProcess, job_id: str, status: str, attempts: int) -> bool:
    body = svc.job(job_id)
    if body["status"] in TERMINAL and body["status"] != status:
        raise AssertionError(f"job {job_id} ended {body['status']}, expected {status}: {body}")
    return bool(body["status"] == status and body["attempts"] == attempts)


def check_acked_stored(db: Path, acked: set[str]) -> dict[str, dict[str, Any]]:
    rows = read_jobs(db)
    lost = acked - rows.keys()
    assert not lost, f"{len(lost)} acknowledged job(s) missing from the store: {sorted(lost)[:5]}"
    return rows


def test_crash_sigkill_rounds_lose_nothing_and_complete_once(
    sim: SimProcess, services: Callable[..., ServiceProcess]
) -> None:
    rng = random.Random(SEED)
    svc = services(MAX_ATTEMPTS=MAX_ATTEMPTS).start()
    assert svc.health()["vram_source"] == "nvml"  # the simulator's GPU, via fake NVML
    submitter = Submitter(svc.url, SEED + 1, SINGLES, keys=True)
    submitted: dict[str, dict[str, Any]] = {}  # every acked id -> its body
    complete_at_kill: dict[str, tuple[Any, ...]] = {}
    kill_log: list[str] = []
    submitter.start()
    try:
        for round_no in range(KILLS):
            if round_no:
                svc.start()
            batch = [job_body(rng) for _ in range(BATCH)]
            submitted.update(zip(svc.submit_batch(batch), batch, strict=True))
            counts = svc.by_status()
            done = counts.get("complete", 0) + counts.get("failed", 0)
            unfinished = sum(counts.values()) - done
            # 0 kills while the batch is being claimed and its models load
            target = done + rng.randint(0, unfinished * 3 // 4)

            def reached(target: int = target) -> dict[str, int] | None:
                now = svc.by_status()
                return now if now.get("complete", 0) + now.get("failed", 0) >= target else None

            at_kill = wait_until(reached, 30, what=f"round {round_no}: {target} jobs finished")
            svc.sigkill()
            kill_log.append(f"round {round_no}: killed at {at_kill}")

            assert integrity_check(svc.db_path) == "ok"
            rows = check_acked_stored(svc.db_path, set(submitted) | submitter.acked_ids())
            for job_id, row in rows.items():
                if row["status"] == "complete":
                    snap = (row["result"], row["completed_at"], row["attempts"])
                    assert complete_at_kill.setdefault(job_id, snap) == snap, (
                        f"job {job_id} completed again after a crash: {snap}"
                    )

        svc.start()
        # a submit the last kill left unanswered may be stored: let its resend be answered
        wait_until(lambda: submitter.unsent is None, 15, what="the unanswered submit resent")
        submitter.stop.set()
        submitter.join(15)
        assert not submitter.is_alive()
        submitted.update(submitter.acked)
        final = svc.wait_idle(40)
        print(f"seed {SEED}; " + "; ".join(kill_log) + f"; final {final}")
        svc.signal(signal.SIGTERM)  # a clean stop with nothing running exits 0
        assert svc.wait(20) == 0, svc.tail()
    finally:
        submitter.stop.set()

    assert integrity_check(svc.db_path) == "ok"
    rows = check_acked_stored(svc.db_path, set(submitted))
    assert sum(submitter.rejected.values()) == 0, f"submits refused: {submitter.rejected}"
    # a submit whose answer a kill swallowed was sent again with its idempotency key:
    # the store holds exactly the acknowledged jobs, one per logical submit
    assert rows.keys() == submitted.keys(), f"unacknowledged rows: {rows.keys() - submitted}"
    keys = [body["idempotency_key"] for body in submitter.acked.values()]
    assert len(set(keys)) == len(keys), "one idempotency key acknowledged as two jobs"

    answers: dict[tuple[str, str], set[str]] = defaultdict(set)
    for job_id, row in rows.items():
        assert row["status"] in TERMINAL, (job_id, row["status"])
        if row["status"] == "failed":
            # only a job running at MAX_ATTEMPTS crashes may fail, and it says why
            assert row["error_code"] == "WORKER_LOST" and row["error"], row
            assert row["attempts"] >= MAX_ATTEMPTS, row
            continue
        assert row["status"] == "complete", row
        text = json.loads(row["result"])["text"]
        assert isinstance(text, str) and text, row
        assert row["attempts"] >= 1 and row["completed_at"] >= row["started_at"], row
        prompt = json.loads(row["payload"])["prompt"]
        answers[(row["model"], prompt)].add(text)
    # completed before a crash => never run or written again afterwards
    for job_id, snap in complete_at_kill.items():
        row = rows[job_id]
        assert (row["result"], row["completed_at"], row["attempts"]) == snap, job_id
    # results intact: one answer per (model, prompt), and it is the simulator's
    mixed = {key: texts for key, texts in answers.items() if len(texts) != 1}
    assert not mixed, f"different results for the same model and prompt: {mixed}"
    for (model, prompt), texts in answers.items():
        assert texts == {sim.generate(model, prompt)}, (model, prompt)
    # the kills did hit running work (else this test proved little)
    assert any(row["attempts"] >= 2 for row in rows.values()), kill_log
    assert submitter.unanswered > 0, "the client never saw the service down"
    n_failed = sum(row["status"] == "failed" for row in rows.values())
    print(
        f"{len(rows)} jobs, {n_failed} failed after {MAX_ATTEMPTS} crashes,"
        f" {submitter.unanswered} submits unanswered and sent again"
    )


def test_crash_acked_submits_survive_sigkill(
    sim: SimProcess, services: Callable[..., ServiceProcess]
) -> None:
    """Every submit answered 200 is in the store after a kill -9 that lands mid-submits."""
    rng = random.Random(SEED + 2)
    svc = services().start()
    submitter = Submitter(svc.url, SEED + 3, 10_000)
    submitter.start()
    try:
        for round_no in range(3):
            if round_no:
                svc.start()
            seen = len(submitter.acked_ids())
            want = seen + rng.randint(5, 30)
            wait_until(partial(submitter.acked_at_least, want), 20, what=f"{want} submits acked")
            svc.sigkill()
            acked = submitter.acked_ids()  # the dead process can ack nothing more
            check_acked_stored(svc.db_path, acked)
        svc.start()
        submitter.stop.set()
        submitter.join(15)
        acked = submitter.acked_ids()
        svc.wait_idle(30)
        for job_id in acked:
            body = svc.job(job_id)
            # a job running at all three kills has used its attempts up (MAX_ATTEMPTS 3)
            assert body["status"] == "complete" or body["error_code"] == "WORKER_LOST", body
    finally:
        submitter.stop.set()


def test_crash_batch_submit_is_all_or_nothing_across_sigkill(
    services: Callable[..., ServiceProcess],
) -> None:
    """A kill that lands while a big batch is being accepted leaves all of it or none."""
    rng = random.Random(SEED + 4)
    svc = services(QUEUE_MAX_SIZE=100_000).start()
    size = 3000
    outcomes: list[str] = []
    for attempt in range(3):
        jobs = [{"model": MODELS[0], "prompt": f"batch {attempt} job {i}"} for i in range(size)]
        answers: list[int] = []

        def send(jobs: list[dict[str, Any]] = jobs, answers: list[int] = answers) -> None:
            try:
                r = requests.post(f"{svc.url}/api/submit_batch", json={"jobs": jobs}, timeout=30)
                answers.append(r.status_code)
            except requests.RequestException:
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        # a random moment while the batch is parsed, validated and inserted
        threading.Event().wait(rng.uniform(0.0, 0.4))
        svc.sigkill()
        sender.join(10)
        rows = read_jobs(svc.db_path)
        stored = sum(
            json.loads(r["payload"])["prompt"].startswith(f"batch {attempt} ")
            for r in rows.values()
        )
        assert stored in (0, size), f"a killed batch left {stored} of {size} jobs"
        assert answers in ([], [200]), answers
        if answers:
            assert stored == size
        outcomes.append(f"{stored} stored, answer {answers or 'none'}")
        svc.start()
    print("; ".join(outcomes))


def test_crash_second_instance_on_same_data_dir_refuses_to_start(
    services: Callable[..., ServiceProcess],
) -> None:
    first = services().start()
    job_id = first.submit(model=MODELS[0], prompt="before the second instance")
    second = services("second")
    second.data_dir = first.data_dir
    second.argv = second.argv_for(0, first.data_dir)
    second.spawn()
    rc = second.wait(20)
    out = second.output()
    assert rc != 0, out
    assert "data directory" in out and str(first.data_dir) in out and "lock" in out, out
    assert "listening on" not in out, out
    # the first instance is untouched and keeps serving
    assert first.alive()
    later = first.submit(model=MODELS[0], prompt="after the second instance")
    wait_until(
        lambda: all(first.job(i)["status"] == "complete" for i in (job_id, later)),
        20,
        what="jobs of the first instance complete",
    )


def test_crash_poison_job_fails_after_max_attempts(
    sim: SimProcess, services: Callable[..., ServiceProcess]
) -> None:
    """A job the service dies on every time ends failed (WORKER_LOST); the rest complete."""
    svc = services(MAX_ATTEMPTS=2, MAX_CONCURRENT_PER_MODEL=1).start()
    model = MODELS[0]
    sim.gate(True)  # every generation holds: the poison job stays running until the kill
    poison = svc.submit(model=model, prompt="poison", priority="high")
    others = [svc.submit(model=model, prompt=f"bystander {i}") for i in range(4)]
    for attempt in (1, 2):
        wait_until(
            partial(has, svc, poison, "running", attempt), 20, what=f"poison running, try {attempt}"
        )
        svc.sigkill()
        rows = read_jobs(svc.db_path)
        assert (rows[poison]["status"], rows[poison]["attempts"]) == ("running", attempt)
        waiting = {(rows[i]["status"], rows[i]["attempts"]) for i in others}
        assert waiting <= {("pending", 0), ("queued", 0)}, waiting
        svc.start()
    body = svc.job(poison)
    assert body["status"] == "failed" and body["error_code"] == "WORKER_LOST", body
    assert body["attempts"] == 2 and "MAX_ATTEMPTS" in body["error"], body
    sim.gate(False)
    for job_id in others:
        wait_until(
            partial(has, svc, job_id, "complete", 1), 20, what=f"bystander {job_id} complete once"
        )
    assert svc.job(poison)["status"] == "failed"  # and it stays failed: no crash loop
