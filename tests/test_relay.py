"""How a front door's answer (``frontdoors.relay.Answer``) ends when its job's attempt
does not end the usual way: a final chunk already sent, a job another instance
completed, a database that does not answer.

The subscription is the real ``StreamHub``'s; the job's stored view comes from a small
stand-in for ``Api`` (the store's answer is what each case is about).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelmanager.errors import DatabaseUnavailable, NotFound
from modelmanager.frontdoors.relay import Answer, JobFailed
from modelmanager.streams import Ended, StreamHub


class StoredJob:
    """The parts of ``Api`` an ``Answer`` reads: the job's stored view (``job``), or
    ``down`` set when the database does not answer."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.down = False
        self.accepting = True
        self.cancelled: list[str] = []

    def get(self, job_id: str) -> dict[str, Any]:
        if self.down:
            raise DatabaseUnavailable("the database postgresql://mm@db/x is unavailable: gone")
        if job_id != self.job["job_id"]:
            raise NotFound(f"no job with id {job_id!r}")
        return dict(self.job)

    def get_encoded(self, job_id: str) -> bytes:
        return json.dumps(self.get(job_id)).encode()

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)


def answer(api: StoredJob, hub: StreamHub, stream: bool = True) -> Answer:
    sub = hub.subscribe("j1", live=stream)
    return Answer(
        api,  # type: ignore[arg-type]
        "j1",
        sub,
        stream=stream,
        disconnected=lambda: False,
        arrived=0.0,
    )


RUNNING = {"job_id": "j1", "status": "running", "model": "qwen2.5:0.5b", "kind": "chat"}


def test_an_answer_whose_final_chunk_went_out_is_complete_whatever_follows() -> None:
    hub, api = StreamHub(), StoredJob(RUNNING)
    ans = answer(api, hub)
    final = {"message": {"role": "assistant", "content": "hi"}, "done": True}
    hub.publish("j1", final)
    hub.end("j1", Ended("aborted"))  # e.g. its result could not be stored
    assert ans.next() == final
    assert ans.next() is None  # no error line after a whole answer
    ans.close()
    assert api.cancelled == []


def test_a_job_another_instance_completed_is_answered_from_the_store() -> None:
    hub = StreamHub()
    api = StoredJob(
        {
            **RUNNING,
            "status": "complete",
            "result": "from b",
            "message": {"role": "assistant", "content": "from b"},
            "done_reason": "stop",
            "completed_at": "2026-11-30T13:00:00Z",
            "eval_count": 3,
        }
    )
    ans = answer(api, hub, stream=False)
    [whole] = ans.collect()
    assert whole["message"] == {"role": "assistant", "content": "from b"}
    assert (whole["done"], whole["done_reason"], whole["eval_count"]) == (True, "stop", 3)
    ans.close()
    assert api.cancelled == []


def test_an_attempt_cut_off_while_the_database_is_down_is_a_503_naming_it() -> None:
    hub, api = StreamHub(), StoredJob(RUNNING)
    ans = answer(api, hub)
    api.down = True
    hub.end("j1", Ended("aborted"))
    with pytest.raises(JobFailed) as caught:
        ans.next()
    assert caught.value.status == 503
    assert "database" in caught.value.message and "stopping" not in caught.value.message


def test_a_collected_answer_of_a_superseded_attempt_gives_way_to_the_stored_one() -> None:
    hub, api = StreamHub(), StoredJob(RUNNING)
    ans = answer(api, hub, stream=False)  # chunks are collected, none went out yet
    hub.publish("j1", {"message": {"role": "assistant", "content": "dropped"}, "done": True})
    hub.end("j1", Ended("superseded"))  # another instance's attempt took over
    api.job = {
        **RUNNING,
        "status": "complete",
        "result": "kept",
        "message": {"role": "assistant", "content": "kept"},
    }
    [whole] = ans.collect()
    assert whole["message"]["content"] == "kept"  # what GET /api/job/<id> answers too
