"""How a worker cuts what it gathered into network calls (FEWSTEP_FIXED_BATCH rows each): every
call's requests are answered as soon as it is done, and under load a last call that would be
padded waits for the next gather, where requests that arrived meanwhile fill its rows."""

from __future__ import annotations

import asyncio
import threading

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
        await worker.process(await worker.gather())  # 1 held + 5 new: the held one leads, the last new one is held
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
