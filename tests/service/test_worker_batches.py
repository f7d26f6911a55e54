"""How a worker cuts what it gathered into network calls (FEWSTEP_FIXED_BATCH rows each): every
call's requests are answered as soon as it is done, and under load a last call that would be
padded waits for the next gather, where requests that arrived meanwhile fill its rows."""

from __future__ import annotations

import asyncio
import threading

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from service.settings import Settings
from service.worker import Worker

from .test_queue_faults import FakeRunner, a_job, serve, with_queue


def test_each_call_is_answered_on_its_own_and_a_padded_last_one_waits_for_newcomers(redis_server):
    """Nine requests queued at once, four rows per call: two full calls run, each answered before
    the next starts; the ninth is held back, and the three requests that arrive during the
    first calls share its call instead of padding."""

    async def body(queue, client):
        first = [a_job() for _ in range(9)]
        late = [a_job() for _ in range(3)]
        for j in first:
            await queue.submit(j, 100)
        loop = asyncio.get_running_loop()
        results = {}

        async def collect():
            for j in first + late:
                if j.id not in results and (r := await queue.handed_over(j.id)) is not None:
                    results[j.id] = r
            return len(results) == len(first + late)

        answered_before_second_call = []

        def during(jobs):  # on the model thread, as each call starts
            if jobs[0].id == first[4].id:  # the second call: the first one's requests are answered already
                asyncio.run_coroutine_threadsafe(collect(), loop).result()
                answered_before_second_call.extend(j.id in results for j in first[:4])
                for j in late:
                    asyncio.run_coroutine_threadsafe(queue.submit(j, 100), loop).result()

        runner = FakeRunner(during)
        worker = Worker(Settings(max_wait_ms=0, fixed_batch=4), queue, runner, name="w")
        await serve([worker], collect)
        ids = {j.id: k for k, j in enumerate(first + late)}
        assert [[ids[i] for i in b] for b in runner.batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
        assert answered_before_second_call == [True] * 4

    with_queue(redis_server.url, body)


def test_without_a_fixed_row_count_a_gather_runs_as_one_batch(redis_server):
    async def body(queue, client):
        jobs = [a_job() for _ in range(9)]
        for j in jobs:
            await queue.submit(j, 100)
        runner = FakeRunner()
        worker = Worker(Settings(max_wait_ms=0, fixed_batch=None), queue, runner, name="w")
        await worker.process(await worker.gather())
        assert runner.batches == [[j.id for j in jobs]] and worker._carried == []

    with_queue(redis_server.url, body)


def test_a_request_is_held_back_once_and_never_left_behind_when_the_worker_stops(redis_server):
    """Five requests, four rows per call: the fifth is held back, and leads the next gather's first
    call. A worker told to stop with requests held back runs them before it leaves."""

    async def body(queue, client):
        jobs = [a_job() for _ in range(5)]
        for j in jobs:
            await queue.submit(j, 100)
        runner = FakeRunner()
        worker = Worker(Settings(max_wait_ms=0, fixed_batch=4), queue, runner, name="w")
        await worker.process(await worker.gather())
        assert [len(b) for b in runner.batches] == [4] and [e.job.id for e in worker._carried] == [jobs[4].id]
        more = [a_job() for _ in range(5)]  # arrive while it is held back
        for j in more:
            await queue.submit(j, 100)
        await worker.process(await worker.gather())  # 1 held + 5 new: the held one leads, the last two new ones are held
        assert runner.batches[1:] == [[jobs[4].id] + [j.id for j in more[:3]]]
        assert [e.job.id for e in worker._carried] == [j.id for j in more[3:]]

        stop = asyncio.Event()
        stop.set()  # stopping before it even starts: what it holds runs, nothing new is read
        extra = a_job()
        await queue.submit(extra, 100)
        await asyncio.wait_for(worker.run(stop), 10)
        assert runner.batches[2:] == [[j.id for j in more[3:]]]
        assert all([await queue.handed_over(j.id) is not None for j in jobs + more])
        assert await queue.handed_over(extra.id) is None  # left queued for a worker that is not stopping

    with_queue(redis_server.url, body)


async def _hold_one(queue, worker, runner, steps: int = 4) -> list:
    """Five requests gathered by `worker`: four run, the fifth is held back."""
    jobs = [a_job(steps=steps) for _ in range(5)]
    for j in jobs:
        await queue.submit(j, 100)
    await worker.process(await worker.gather())
    assert [e.job.id for e in worker._carried] == [jobs[4].id]
    return jobs


def test_held_back_requests_do_not_starve_a_takeover(redis_server):
    """Under steady load every gather could hold a request back; when a takeover is due, the held
    requests run alone and the next gather takes the dead worker's request over (alone)."""

    async def body(queue, client):
        runner = FakeRunner()
        worker = Worker(Settings(max_wait_ms=0, fixed_batch=4, claim_idle_ms=100), queue, runner, name="w")
        jobs = await _hold_one(queue, worker, runner)  # its first gather looked for a takeover: none yet
        orphan = a_job()
        await queue.submit(orphan, 100)
        await queue.read("dead", 1, block_ms=None)  # a worker that died holding it
        for _ in range(5):
            await queue.submit(a_job(), 100)  # the load goes on
        await asyncio.sleep(0.2)  # past the takeover time, and the worker's next look for one
        held = await worker.gather()
        assert [e.job.id for e in held] == [jobs[4].id]  # alone: no new reads while a takeover is due
        await worker.process(held)
        taken = await worker.gather()
        assert [(e.job.id, e.deliveries) for e in taken] == [(orphan.id, 2)]

    with_queue(redis_server.url, body)


def test_only_one_run_is_held_back_per_gather(redis_server):
    """Two checkpoints, five requests each: only the first one's last run waits (it leads the next
    gather); the second one's runs padded, as it would otherwise wait behind the first's."""

    async def body(queue, client):
        a = [a_job(steps=4) for _ in range(5)]
        b = [a_job(steps=2) for _ in range(5)]
        for j in a + b:
            await queue.submit(j, 100)
        runner = FakeRunner()
        worker = Worker(Settings(max_wait_ms=0, fixed_batch=4), queue, runner, name="w")
        await worker.process(await worker.gather())
        assert runner.batches == [[j.id for j in a[:4]], [j.id for j in b[:4]], [b[4].id]]
        assert [e.job.id for e in worker._carried] == [a[4].id]

    with_queue(redis_server.url, body)


def test_held_back_requests_are_resumed_after_a_redis_error(redis_server, monkeypatch):
    async def body(queue, client):
        runner = FakeRunner()
        worker = Worker(Settings(max_wait_ms=0, fixed_batch=4), queue, runner, name="w")
        jobs = await _hold_one(queue, worker, runner)

        async def unreachable(*args, **kwargs):
            raise RedisConnectionError("Redis went away")

        with monkeypatch.context() as m:
            m.setattr(queue, "read", unreachable)
            with pytest.raises(RedisConnectionError):
                await worker.gather()
        assert worker._carried == [] and [e.job.id for e in worker._pending] == [jobs[4].id]
        resumed = await worker._resume()  # what the run loop does next
        await worker.process(resumed)
        assert runner.batches[-1] == [jobs[4].id] and (await queue.handed_over(jobs[4].id)).status == "succeeded"

    with_queue(redis_server.url, body)
