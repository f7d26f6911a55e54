"""The Redis queue's contracts, against a real redis-server."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from service.contract import Job, JobItem, JobResult
from service.queue import HANDOVER_TTL_S, QueueFull, RedisQueue


def run(redis_server, body):
    async def main():
        client = aioredis.from_url(redis_server.url)
        queue = RedisQueue(client, prefix=f"t-{uuid.uuid4().hex[:8]}", job_ttl_s=60)
        await queue.ensure_group()
        await queue.ensure_group()  # idempotent
        try:
            return await body(queue)
        finally:
            await client.aclose()

    return asyncio.run(main())


def job(k=0, store=False):
    return Job(id=uuid.uuid4().hex, endpoint="generate", model="shapes", steps=4, stochastic=False, format="png", created=0.0, deadline=1e12,
               store_result=store, items=[JobItem(seed=k, guidance=1.0, class_label=k)])


def test_submit_read_finish_wait(redis_server):
    async def body(q):
        j = job()
        sid = await q.submit(j, capacity=10)
        assert await q.depth() == 1 and await q.position(sid) == 0
        (entry,) = await q.read("w1", 10, block_ms=100)
        assert entry.job == j
        assert await q.start([j.id], "w1") == [True]
        await q.finish([(entry, JobResult(status="succeeded", images=["x"]))])
        assert await q.wait(j.id, 1) == JobResult(status="succeeded", images=["x"])
        assert not await q.redis.exists(q.done_key(j.id))  # handed over: taken
        assert (await q.status(j.id))["status"] == "succeeded"  # kept a little (a retried submit is a no-op)...
        assert 0 < await q.redis.ttl(q.job_key(j.id)) <= HANDOVER_TTL_S  # ...then gone
        assert await q.depth() == 0  # acknowledged and deleted

    run(redis_server, body)


def test_capacity_counts_waiting_and_running(redis_server):
    async def body(q):
        for k in range(3):
            await q.submit(job(k), capacity=3)
        await q.read("w1", 2, block_ms=100)  # two running, one waiting: still 3
        with pytest.raises(QueueFull):
            await q.submit(job(), capacity=3)

    run(redis_server, body)


def test_duplicate_finish_is_harmless_and_cancel_sticks(redis_server):
    async def body(q):
        a, b = job(1, store=True), job(2)
        await q.submit(a, 10)
        await q.submit(b, 10)
        ea, eb = await q.read("w1", 10, block_ms=100)
        # a dies with both unacknowledged; w2 takes them over
        taken = await q.claim("w2", min_idle_ms=0, count=10)
        assert {e.job.id for e in taken} == {a.id, b.id}
        result = JobResult(status="succeeded", images=["same"])
        await q.finish([(ea, result)])
        await q.finish([(ea, result)])  # the slow first worker finishes too
        assert await q.result(a.id) == result and (await q.status(a.id))["status"] == "succeeded"
        assert await q.cancel(a.id) == "succeeded"  # too late to cancel
        assert await q.cancel(b.id) == "cancelled"
        assert await q.start([b.id], "w2") == [False]  # a worker skips it
        await q.finish([(eb, result)])  # a late result does not resurrect it
        assert (await q.status(b.id))["status"] == "cancelled" and await q.result(b.id) is None
        waited = await q.wait(b.id, 1)
        assert (waited.status, waited.code, waited.error) == ("failed", 409, "the request was cancelled")
        assert await q.cancel("unknown") is None
        assert await q.depth() == 0

    run(redis_server, body)


def test_a_finish_sent_again_reports_its_own_win_and_records_nothing_twice(redis_server, monkeypatch):
    """A finish whose reply was lost is sent again on a new connection (queue.connect): that
    second run must report the win of the first (else a webhook is not sent and a dead letter
    not counted), and add no second dead letter; another worker's finish still loses."""
    from service import queue as queue_module

    async def body(q):
        j = job(3, store=True)
        await q.submit(j, 10)
        (entry,) = await q.read("w1", 10, block_ms=100)
        result = JobResult.failed(500, "delivered too often")
        monkeypatch.setattr(queue_module.uuid, "uuid4", lambda: uuid.UUID(int=7))  # the same token, as a resend carries
        assert await q.finish([(entry, result)], dead_letter="too often") == [True]
        assert await q.finish([(entry, result)], dead_letter="too often") == [True]
        assert await q.redis.xlen(q.dead) == 1
        monkeypatch.setattr(queue_module.uuid, "uuid4", lambda: uuid.UUID(int=8))  # another finish
        assert await q.finish([(entry, JobResult(status="succeeded", images=["x"]))]) == [False]
        assert await q.result(j.id) == result and await q.redis.xlen(q.dead) == 1

    run(redis_server, body)


def test_two_entries_of_one_job_finished_together_win_once(redis_server):
    """The token names each entry's finish, not the call: of two entries of the same job in one
    finish (a stale copy beside it), only the first wins."""

    async def body(q):
        j = job(4, store=True)
        await q.submit(j, 10)
        await q.redis.xadd(q.stream, {"job": j.model_dump_json()})  # a second entry of the same job
        entries = await q.read("w1", 10, block_ms=100)
        assert [e.job.id for e in entries] == [j.id, j.id]
        result = JobResult(status="succeeded", images=["x"])
        assert await q.finish([(e, result) for e in entries], token="one-call") == [True, False]
        assert await q.finish([(e, result) for e in entries], token="one-call") == [True, False]  # resent: the same answer
        assert await q.depth() == 0

    run(redis_server, body)


def test_wait_times_out(redis_server):
    async def body(q):
        j = job()
        await q.submit(j, 10)
        assert await q.wait(j.id, 0.2) is None

    run(redis_server, body)
