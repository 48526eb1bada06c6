"""Several Model Managers sharing one queue in a real PostgreSQL (``DATABASE_URL``).

Each instance is a real ``main.py`` process with a simulator of its own (its own host,
in effect), all on one database (:mod:`tests.pg`). Leases are short so that an instance
killed with SIGKILL gives its jobs back within about a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from tests.conftest import ROOT, wait_until
from tests.pg import fresh_url, pg_server  # noqa: F401 - pg_server is a fixture
from tests.procs import TERMINAL, ServiceProcess, SimProcess, clean_env
from tools import pg_throwaway

MODELS = ("qwen2.5:0.5b", "llama3.2:1b", "smollm:360m")
SETTINGS = {"LEASE_SECONDS": 1.5, "HEARTBEAT_SECONDS": 0.2, "MAX_ATTEMPTS": 10}


class Cluster:
    """``cluster(n, *sim_args, **settings)`` starts n instances, each with a simulator of
    its own, on one fresh database (``url``)."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp, self.url = tmp, url
        self.procs: list[Any] = []

    def __call__(self, n: int, *sim_args: str, **settings: Any) -> list[ServiceProcess]:
        out = []
        for i in range(n):
            home = self.tmp / f"host{i}"
            home.mkdir()
            sim = SimProcess(home, "--num-parallel", "2", *sim_args)
            self.procs.append(sim)
            sim.start()
            svc = ServiceProcess(
                home,
                sim,
                f"mm{i}",
                DATABASE_URL=self.url,
                INSTANCE_NAME=f"host{i}",
                **{**SETTINGS, **settings},
            )
            self.procs.append(svc)
            out.append(svc.start())
        return out


@pytest.fixture
def cluster(tmp_path: Path, pg_server: str) -> Iterator[Cluster]:  # noqa: F811
    """Instances on one database, all killed at teardown."""
    made = Cluster(tmp_path, fresh_url(pg_server))
    try:
        yield made
    finally:
        for proc in reversed(made.procs):
            proc.kill()


def instance_id(svc: ServiceProcess) -> str:
    """The id the instance goes by in the shared queue (a new one at every start)."""
    r = svc.session.get(f"{svc.url}/api/v1/instances", timeout=5)
    return str(next(i["id"] for i in r.json()["instances"] if i["self"]))


def rows(url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(url) as conn:
        cur = conn.execute("SELECT id, status, result, node, attempts, claimed_by FROM jobs")
        names = [d.name for d in cur.description or ()]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}


def generated(svc: ServiceProcess) -> int:
    """Generate requests the instance's own simulator (its host's Ollama) answered."""
    return int(svc.sim.stats()["requests_by_endpoint"].get("/api/generate", 0))


def finished(svc: ServiceProcess, ids: list[str]) -> dict[str, dict[str, Any]] | None:
    jobs = {i: svc.job(i) for i in ids}
    return jobs if all(j["status"] in TERMINAL for j in jobs.values()) else None


def test_instances_burst_on_one_is_polled_on_another_and_spread_over_all(
    cluster: Cluster,
) -> None:
    a, b = cluster(2)
    # six models: more than one instance holds at once (3 each), so both must load some
    models = (*MODELS, "tinyllama:1.1b", "gemma:2b", "qwen2.5:1.5b")
    jobs = [{"model": models[i % 6], "prompt": f"burst {i}"} for i in range(60)]
    ids = a.submit_batch(jobs)
    done = wait_until(lambda: finished(b, ids), timeout=60, interval=0.1, what="burst done")
    assert {j["status"] for j in done.values()} == {"complete"}
    assert all(j["result"] for j in done.values())
    # both hosts' simulators ran some of them
    assert generated(a) > 0 and generated(b) > 0
    # a model goes to the instance that claims it first: the models each loaded for the
    # burst are disjoint (a second copy comes only later, once an instance has no group
    # of its own left and a copy pays)
    first = [[e["model"] for e in svc.sim.stats()["load_events"]][:3] for svc in (a, b)]
    assert not set(first[0]) & set(first[1]), first
    assert sorted(set(first[0]) | set(first[1])) == sorted(models), first
    r = b.session.get(f"{b.url}/api/v1/instances", timeout=5)
    assert r.status_code == 200
    listed = r.json()
    assert listed["database"] == "postgresql"
    assert sorted(i["name"] for i in listed["instances"]) == ["host0", "host1"]
    assert [i["self"] for i in listed["instances"] if i["name"] == "host1"] == [True]
    assert all(i["nodes"] and i["lease_expires_at"] for i in listed["instances"])
    # both hosts call their Ollama "local": the second to start says to name them apart
    assert "node name(s) local also used by instance host0" in b.output(whole=True)


def test_instances_cancel_on_one_stops_a_job_running_on_another(cluster: Cluster) -> None:
    a, b = cluster(2)
    a.sim.gate(True)  # a's requests hang until the gate opens: the job stays running
    b.sim.gate(True)
    job_id = a.submit(model="qwen2.5:0.5b", prompt="long")
    wait_until(lambda: b.job(job_id)["status"] == "running", timeout=20, what="running")
    runner = a if a.sim.stats()["in_flight"] else b
    other = b if runner is a else a
    r = other.session.post(f"{other.url}/api/job/{job_id}/cancel", timeout=5)
    assert r.status_code == 200 and r.json()["was"] == "running"
    # the instance running it aborts its request at its backend
    wait_until(lambda: runner.sim.stats()["in_flight"] == 0, timeout=10, what="aborted")
    assert runner.job(job_id)["status"] == "cancelled"


def test_instances_kill_9_five_times_in_500_jobs_loses_nothing(cluster: Cluster) -> None:
    svcs = cluster(3)
    rng = random.Random(16)
    ids: list[str] = []
    for round_ in range(5):
        batch = [{"model": rng.choice(MODELS), "prompt": f"k{round_}-{i}"} for i in range(100)]
        ids += svcs[round_ % 2].submit_batch(batch)
        by_id = {instance_id(svc): svc for svc in svcs}

        def busy(by_id: dict[str, ServiceProcess] = by_id) -> list[ServiceProcess]:
            """The instances with a job running right now."""
            jobs = rows(cluster.url).values()
            running = {r["claimed_by"] for r in jobs if r["status"] == "running"}
            return [svc for i, svc in by_id.items() if i in running] if running else []

        # kill one that is running jobs, at a random moment of its work
        victim = rng.choice(wait_until(busy, timeout=20, what="jobs running"))
        victim.sigkill()
        victim.start()
    survivor = svcs[0]
    done = wait_until(lambda: finished(survivor, ids), timeout=90, interval=0.2, what="done")
    assert Counter(j["status"] for j in done.values()) == {"complete": 500}
    stored = rows(cluster.url)
    assert len(stored) == 500 and {r["status"] for r in stored.values()} == {"complete"}
    assert all(r["result"] for r in stored.values())  # each one's result, written once
    # the kills did interrupt work: some jobs ran again on another try
    retried = sum(1 for r in stored.values() if r["attempts"] > 1)
    assert retried > 0, Counter(r["attempts"] for r in stored.values())


def test_instances_priorities_hold_across_instances(cluster: Cluster) -> None:
    a, b = cluster(2)
    for svc in (a, b):
        svc.sim.gate(True)  # nothing finishes yet: the queue builds up on both
    low = a.submit_batch(
        [{"model": "qwen2.5:0.5b", "prompt": f"l{i}", "priority": "low"} for i in range(20)]
    )
    wait_until(lambda: any(b.job(i)["status"] == "running" for i in low), timeout=20)
    high = b.submit_batch(
        [{"model": "qwen2.5:0.5b", "prompt": f"h{i}", "priority": "high"} for i in range(10)]
    )
    for svc in (a, b):
        svc.sim.gate(False)
    done = wait_until(lambda: finished(a, low + high), timeout=60, interval=0.1)
    started = sorted(done.values(), key=lambda j: j["started_at"])
    # every high job started before the low jobs that were still waiting when it came
    first_high = min(done[i]["started_at"] for i in high)
    waiting_lows = [i for i in low if done[i]["started_at"] >= first_high]
    assert waiting_lows, "no low job was still waiting"
    last_high = max(done[i]["started_at"] for i in high)
    assert sum(1 for i in waiting_lows if done[i]["started_at"] < last_high) <= 4, started


def test_instances_with_sqlite_lists_this_one_alone(tmp_path: Path) -> None:
    sim = SimProcess(tmp_path).start()
    svc = ServiceProcess(tmp_path, sim, INSTANCE_NAME="solo")
    try:
        svc.start()
        r = svc.session.get(f"{svc.url}/api/v1/instances", timeout=5)
        assert r.status_code == 200
        [one] = r.json()["instances"]
        assert r.json()["database"] == "sqlite"
        assert (one["name"], one["self"], one["lease_expires_at"]) == ("solo", True, None)
        assert [n["name"] for n in one["nodes"]] == ["local"]
    finally:
        svc.kill()
        sim.kill()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://mm:secret@127.0.0.1:1/db", "cannot connect to the database"),
        ("mysql://mm@db/x", "DATABASE_URL must be a postgresql:// URL"),
        ("postgresql://mm:secret@127.0.0.1:99999/db", 'invalid port number: "99999"'),
        ("postgresql://mm:secret@[::1:5432/db", "cannot connect to the database"),
        ("postgresql://mm:secret@127.0.0.1:5432x/db", "cannot connect to the database"),
    ],
)
def test_instances_bad_or_unreachable_database_stops_startup_in_one_sentence(
    tmp_path: Path, url: str, says: str
) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--database-url", url, "--log-file", ""],
        cwd=tmp_path,
        env=clean_env({"MM_OLLAMA_BASE_URL": "http://127.0.0.1:1"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr and "secret" not in done.stderr


def test_instances_queue_max_size_and_idempotency_keys_hold_across_instances(
    cluster: Cluster,
) -> None:
    a, b = cluster(2, QUEUE_MAX_SIZE=10)
    for svc in (a, b):
        svc.sim.gate(True)  # nothing finishes: the jobs stay unfinished
    a.submit_batch([{"model": "qwen2.5:0.5b", "prompt": f"q{i}"} for i in range(8)])
    # some of them run (held by the gate) on one instance: b must count those too
    wait_until(lambda: a.by_status().get("running", 0) >= 2, timeout=20, what="running")

    def heartbeat_of(svc: ServiceProcess) -> float:
        r = svc.session.get(f"{svc.url}/api/v1/instances", timeout=5)
        return float(next(i["heartbeat_at"] for i in r.json()["instances"] if i["self"]))

    # b looks at the whole queue right after each heartbeat: once two more heartbeats
    # are stamped, one such look has ended since the submit
    stamp = heartbeat_of(b)
    for _ in range(2):
        stamp = wait_until(lambda s=stamp: (h := heartbeat_of(b)) > s and h, timeout=10)
    r = b.session.post(
        f"{b.url}/api/submit_batch",
        json={"jobs": [{"model": "qwen2.5:0.5b", "prompt": f"r{i}"} for i in range(3)]},
        timeout=10,
    )
    assert r.status_code == 429, r.text  # 8 unfinished + 3 > 10
    assert r.json()["error"]["code"] == "QUEUE_FULL"
    assert len(b.submit_batch([{"model": "qwen2.5:0.5b", "prompt": "fits"}] * 2)) == 2

    # one idempotency key sent to both instances at once makes one job
    for svc in (a, b):
        svc.sim.gate(False)
    a.wait_idle(30)
    answers: list[str] = []
    start = threading.Barrier(2)

    def send(svc: ServiceProcess) -> None:
        start.wait()
        answers.append(svc.submit(model="qwen2.5:0.5b", prompt="once", idempotency_key="k-1"))

    threads = [threading.Thread(target=send, args=(svc,)) for svc in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(answers) == 2 and answers[0] == answers[1]


@pytest.fixture
def own_pg() -> Iterator[Path]:
    """A PostgreSQL server of this test's own, which it may stop and start again."""
    try:
        url, root = pg_throwaway.start()
    except pg_throwaway.Unavailable as exc:
        pytest.skip(f"PostgreSQL restart test SKIPPED: no throwaway cluster: {exc}")
    (root / "url").write_text(url)
    try:
        yield root
    finally:
        pg_throwaway.stop(root)


def test_instances_ride_out_a_database_restart(tmp_path: Path, own_pg: Path) -> None:
    made = Cluster(tmp_path, (own_pg / "url").read_text())
    try:
        # a lease longer than the restart: no instance may look dead to the others
        a, b = made(2, LEASE_SECONDS=15)
        for svc in (a, b):
            svc.sim.gate(True)  # the jobs stay running through the restart
        ids = a.submit_batch([{"model": m, "prompt": "through"} for m in MODELS[:2]] * 2)
        running = wait_until(
            lambda: (
                (r := rows(made.url))
                and sum(j["status"] == "running" for j in r.values()) >= 2
                and r
            ),
            timeout=20,
            what="jobs running",
        )
        held = {i: j["claimed_by"] for i, j in running.items() if j["status"] == "running"}

        pg_throwaway.halt(own_pg)
        # the running jobs finish at Ollama while the database is down: their results
        # wait to be stored (rather than the jobs running again)
        for svc in (a, b):
            svc.sim.gate(False)
        for svc in (a, b):
            wait_until(lambda s=svc: s.sim.stats()["in_flight"] == 0, timeout=20)
        # while it is down: a clear 503 that says to retry, not a 500
        r = a.session.get(f"{a.url}/api/job/{ids[0]}", timeout=10)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "DATABASE_UNAVAILABLE" and r.headers["Retry-After"]
        r = b.session.post(f"{b.url}/api/submit", json={"model": MODELS[0], "prompt": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "DATABASE_UNAVAILABLE"
        r = a.session.post(f"{a.url}/api/generate", json={"model": MODELS[0], "prompt": "x"})
        assert r.status_code == 503 and "error" in r.json(), r.text  # Ollama's shape
        metrics = a.session.get(f"{a.url}/metrics", timeout=10)
        assert metrics.status_code == 200 and "modelmanager_database_up 0.0" in metrics.text
        assert "modelmanager_backend_up" in metrics.text  # the instance's own go on
        health = a.health()  # a load balancer can tell
        assert health["status"] == "degraded" and health["database"]["up"] is False
        assert health["database"]["kind"] == "postgresql" and health["database"]["error"]
        back = time.time()
        pg_throwaway.resume(own_pg)

        # every HTTP thread's connection broke: each one's next request still answers
        for svc in (a, b):
            for _ in range(40):
                with requests.Session() as fresh:  # a new connection: any thread
                    r = fresh.get(f"{svc.url}/api/job/{ids[0]}", timeout=10)
                assert r.status_code == 200, r.text
        extra = b.submit(model=MODELS[0], prompt="after the restart")
        assert a.health()["database"] == {"kind": "postgresql", "up": True, "error": None}

        def renewed() -> bool:
            r = a.session.get(f"{a.url}/api/v1/instances", timeout=5)
            beats = [i["heartbeat_at"] for i in r.json()["instances"]]
            return len(beats) == 2 and min(beats) > back + 1

        # both instances' heartbeats go on: they keep their leases and their jobs
        wait_until(renewed, timeout=20, what="heartbeats after the restart")
        done = wait_until(lambda: finished(b, [*ids, extra]), timeout=60, what="all done")
        assert {j["status"] for j in done.values()} == {"complete"}
        # no job was taken back and run twice; the answers Ollama gave during the outage
        # were stored once it was back, by the instances that ran them
        logs = a.output(whole=True) + b.output(whole=True)
        assert {j["attempts"] for j in done.values()} == {1}, (done, logs)
        now = rows(made.url)
        assert {i: now[i]["claimed_by"] for i in held} == held
        assert "the database does not answer; its result waits" in logs
        assert "Traceback" not in logs
    finally:
        for proc in reversed(made.procs):
            proc.kill()


def sent_to(
    svc: ServiceProcess, path: str, body: dict[str, Any]
) -> tuple[threading.Thread, list[requests.Response]]:
    """``body`` posted to ``svc`` by a thread of its own; its answer lands in the list."""
    got: list[requests.Response] = []
    client = threading.Thread(
        target=lambda: got.append(requests.post(f"{svc.url}{path}", json=body, timeout=60))
    )
    client.start()
    return client, got


def running_job(url: str) -> dict[str, Any]:
    """The job the store shows running, once one is."""
    return wait_until(
        lambda: next((j for j in rows(url).values() if j["status"] == "running"), None),
        timeout=20,
        what="a job running",
    )


@contextlib.contextmanager
def paused(svc: ServiceProcess) -> Iterator[None]:
    """``svc`` stopped (SIGSTOP) for the block: its lease lapses, its sockets stay open."""
    os.kill(svc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(svc.pid, signal.SIGCONT)


def completed(url: str, job_id: str) -> dict[str, Any]:
    return wait_until(
        lambda: (j := rows(url)[job_id])["status"] == "complete" and j,
        timeout=30,
        what="another instance completes the job",
    )


def _chat_text(door: str, r: requests.Response) -> str:
    """The assistant's text of a chat answer: Ollama's streamed NDJSON (its last line
    ``done``) or OpenAI's chat completion."""
    if door == "openai":
        assert r.json()["choices"][0]["finish_reason"] == "stop"
        return str(r.json()["choices"][0]["message"]["content"])
    lines = [json.loads(line) for line in r.text.splitlines() if line]
    assert lines[-1]["done"] is True
    return "".join(line["message"]["content"] for line in lines)


@pytest.mark.parametrize("door", ["ollama", "openai"])
def test_instances_front_door_answer_of_a_job_another_instance_completed(
    cluster: Cluster, door: str
) -> None:
    a, b = cluster(2)
    a.sim.gate(True)  # a's own attempt hangs
    path = "/v1/chat/completions" if door == "openai" else "/api/chat"
    body = {"model": MODELS[0], "messages": [{"role": "user", "content": "hi"}]}
    client, got = sent_to(a, path, body)
    job = running_job(cluster.url)
    with paused(a):  # a's lease lapses: b takes the job back and completes it
        done = completed(cluster.url, job["id"])
    # a, connected to the client, answers with what b stored
    client.join(timeout=30)
    assert got and got[0].status_code == 200, (got and got[0].text) or a.tail(60)
    text = _chat_text(door, got[0])
    assert text and text == json.loads(done["result"])["text"]
    assert b.sim.stats()["requests_by_endpoint"].get("/api/chat", 0) == 1  # b ran it


def test_instances_hold_a_bounded_number_of_database_connections(cluster: Cluster) -> None:
    from modelmanager.store_pg import APPLICATION, READERS

    a, _ = cluster(2)
    codes: list[int] = []

    def reader() -> None:
        with requests.Session() as s:
            for path in ("/api/stats", "/api/jobs", "/api/health") * 4:
                codes.append(s.get(f"{a.url}{path}", timeout=30).status_code)

    # many HTTP threads read at once, as in a burst of polls
    threads = [threading.Thread(target=reader) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert codes == [200] * 480
    with psycopg.connect(cluster.url) as conn:
        held = dict(
            conn.execute(
                "SELECT application_name, count(*) FROM pg_stat_activity"
                " WHERE application_name LIKE %s GROUP BY application_name",
                (f"{APPLICATION} %",),
            ).fetchall()
        )
    # per instance: the writer, the LISTEN connection and at most READERS readers (the
    # 16 HTTP threads each held one of their own before)
    assert set(held) == {f"{APPLICATION} host0", f"{APPLICATION} host1"}, held
    assert held[f"{APPLICATION} host0"] <= READERS + 2, held


def test_instances_front_door_request_for_a_model_another_instance_holds(
    cluster: Cluster,
) -> None:
    a, b = cluster(2)
    body = {"model": MODELS[1], "prompt": "here", "stream": False}
    # a loads the model for a request of its own client
    r = requests.post(f"{a.url}/api/generate", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert MODELS[1] in [e["model"] for e in a.sim.stats()["load_events"]]
    before = generated(a)
    # b's client: its job runs where it is connected, so b loads the model too, instead
    # of leaving it to a until a's simulator unloads it (keep_alive: 300 s at time scale
    # 0.02, 6 s), which this timeout is shorter than
    r = requests.post(f"{b.url}/api/generate", json=body, timeout=5)
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True and r.json()["response"]
    assert MODELS[1] in [e["model"] for e in b.sim.stats()["load_events"]]
    assert generated(a) == before


@pytest.mark.parametrize(
    ("host", "url", "expected"),
    [
        ("0.0.0.0", "", f"http://{socket.gethostname()}:5001"),  # no one reaches 0.0.0.0
        ("::", "", f"http://{socket.gethostname()}:5001"),
        ("10.0.0.5", "", "http://10.0.0.5:5001"),
        ("::1", "", "http://[::1]:5001"),
        ("0.0.0.0", "https://gpu-a.example/mm", "https://gpu-a.example/mm"),
    ],
)
def test_instances_url_is_one_other_hosts_can_reach(host: str, url: str, expected: str) -> None:
    from config import Config
    from modelmanager.cluster import instance_url

    assert instance_url(Config(HOST=host, HTTP_PORT=5001, INSTANCE_URL=url)) == expected


def test_instances_streamed_answer_under_way_when_another_instance_takes_the_job(
    cluster: Cluster,
) -> None:
    a, b = cluster(2)
    # a's attempt sends a few tokens, then hangs: part of the answer is out
    r = requests.post(f"{a.sim.url}/_sim/gate", json={"closed": True, "after_tokens": 3})
    assert r.status_code == 200, r.text
    body = {"model": MODELS[0], "prompt": "long", "options": {"num_predict": 50}}
    with requests.post(f"{a.url}/api/generate", json=body, stream=True, timeout=60) as resp:
        lines = resp.iter_lines()
        first = json.loads(next(lines))
        assert first["done"] is False
        job = running_job(cluster.url)
        with paused(a):  # a's lease lapses: b takes the job over
            completed(cluster.url, job["id"])
        rest = [json.loads(line) for line in lines if line]
    # the stream cannot start over: it ends with an error line saying what happened
    assert "error" in rest[-1] and "lost the job" in rest[-1]["error"], rest[-3:]
    assert not any(line.get("done") for line in rest)
    assert generated(b) >= 1  # b ran the job
    # a stopped its own attempt, taken over, at its next heartbeat
    wait_until(lambda: a.sim.stats()["in_flight"] == 0, timeout=10, what="a's attempt aborted")


def test_instances_one_ollama_and_one_node_name_over_all_instances(
    cluster: Cluster, tmp_path: Path
) -> None:
    a, b = cluster(2)
    (tmp_path / "host2").mkdir()
    third = SimProcess(tmp_path / "host2")
    cluster.procs.append(third)
    third.start()
    node = {"name": "c0", "url": third.url, "vram_budget_mb": 8192}
    r = a.session.post(f"{a.url}/api/v1/nodes", json=node, timeout=30)
    assert r.status_code == 201, r.text
    # at once (a publishes its nodes as it registers one, not at its next heartbeat):
    # the same Ollama under another name, on another instance of this host
    r = b.session.post(f"{b.url}/api/v1/nodes", json={**node, "name": "c1"}, timeout=30)
    assert r.status_code == 409, r.text
    assert "instance host0 already drives the Ollama" in r.json()["error"]["message"]
    # the same name for another Ollama
    r = b.session.post(f"{b.url}/api/v1/nodes", json={**node, "url": b.sim.url}, timeout=30)
    assert r.status_code == 409, r.text
    assert "instance host0 has a node named 'c0'" in r.json()["error"]["message"]


def test_instances_answer_made_here_during_a_pause_is_held_back_once_taken_over(
    cluster: Cluster,
) -> None:
    a, b = cluster(2)
    a.sim.gate(True)  # a's attempt waits in its Ollama: nothing goes out yet
    body = {"model": MODELS[0], "prompt": "paused", "options": {"num_predict": 20}}
    client, got = sent_to(a, "/api/generate", body)
    job = running_job(cluster.url)
    with paused(a):
        completed(cluster.url, job["id"])
        # a's own Ollama answers while a is paused: the chunks wait in a's socket
        a.sim.gate(False)
        wait_until(lambda: a.sim.stats()["in_flight"] == 0, timeout=10, what="a's answer")
    client.join(timeout=30)
    assert got and got[0].status_code == 200, (got and got[0].text) or a.tail(60)
    lines = [json.loads(line) for line in got[0].text.splitlines() if line]
    # a learns it lost the job before it relays a chunk of its superseded attempt: the
    # client gets the answer b stored, whole, in one line
    assert len(lines) == 1 and lines[0]["done"] is True, lines[:3]
    stored = b.job(job["id"])
    assert lines[0]["created_at"] == stored["completed_at"]  # b's, not a's late answer
    assert lines[0]["response"] == stored["result"]
