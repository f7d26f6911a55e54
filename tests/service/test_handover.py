"""Results handed over within one process (service/handover.py): a request whose job a worker of
its own process runs gets the result from it, without Redis handing it over; every other way a
job can end (another process's worker, a takeover after a hang, a cancel, a deadline) still
reaches the request."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from types import SimpleNamespace

import redis.asyncio as aioredis

from service.contract import Job, JobItem, JobResult
from service.handling import _wait
from service.handover import CLAIM_WAIT_S, Handover
from service.queue import RedisQueue, connect_sync
from service.settings import Settings
from service.worker import Worker


class LabelRunner:
    """Answers every job with an image named after the runner; `hold_s`: each batch takes that long."""

    def __init__(self, label: str, hold_s: float = 0.0, started: threading.Event | None = None):
        self.label, self.hold_s, self.started = label, hold_s, started

    def run(self, jobs, on_event=None):
        if self.started is not None:
            self.started.set()
        time.sleep(self.hold_s)
        return [JobResult(status="succeeded", model=j.model, steps=j.steps, images=[self.label]) for j in jobs]


def _job(deadline_s: float = 30.0) -> Job:
    now = time.time()
    return Job(id=uuid.uuid4().hex, endpoint="generate", model="shapes", steps=1, stochastic=False, format="png", created=now,
               deadline=now + deadline_s, store_result=False, items=[JobItem(seed=1, guidance=1.0, class_label=0)])


async def _stats(client) -> dict:
    info = await client.info("commandstats")
    return {cmd: info.get(f"cmdstat_{cmd}", {}).get("calls", 0) for cmd in ("lpush", "blpop")}


async def _request(queue: RedisQueue, handover: Handover, job: Job) -> JobResult | None:
    """What a synchronous route does: register, queue, wait (service/handling.py)."""
    here = handover.expect(job.id)
    try:
        await queue.submit(job, 10)
        return await _wait(SimpleNamespace(handover=handover, queue=queue), job, here)
    finally:
        handover.forget(here)


def _run(redis_server, body):
    async def main():
        client = aioredis.from_url(redis_server.url)
        queue = RedisQueue(client, prefix=f"ho-{uuid.uuid4().hex[:8]}", job_ttl_s=60, sync=connect_sync(redis_server.url))
        await queue.ensure_group()
        try:
            return await body(client, queue)
        finally:
            await client.aclose()
            queue.close_sync()

    return asyncio.run(main())


def _serve(worker: Worker):
    """One worker's next gather and its run."""
    async def once():
        entries = []
        while not entries:
            entries = await worker.gather()
        await worker.process(entries)
    return asyncio.create_task(once())


def _shutdown(*runners):
    for runner in runners:
        runner.thread.shutdown()


def _with_thread(runner):
    from concurrent.futures import ThreadPoolExecutor

    runner.thread = ThreadPoolExecutor(max_workers=1)
    return runner


def test_a_request_takes_its_result_from_a_worker_of_its_own_process_without_redis_handing_it_over(redis_server):
    async def body(client, queue):
        handover, runner = Handover(), _with_thread(LabelRunner("here"))
        worker = Worker(Settings(max_wait_ms=0), queue, runner, name="local", handover=handover)
        try:
            results = []
            for _ in range(3):  # finished from the model thread
                job = _job()
                before = await _stats(client)
                serving = _serve(worker)
                await asyncio.sleep(0.05)  # the worker waits for new entries, idle
                results.append((await _request(queue, handover, job), await _stats(client), before, await queue.status(job.id)))
                await serving
            queue.close_sync()  # from here on the worker finishes on the event loop
            job = _job()
            before = await _stats(client)
            serving = _serve(worker)
            await asyncio.sleep(0.05)
            results.append((await _request(queue, handover, job), await _stats(client), before, await queue.status(job.id)))
            await serving
            assert await queue.depth() == 0
            return results
        finally:
            _shutdown(runner)

    for result, after, before, status in _run(redis_server, body):
        assert result.status == "succeeded" and result.images == ["here"]
        assert after == before  # no result pushed to Redis, no wait on it
        assert status["status"] == "succeeded"


def test_a_job_a_worker_of_another_process_runs_reaches_its_request_through_redis(redis_server):
    async def body(client, queue):
        handover = Handover()
        local_runner, remote_runner = _with_thread(LabelRunner("here")), _with_thread(LabelRunner("elsewhere"))
        local = Worker(Settings(max_wait_ms=0), queue, local_runner, name="local", handover=handover)
        remote = Worker(Settings(max_wait_ms=0), queue, remote_runner, name="remote")  # its own process: no handover of ours
        try:
            remote_reading = asyncio.create_task(remote.gather())  # blocked on Redis first: the entry goes to it
            await asyncio.sleep(0.05)
            local_reading = asyncio.create_task(local._read(10, block_ms=2000))  # idle too: the request waits for a claim a moment
            await asyncio.sleep(0.05)
            assert handover.idle_readers == 1
            job = _job()
            before = await _stats(client)
            requested = asyncio.create_task(_request(queue, handover, job))
            entries = await remote_reading
            await remote.process(entries)
            started = time.monotonic()
            result = await requested
            waited = time.monotonic() - started
            after = await _stats(client)
            local_reading.cancel()
            return result, before, after, waited
        finally:
            _shutdown(local_runner, remote_runner)

    result, before, after, waited = _run(redis_server, body)
    assert result.status == "succeeded" and result.images == ["elsewhere"]
    assert after["lpush"] == before["lpush"] + 1 and after["blpop"] == before["blpop"] + 1
    assert waited < 1.0  # not held until the idle local worker's read ended (2 s)


def test_with_no_idle_worker_of_its_process_a_request_waits_on_redis_at_once(redis_server):
    async def body(client, queue):
        handover = Handover()
        job = _job()
        here = handover.expect(job.id)
        await queue.submit(job, 10)
        handed, _ = await handover.take(here, 10)
        handover.claim([job.id], "late")  # a local worker that reads it afterwards does not keep it
        return handed, handover.finishing([job.id], "t")

    assert _run(redis_server, body) == (False, set())


def test_a_request_whose_worker_hangs_gets_the_result_of_the_worker_that_takes_the_job_over(redis_server):
    async def body(client, queue):
        handover, started = Handover(), threading.Event()
        hung_runner = _with_thread(LabelRunner("late", hold_s=2.0, started=started))
        other_runner = _with_thread(LabelRunner("taken over"))
        settings = Settings(max_wait_ms=0, claim_idle_ms=200, batch_timeout_s=0.3)
        local = Worker(settings, queue, hung_runner, name="local", handover=handover)
        other = Worker(settings, queue, other_runner, name="other")
        try:
            hanging = _serve(local)
            await asyncio.sleep(0.05)
            job = _job()
            requested = asyncio.create_task(_request(queue, handover, job))
            while not started.is_set():
                await asyncio.sleep(0.01)
            taken = []
            while not taken:  # the hung batch's entry is left unrefreshed, then taken over
                await asyncio.sleep(0.1)
                other._last_claim = 0.0
                taken = await other.gather()
            await other.process(taken)
            result = await asyncio.wait_for(requested, 5)
            hung_done = hanging.done()
            await hanging
            return result, hung_done, await queue.status(job.id)
        finally:
            _shutdown(hung_runner, other_runner)

    result, hung_done, status = _run(redis_server, body)
    assert result.status == "succeeded" and result.images == ["taken over"]
    assert not hung_done  # answered while the hung batch still ran
    assert status["status"] == "succeeded"


def test_a_request_whose_job_was_cancelled_as_it_ran_here_gets_the_cancel(redis_server):
    async def body(client, queue):
        handover, started = Handover(), threading.Event()
        runner = _with_thread(LabelRunner("here", hold_s=0.3, started=started))
        worker = Worker(Settings(max_wait_ms=0), queue, runner, name="local", handover=handover)
        try:
            serving = _serve(worker)
            await asyncio.sleep(0.05)
            job = _job()
            requested = asyncio.create_task(_request(queue, handover, job))
            while not started.is_set():
                await asyncio.sleep(0.01)
            assert await queue.cancel(job.id) == "cancelled"  # an operator's cancel: the finish that follows loses
            result = await asyncio.wait_for(requested, 5)
            await serving
            return result
        finally:
            _shutdown(runner)

    result = _run(redis_server, body)
    assert result.status == "failed" and result.code == 409


def test_a_worker_lets_go_only_the_jobs_it_claimed_and_is_not_finishing():
    async def main():
        handover = Handover()
        waits = [handover.expect(f"j{k}") for k in range(3)]
        handover.claim(["j0", "j1"], "w1")
        handover.claim(["j2"], "w2")
        assert handover.finishing(["j1"], "t") == {"j1"}  # under way: its result still comes here
        assert handover.release(owner="w1") == 1
        taken = await asyncio.gather(*(handover.take(w, 10) for w in waits[:1]))
        return taken, handover.finishing(["j0", "j1", "j2"], "t")

    taken, finishing = asyncio.run(main())
    assert taken == [(False, None)]  # j0: to Redis
    assert finishing == {"j1", "j2"}  # j2 is another worker's, still claimed


def test_a_result_finished_here_as_the_deadline_passed_is_still_handed_over():
    result = JobResult(status="succeeded", model="shapes", steps=1, images=["here"])

    async def main():
        handover = Handover()
        wait = handover.expect("j")
        handover.claim(["j"], "w")
        assert handover.finishing(["j"], "t") == {"j"}
        timed_out = await handover.take(wait, 0.01)  # the deadline passes while the finish is sent
        threading.Timer(0.05, handover.deliver, ("j", "t", result)).start()  # the model thread's finish won
        return timed_out, await handover.after_timeout(wait, 5)

    timed_out, late = asyncio.run(main())
    assert timed_out == (True, None) and late == result


def test_a_request_waits_only_briefly_for_an_idle_worker_that_does_not_take_its_job():
    async def main():
        handover = Handover()
        handover.idle_readers = 1
        wait = handover.expect("j")
        started = time.monotonic()
        handed = await handover.take(wait, 10)
        return handed, time.monotonic() - started, handover.finishing(["j"], "t")

    handed, waited, finishing = asyncio.run(main())
    assert handed == (False, None) and waited < CLAIM_WAIT_S + 0.5 and finishing == set()


def test_the_loss_of_one_local_finish_waits_for_another_local_finish_of_the_same_job():
    """Two workers of this process finish one job (one took it over while the other's finish was
    held up): the loser's word comes first, the winner's result after it, and the request gets it."""
    result = JobResult(status="succeeded", model="shapes", steps=1, images=["winner"])

    async def main():
        handover = Handover()
        wait = handover.expect("j")
        handover.claim(["j"], "w1")
        assert handover.finishing(["j"], "first") == {"j"}  # w1's finish, held up by Redis
        assert handover.finishing(["j"], "second") == {"j"}  # w2 took it over and finishes it
        handover.deliver("j", "first", None)  # w1's finish, sent again, lost to w2's
        threading.Timer(0.05, handover.deliver, ("j", "second", result)).start()
        return await handover.take(wait, 5)

    assert asyncio.run(main()) == (True, result)


def test_a_lone_local_finish_that_lost_sends_its_request_to_redis():
    async def main():
        handover = Handover()
        wait = handover.expect("j")
        handover.claim(["j"], "w")
        handover.finishing(["j"], "t")
        handover.finishing(["j"], "t")  # the same finish, sent again
        handover.deliver("j", "t", None)  # another process's worker or a cancel won
        return await asyncio.wait_for(handover.take(wait, 5), 1)

    assert asyncio.run(main()) == (False, None)


def test_a_worker_that_stops_lets_the_jobs_it_read_and_did_not_run_wait_on_redis(redis_server):
    async def body(client, queue):
        handover, runner = Handover(), _with_thread(LabelRunner("here"))
        worker = Worker(Settings(max_wait_ms=0), queue, runner, name="local", handover=handover)
        try:
            job = _job()
            here = handover.expect(job.id)
            await queue.submit(job, 10)
            handover.idle_readers += 1  # as when it was read by a blocking read
            assert [e.job.id for e in await worker._read(10, block_ms=None)] == [job.id]
            handover.idle_readers -= 1
            stop = asyncio.Event()
            stop.set()
            await asyncio.wait_for(worker.run(stop), 5)  # stops before running it
            return await asyncio.wait_for(handover.take(here, 5), 1)
        finally:
            _shutdown(runner)

    assert _run(redis_server, body) == (False, None)  # waits on Redis, where a takeover answers


def test_a_worker_that_stops_with_redis_away_hands_over_the_results_it_could_not_record():
    """Whether its finish ran is unknown: the request takes the result computed for it rather
    than wait for a takeover that may never push one."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from service.queue import Entry

    class Away:
        def finish(self, *args, **kwargs):
            raise RedisConnectionError("away")

    result = JobResult(status="succeeded", model="shapes", steps=1, images=["here"])

    async def main():
        handover, job = Handover(), _job()
        wait = handover.expect(job.id)
        handover.claim([job.id], "local")
        worker = Worker(Settings(), Away(), LabelRunner("here"), name="local", handover=handover)
        worker._stop = asyncio.Event()
        worker._stop.set()
        try:
            await worker._finish_surely([(Entry("1-0", job), result)])
        except RedisConnectionError:
            pass
        else:
            raise AssertionError("a stopping worker gives up on Redis")
        return await asyncio.wait_for(handover.take(wait, 5), 1)

    assert asyncio.run(main()) == (True, result)


def test_a_job_taken_over_while_its_worker_waited_for_redis_is_answered_on_redis(redis_server):
    """A worker resuming after a Redis error finds a job it read taken over meanwhile: the job's
    request waits for the takeover's result on Redis."""
    async def body(client, queue):
        handover = Handover()
        worker = Worker(Settings(max_wait_ms=0), queue, LabelRunner("here"), name="local", handover=handover)
        job = _job()
        here = handover.expect(job.id)
        await queue.submit(job, 10)
        handover.idle_readers += 1
        worker._pending = await worker._read(10, block_ms=None)
        handover.idle_readers -= 1
        await asyncio.sleep(0.05)
        assert [e.job.id for e in await queue.claim("other", 10, 1)] == [job.id]  # taken over during the outage
        assert await worker._resume() == []
        return await asyncio.wait_for(handover.take(here, 5), 1)

    assert _run(redis_server, body) == (False, None)


def test_a_request_whose_deadline_passes_as_its_local_finish_is_answered_gets_the_result(redis_server):
    """The route's view (service/handling.py, run_job): the finish ran in Redis before the
    deadline, its answer came back after it; the request's cancel finds the job succeeded and
    the result handed over here is returned, not a 504."""
    from service.handling import run_job

    async def body(client, queue):
        handover, runner = Handover(), _with_thread(LabelRunner("here", hold_s=0.1))
        worker = Worker(Settings(max_wait_ms=0), queue, runner, name="local", handover=handover)
        send = queue.finish_from_thread

        def slow_reply(*args, **kwargs):
            won = send(*args, **kwargs)
            time.sleep(1.0)  # the answer is slow to come back
            return won

        queue.finish_from_thread = slow_reply
        try:
            serving = _serve(worker)
            await asyncio.sleep(0.05)
            job = _job(deadline_s=0.5)
            state = SimpleNamespace(handover=handover, queue=queue, settings=Settings())
            result = await run_job(SimpleNamespace(state=SimpleNamespace()), state, job)
            await serving
            return result, await queue.status(job.id)
        finally:
            _shutdown(runner)

    result, status = _run(redis_server, body)
    assert result.status == "succeeded" and result.images == ["here"]
    assert status["status"] == "succeeded"

