"""The job contract: what crosses Redis is a versioned, typed Job / JobResult, and a worker that
reads anything else finishes it as failed and acknowledges it, without crashing or looping."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import redis.asyncio as aioredis

from service.contract import FORMAT_VERSION, BadEntry, Job, JobItem, JobResult, read_job
from service.queue import RedisQueue
from service.settings import Settings
from service.worker import Worker


def a_job(**over) -> Job:
    fields = dict(id=uuid.uuid4().hex, endpoint="inpaint", model="shapes", steps=4, stochastic=False, format="png", created=1.0, deadline=1e12,
                  items=[JobItem(seed=3, guidance=1.5, prompt="a red circle", image=b"\x89PNG\x00\xff bytes", mask=b"\x00\x01")])
    return Job(**{**fields, **over})


def test_a_job_survives_its_json_round_trip_with_its_bytes():
    job = a_job()
    text = job.model_dump_json()
    assert json.loads(text)["version"] == FORMAT_VERSION
    assert read_job(text) == job and read_job(text.encode()) == job


@pytest.mark.parametrize(
    "raw,message,has_id",
    [
        (None, "no 'job' field", False),
        ("{not json", "not JSON", False),
        ("[1, 2]", "not a JSON object", False),
        (json.dumps({**json.loads(a_job().model_dump_json()), "version": 1}), "format version 1", True),
        ("[" * 100_000 + "]" * 100_000, "not JSON", False),
        (json.dumps({**json.loads(a_job().model_dump_json()), "steps": "four"}), "steps", True),
        (json.dumps({**json.loads(a_job().model_dump_json()), "items": []}), "items", True),
        (json.dumps({**json.loads(a_job().model_dump_json()), "colour": "red"}), "colour", True),
    ],
)
def test_what_is_not_a_job_says_why(raw, message, has_id):
    with pytest.raises(BadEntry, match=None) as err:
        read_job(raw)
    assert message in str(err.value)
    assert (err.value.job_id is not None) == has_id


class FakeRunner:
    def __init__(self):
        self.ran = []

    def run(self, jobs, on_event=None):
        self.ran += [j.id for j in jobs]
        return [JobResult(status="succeeded", model=j.model, steps=j.steps, images=["img"]) for j in jobs]


def test_worker_fails_and_acknowledges_entries_it_cannot_read(redis_server):
    async def main():
        client = aioredis.from_url(redis_server.url)
        queue = RedisQueue(client, prefix=f"c-{uuid.uuid4().hex[:8]}", job_ttl_s=60)
        await queue.ensure_group()
        good, newer = a_job(), a_job()
        await queue.submit(good, 10)
        newer_json = json.dumps({**json.loads(newer.model_dump_json()), "version": FORMAT_VERSION + 1, "new_field": 1})
        await client.hset(queue.job_key(newer.id), mapping={"status": "queued"})  # as a newer API would have
        await client.xadd(queue.stream, {"job": newer_json})
        await client.xadd(queue.stream, {"job": "garbage"})
        await client.xadd(queue.stream, {"other": "field"})
        runner = FakeRunner()
        worker = Worker(Settings(max_wait_ms=0), queue, runner, name="w")
        try:
            entries = await worker.gather()
            assert len(entries) == 4
            await worker.process(entries)
            assert runner.ran == [good.id]  # the valid job in the same read still runs
            assert (await queue.wait(good.id, 1)).status == "succeeded"
            failed = await queue.wait(newer.id, 1)
            assert (failed.status, failed.code) == ("failed", 500)
            assert f"format version {FORMAT_VERSION + 1}" in failed.error
            assert await queue.depth() == 0  # all four acknowledged and deleted: nothing loops
            assert await worker.gather() == []
            pending = await client.xpending(queue.stream, "workers")
            assert pending["pending"] == 0
        finally:
            await client.aclose()

    asyncio.run(main())
