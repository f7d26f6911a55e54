"""The queue under nasty faults, against real redis-servers and in-process workers (fake models):
slow workers, requests that kill their workers, Redis refusing writes, cancellations behind a
batch, retried submits, results at the deadline, departed consumers, result storage."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from types import SimpleNamespace

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.contract import Job, JobItem, JobResult
from service.handling import enqueue, run_job
from service.queue import HANDOVER_TTL_S, RedisQueue, connect
from service.settings import Settings
from service.testing import RedisServer

pytestmark = pytest.mark.slow  # fault injection against real redis-servers
from service.worker import Worker


def a_job(steps: int = 4, store: bool = False, deadline_s: float = 600.0, prompt: str = "a red circle") -> Job:
    now = time.time()
    return Job(id=uuid.uuid4().hex, endpoint="txt2img", model="shapes", steps=steps, stochastic=False, format="png", created=now,
               deadline=now + deadline_s, store_result=store, items=[JobItem(seed=1, guidance=1.0, prompt=prompt)])


class FakeRunner:
    """Records what it runs (job ids per batch); `during` is called with each batch, in its thread."""

    def __init__(self, during=None):
        self.batches, self.during, self.lock = [], during, threading.Lock()

    @property
    def ran(self) -> list[str]:
        return [j for b in self.batches for j in b]

    def run(self, jobs, on_event=None):
        with self.lock:
            self.batches.append([j.id for j in jobs])
        if self.during:
            self.during(jobs)
        return [JobResult(status="succeeded", model=j.model, steps=j.steps, images=["img"]) for j in jobs]


def with_queue(redis_url: str, body):
    async def main():
        client = aioredis.from_url(redis_url)
        queue = RedisQueue(client, prefix=f"q-{uuid.uuid4().hex[:8]}", job_ttl_s=120)
        await queue.ensure_group()
        # takeover waits until Redis has been up for the idle time, and INFO counts whole
        # seconds: a server started less than a second ago takes nothing over yet
        while int((await client.info("server"))["uptime_in_seconds"]) < 1:
            await asyncio.sleep(0.05)
        try:
            return await body(queue, client)
        finally:
            await client.aclose()

    return asyncio.run(main())


async def serve(workers: list[Worker], until, timeout_s: float = 60.0):
    """Run workers until `until()` (a coroutine function) is true."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    try:
        deadline = time.monotonic() + timeout_s
        while not await until():
            assert time.monotonic() < deadline, "timed out"
            assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def test_a_slow_workers_requests_run_once(redis_server):
    """Batches (1 s) far slower than the takeover time (0.4 s): a live worker keeps its requests."""

    async def body(queue, client):
        jobs = [a_job(steps=s) for s in (1, 2, 4, 8, 1, 2)]  # several batches per gather
        for j in jobs:
            await queue.submit(j, 100)
        runner = FakeRunner()
        settings = Settings(claim_idle_ms=400, max_wait_ms=50, max_batch_size=8, test_batch_delay_s=1.0, heartbeat_s=0.2)
        results = {}

        async def all_done():
            for j in jobs:
                if j.id not in results:
                    r = await queue.handed_over(j.id)
                    if r is not None:
                        results[j.id] = r
            return len(results) == len(jobs)

        await serve([Worker(settings, queue, runner, name="w1"), Worker(settings, queue, runner, name="w2")], all_done)
        assert sorted(runner.ran) == sorted(j.id for j in jobs)  # each exactly once
        assert all(r.status == "succeeded" for r in results.values())
        assert await queue.depth() == 0

    with_queue(redis_server.url, body)


def test_without_the_refresh_the_slow_workers_requests_would_run_twice(redis_server, monkeypatch):
    """The control of the test above: the same slow batches with the refresh switched off are
    taken over and run twice, so that test can see the failure it guards against."""

    async def no_refresh(self, held):
        await asyncio.Event().wait()

    monkeypatch.setattr(Worker, "_keep_fresh", no_refresh)

    async def body(queue, client):
        jobs = [a_job(steps=s) for s in (1, 2, 4, 8, 1, 2)]
        for j in jobs:
            await queue.submit(j, 100)
        runner = FakeRunner()
        settings = Settings(claim_idle_ms=400, max_wait_ms=50, max_batch_size=8, test_batch_delay_s=1.0, heartbeat_s=0.2)
        done = set()

        async def all_done():
            for j in jobs:
                if j.id not in done and await queue.handed_over(j.id) is not None:
                    done.add(j.id)
            return len(done) == len(jobs) and await queue.depth() == 0

        await serve([Worker(settings, queue, runner, name="w1"), Worker(settings, queue, runner, name="w2")], all_done)
        assert len(runner.ran) > len(jobs)  # some ran twice

    with_queue(redis_server.url, body)


def test_nothing_is_taken_over_until_a_restarted_redis_has_been_up_for_the_takeover_time():
    """Redis SIGKILLed and restarted from its append-only file after a downtime longer than the
    takeover time: every pending entry then looks idle (a live worker's too, which could not
    refresh it meanwhile). Takeover waits until Redis has been up that long, giving live workers
    time to refresh; an entry still untouched then is taken (its worker is really gone)."""
    server = RedisServer(appendonly=True)
    try:
        async def body(queue, client):
            j = a_job()
            await queue.submit(j, 10)
            await queue.read("owner", 1, block_ms=None)
            server.stop()
            await asyncio.sleep(2.5)  # downtime > the takeover time
            server.start()
            for _ in range(3):  # the pooled connections died with the server: reconnect
                try:
                    await client.ping()
                    break
                except RedisConnectionError:
                    pass
            idle_ms = (await client.xpending_range(queue.stream, "workers", min="-", max="+", count=1))[0]["time_since_delivered"]
            assert idle_ms >= 2000  # looks stale...
            assert await queue.claim("thief", 2000, 1) == []  # ...but Redis has just started
            await asyncio.sleep(2.2)
            assert [e.job.id for e in await queue.claim("thief", 2000, 1)] == [j.id]  # nobody refreshed it: gone

        with_queue(server.url, body)
    finally:
        server.stop()


def test_takeover_reaches_a_dead_workers_entry_behind_many_live_ones(redis_server):
    async def body(queue, client):
        live = [a_job() for _ in range(12)]
        for j in live:
            await queue.submit(j, 100)
        await queue.read("live", 12, block_ms=None)
        stale = a_job()
        await queue.submit(stale, 100)
        await queue.read("dead", 1, block_ms=None)
        await asyncio.sleep(0.15)
        claimed = []
        for _ in range(3):  # XAUTOCLAIM looks at 10 entries per call of count 1
            await queue.touch("live", [e.stream_id for e in await _pending(client, queue, "live")])
            claimed += [e.job.id for e in await queue.claim("w", 100, 1)]
        assert claimed == [stale.id]

    with_queue(redis_server.url, body)


async def _pending(client, queue, consumer):
    rows = await client.xpending_range(queue.stream, "workers", min="-", max="+", count=100, consumername=consumer)
    return [SimpleNamespace(stream_id=r["message_id"].decode()) for r in rows]


def test_a_redis_error_mid_batch_resumes_without_a_takeover(redis_server, monkeypatch):
    """A Redis error between gathering and running: the worker runs what it holds once Redis
    answers, as the same delivery, instead of waiting for a takeover that counts against it."""

    async def body(queue, client):
        j = a_job(store=True)  # an asynchronous job is marked running before it runs (a synchronous one: beside it)
        await queue.submit(j, 10)
        failures = [RedisTimeoutError("Timeout reading from socket")]
        real_start = RedisQueue.start

        async def flaky_start(self, job_ids, consumer):
            if failures:
                raise failures.pop()
            return await real_start(self, job_ids, consumer)

        monkeypatch.setattr(RedisQueue, "start", flaky_start)
        runner = FakeRunner()
        worker = Worker(Settings(claim_idle_ms=30_000, max_wait_ms=0), queue, runner, name="w")
        seen = []
        real_process = worker.process

        async def process(entries):
            seen.append([e.deliveries for e in entries])
            await real_process(entries)

        worker.process = process
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        give_up = time.monotonic() + 5  # a takeover could come only after 30 s
        while (result := await queue.result(j.id)) is None and time.monotonic() < give_up:
            await asyncio.sleep(0.02)
        stop.set()
        await task
        assert result is not None and result.status == "succeeded" and runner.ran == [j.id]
        assert seen == [[1], [1]]  # the same delivery, twice processed, run once

    with_queue(redis_server.url, body)


HUNG_SETTINGS = Settings(claim_idle_ms=200, max_wait_ms=0, batch_timeout_s=0.5, heartbeat_s=0.2)


def hanging_runner() -> tuple[FakeRunner, threading.Event]:
    """A runner whose first batch hangs until the event is set (10 s at most)."""
    hang, first = threading.Event(), []

    def during(jobs):
        if not first:
            first.append(1)
            hang.wait(10)

    return FakeRunner(during=during), hang


def test_a_hung_batch_is_left_to_another_worker(redis_server):
    async def body(queue, client):
        j = a_job()
        await queue.submit(j, 10)
        runner, hang = hanging_runner()  # the first worker to run it hangs
        settings = HUNG_SETTINGS
        stop = asyncio.Event()
        tasks = [asyncio.create_task(Worker(settings, queue, runner, name=n).run(stop)) for n in ("w1", "w2")]
        result = await queue.wait(j.id, 8)
        hang.set()
        stop.set()
        await asyncio.gather(*tasks)
        assert result is not None and result.status == "succeeded"
        assert runner.ran == [j.id, j.id]  # the hung run, and the one that answered

    with_queue(redis_server.url, body)


def test_the_requests_behind_a_hung_batch_are_left_to_another_worker_too(redis_server):
    """Two batches gathered together (two step counts), the first hangs: the second, which would
    wait behind it, is no longer refreshed either, so another worker answers both."""

    async def body(queue, client):
        jobs = [a_job(steps=4), a_job(steps=2)]
        for j in jobs:
            await queue.submit(j, 10)
        runner, hang = hanging_runner()
        settings = HUNG_SETTINGS
        hung = Worker(settings, queue, runner, name="w1")
        entries = await hung.gather()
        assert len(entries) == 2
        running = asyncio.create_task(hung.process(entries))
        stop = asyncio.Event()
        other = asyncio.create_task(Worker(settings, queue, runner, name="w2").run(stop))
        results = [await queue.wait(j.id, 6) for j in jobs]
        hang.set()
        stop.set()
        await asyncio.gather(running, other)
        assert [r is not None and r.status for r in results] == ["succeeded", "succeeded"]

    with_queue(redis_server.url, body)


def test_the_first_finish_wins(redis_server):
    async def body(queue, client):
        j = a_job(store=True)
        await queue.submit(j, 10)
        (entry,) = await queue.read("w1", 10, block_ms=None)
        await queue.start([j.id], "w1")
        ok = JobResult(status="succeeded", images=["first"])
        assert await queue.finish([(entry, ok)]) == [True]
        assert await queue.finish([(entry, JobResult.failed(500, "late failure"))]) == [False]
        assert await queue.finish([(entry, JobResult.failed(410, "cancelled"))]) == [False]
        assert await queue.result(j.id) == ok and (await queue.status(j.id))["status"] == "succeeded"

    with_queue(redis_server.url, body)


def test_a_request_that_kills_its_workers_is_dead_lettered(redis_server):
    async def body(queue, client):
        poison = a_job(prompt="poison")
        await queue.submit(poison, 10)
        await queue.read("dead-0", 10, block_ms=None)  # delivery 1: its worker dies
        for k in (1, 2):  # deliveries 2 and 3: taken over, and the workers die again
            await asyncio.sleep(0.15)
            assert [e.deliveries for e in await queue.claim(f"dead-{k}", 100, 10)] == [k + 1]
        await asyncio.sleep(0.15)
        runner = FakeRunner()
        worker = Worker(Settings(claim_idle_ms=100, max_deliveries=3, max_wait_ms=0), queue, runner, name="w")
        entries = await worker.gather()
        assert [e.deliveries for e in entries] == [4]
        await worker.process(entries)
        assert runner.ran == []
        result = await queue.wait(poison.id, 1)
        assert (result.status, result.code) == ("failed", 500) and "delivered 4 times" in result.error
        (dead,) = await client.xrange(queue.dead)
        assert poison.id in dead[1][b"job"].decode() and b"delivered 4 times" in dead[1][b"reason"]
        assert await queue.depth() == 0
        await worker.process(entries)  # a second finish of the same entries: no second dead letter
        assert len(await client.xrange(queue.dead)) == 1

    with_queue(redis_server.url, body)


def test_a_finish_whose_reply_was_lost_still_counts_as_won(redis_server, monkeypatch):
    """Redis ran the finish but its reply was lost: the worker sends it again, and that try must
    count as the win (the dead letter is counted once, as a webhook would be sent once), not as
    a loss to some other worker."""
    from service import metrics

    async def body(queue, client):
        poison = a_job(prompt="poison")
        await queue.submit(poison, 10)
        await queue.read("dead-0", 10, block_ms=None)
        await asyncio.sleep(0.15)
        real_finish, lost = RedisQueue.finish, []

        async def reply_lost(self, done, dead_letter=None, token=None):
            won = await real_finish(self, done, dead_letter=dead_letter, token=token)
            if not lost:
                lost.append(won)
                raise RedisConnectionError("Connection closed by server.")
            return won

        monkeypatch.setattr(RedisQueue, "finish", reply_lost)
        worker = Worker(Settings(claim_idle_ms=100, max_deliveries=1, max_wait_ms=0), queue, FakeRunner(), name="w")
        entries = await worker.gather()
        assert [e.deliveries for e in entries] == [2]
        before = metrics.DEAD_LETTERS._value.get()
        await worker.process(entries)
        assert lost == [[True]] and metrics.DEAD_LETTERS._value.get() == before + 1
        assert len(await client.xrange(queue.dead)) == 1 and await queue.depth() == 0

    with_queue(redis_server.url, body)


def test_a_cancelled_request_is_not_dead_lettered(redis_server):
    async def body(queue, client):
        j = a_job()
        await queue.submit(j, 10)
        await queue.read("dead-0", 10, block_ms=None)
        await queue.start([j.id], "dead-0")
        assert await queue.cancel(j.id) == "cancelled"  # running: its entry stays until a worker ends it
        await asyncio.sleep(0.15)
        worker = Worker(Settings(claim_idle_ms=100, max_deliveries=1, max_wait_ms=0), queue, FakeRunner(), name="w")
        entries = await worker.gather()
        assert [e.deliveries for e in entries] == [2]
        await worker.process(entries)
        assert await client.xrange(queue.dead) == [] and await queue.depth() == 0

    with_queue(redis_server.url, body)


def test_taken_over_requests_run_alone(redis_server):
    async def body(queue, client):
        stale = a_job()
        await queue.submit(stale, 10)
        await queue.read("dead", 10, block_ms=None)
        fresh = [a_job(), a_job()]
        for j in fresh:
            await queue.submit(j, 10)
        await asyncio.sleep(0.15)
        runner = FakeRunner()
        worker = Worker(Settings(claim_idle_ms=100, max_wait_ms=0), queue, runner, name="w")
        entries = await worker.gather()
        entries += await worker.gather() if len(entries) < 3 else []
        await worker.process(entries)
        assert runner.batches == [[stale.id], [fresh[0].id, fresh[1].id]]

    with_queue(redis_server.url, body)


def test_a_redis_refusing_writes_does_not_end_the_worker():
    server = RedisServer()
    try:
        async def body(queue, client):
            j = a_job()
            await queue.submit(j, 10)
            await client.config_set("maxmemory-policy", "noeviction")
            await client.config_set("maxmemory", 1)  # every write now answers OOM
            runner = FakeRunner()
            worker = Worker(Settings(claim_idle_ms=200, max_wait_ms=0, heartbeat_s=0.2), queue, runner, name="w")
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            await asyncio.sleep(2.0)
            assert not task.done(), task.exception()  # backing off, not dead
            assert runner.ran == []
            await client.config_set("maxmemory", 0)
            result = await queue.wait(j.id, 20)
            stop.set()
            await task
            assert result is not None and result.status == "succeeded" and runner.ran == [j.id]

        with_queue(server.url, body)
    finally:
        server.stop()


def test_results_are_handed_over_or_stored_once(redis_server):
    async def body(queue, client):
        sync, stored = a_job(), a_job(store=True)
        for j in (sync, stored):
            await queue.submit(j, 10)
        worker = Worker(Settings(max_wait_ms=0), queue, FakeRunner(), name="w")
        await worker.process(await worker.gather())
        assert not await client.exists(queue.result_key(sync.id))  # nobody could read it there
        assert 0 < await client.ttl(queue.done_key(sync.id)) <= HANDOVER_TTL_S
        assert (await queue.wait(sync.id, 1)).status == "succeeded"
        assert not await client.exists(queue.done_key(sync.id))  # taken: gone
        assert not await client.exists(queue.done_key(stored.id))  # one copy only
        assert (await queue.result(stored.id)).status == "succeeded" and await client.ttl(queue.result_key(stored.id)) > 60

    with_queue(redis_server.url, body)


def test_a_request_cancelled_behind_a_batch_does_not_run(redis_server):
    async def body(queue, client):
        first, second = a_job(steps=1), a_job(steps=2, store=True)  # two batches in one gather; jobs are what clients cancel
        for j in (first, second):
            await queue.submit(j, 10)
        loop = asyncio.get_running_loop()
        runner = FakeRunner(during=lambda jobs: asyncio.run_coroutine_threadsafe(queue.cancel(second.id), loop).result() if jobs[0].id == first.id else None)
        worker = Worker(Settings(max_wait_ms=0), queue, runner, name="w")
        await worker.process(await worker.gather())
        assert runner.ran == [first.id]
        assert (await queue.status(second.id))["status"] == "cancelled" and await queue.result(second.id) is None
        assert await queue.depth() == 0

    with_queue(redis_server.url, body)


def test_a_synchronous_batch_is_marked_running_while_it_runs(redis_server, monkeypatch):
    """Synchronous requests are marked running beside the model run, off their path: the mark
    lands while they run, one cancelled meanwhile keeps its cancel, and a mark Redis refuses
    neither loses the results nor runs the batch twice."""

    async def body(queue, client):
        loop = asyncio.get_running_loop()
        marked, cancelled, kept = a_job(), a_job(), a_job()

        def during(jobs):
            ids = [j.id for j in jobs]
            if marked.id in ids:  # the mark comes while the batch runs
                give_up = time.monotonic() + 5
                while asyncio.run_coroutine_threadsafe(queue.status(marked.id), loop).result()["status"] != "running":
                    assert time.monotonic() < give_up, "never marked running"
                    time.sleep(0.005)
            if cancelled.id in ids:
                asyncio.run_coroutine_threadsafe(queue.cancel(cancelled.id), loop).result()

        runner = FakeRunner(during=during)
        worker = Worker(Settings(max_wait_ms=0), queue, runner, name="w")
        for j in (marked, cancelled):
            await queue.submit(j, 10)
            await worker.process(await worker.gather())
        assert (await queue.wait(marked.id, 1)).status == "succeeded"
        assert (await queue.wait(cancelled.id, 1)).code == 409  # the cancel's answer, not the batch's result

        async def refused(self, job_ids, consumer):
            raise RedisTimeoutError("Timeout reading from socket")

        monkeypatch.setattr(RedisQueue, "start", refused)
        await queue.submit(kept, 10)
        await worker.process(await worker.gather())
        assert (await queue.wait(kept.id, 1)).status == "succeeded"
        assert runner.ran == [marked.id, cancelled.id, kept.id] and await queue.depth() == 0

    with_queue(redis_server.url, body)


def test_cancelling_a_running_request_keeps_it_counted_until_its_worker_finishes(redis_server):
    async def body(queue, client):
        j = a_job()
        await queue.submit(j, 1)
        (entry,) = await queue.read("w", 10, block_ms=None)
        await queue.start([j.id], "w")
        assert await queue.cancel(j.id) == "cancelled"
        assert await queue.depth() == 1  # still running: the 429 bound counts it
        assert await queue.finish([(entry, JobResult(status="succeeded"))]) == [False]
        assert await queue.depth() == 0

    with_queue(redis_server.url, body)


def test_submit_is_idempotent_and_a_timed_out_submit_is_retried_once(redis_server):
    async def body(queue, client):
        j = a_job()
        assert await queue.submit(j, 10) == await queue.submit(j, 10)
        assert await queue.depth() == 1
        other = a_job()
        calls = []

        async def flaky_submit(job, capacity):  # queued, but the answer never came back
            calls.append(job.id)
            sid = await RedisQueue.submit(queue, job, capacity)
            if len(calls) == 1:
                raise RedisTimeoutError("Timeout reading from socket")
            return sid

        state = SimpleNamespace(queue=SimpleNamespace(submit=flaky_submit), settings=Settings())
        await enqueue(state, other)
        assert calls == [other.id, other.id] and await queue.depth() == 2

    with_queue(redis_server.url, body)


def test_a_submit_that_times_out_for_longer_than_a_few_seconds_is_still_retried(redis_server):
    """Redis holds every write for 6 s (CLIENT PAUSE): the submits time out on the client, the
    first one is queued when the pause ends, the retry finds it, and nothing is queued twice."""

    async def body(queue, client):
        short = aioredis.from_url(redis_server.url, socket_timeout=0.3)
        try:
            j = a_job()
            await client.execute_command("CLIENT", "PAUSE", 6000, "WRITE")
            state = SimpleNamespace(queue=RedisQueue(short, queue.prefix, queue.job_ttl_s), settings=Settings())
            started = time.monotonic()
            sid = await enqueue(state, j)
            assert time.monotonic() - started > 5.5
            assert sid and await queue.depth() == 1
        finally:
            await short.aclose()

    with_queue(redis_server.url, body)


def test_a_submit_retried_after_its_result_was_taken_queues_nothing(redis_server):
    """The retry of a submit whose answer was lost can come after the job ran and its waiter
    took the result: the job's status outlives the hand-over, so nothing runs twice."""

    async def body(queue, client):
        j = a_job()
        sid = await queue.submit(j, 10)
        runner = FakeRunner()
        worker = Worker(Settings(max_wait_ms=0), queue, runner, name="w")
        await worker.process(await worker.gather())
        assert (await queue.wait(j.id, 1)).status == "succeeded"
        assert await queue.submit(j, 10) == sid and await queue.depth() == 0
        assert await worker.gather() == [] and runner.ran == [j.id]
        assert 0 < await client.ttl(queue.job_key(j.id)) <= HANDOVER_TTL_S  # it expires soon all the same

    with_queue(redis_server.url, body)


def test_a_result_that_lands_at_the_deadline_is_returned(redis_server):
    async def body(queue, client):
        j = a_job(deadline_s=1.0)
        await queue.submit(j, 10)
        worker = Worker(Settings(max_wait_ms=0), queue, FakeRunner(), name="w")
        await worker.process(await worker.gather())

        class LateQueue(RedisQueue):  # the wait ended a moment before the result landed
            async def wait(self, job_id, timeout_s):
                return None

        late = LateQueue(client, queue.prefix, queue.job_ttl_s)
        state = SimpleNamespace(queue=late, settings=Settings())
        result = await run_job(SimpleNamespace(state=SimpleNamespace()), state, j)
        assert result.status == "succeeded"

    with_queue(redis_server.url, body)


def test_departed_consumers_are_removed(redis_server):
    async def body(queue, client):
        for name in ("ghost-1", "ghost-2"):  # workers that are gone
            await client.xgroup_createconsumer(queue.stream, "workers", name)
        j = a_job()
        await queue.submit(j, 10)
        await queue.read("holder", 1, block_ms=None)  # holds an entry: must stay
        await asyncio.sleep(0.3)
        await client.xgroup_createconsumer(queue.stream, "workers", "w")  # a worker that just started
        assert sorted(await queue.prune_consumers(idle_ms=200)) == ["ghost-1", "ghost-2"]
        await queue.leave("w")
        names = {c["name"].decode() for c in await client.xinfo_consumers(queue.stream, "workers")}
        assert names == {"holder"}

    with_queue(redis_server.url, body)


def test_clients_notice_a_dead_connection():
    kwargs = connect("redis://127.0.0.1:6399/0").connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] and kwargs["socket_keepalive"] and kwargs["socket_connect_timeout"]
    assert connect("redis://127.0.0.1:6399/0", blocking=True).connection_pool.connection_kwargs["socket_keepalive"]


def test_a_redis_restart_fails_no_command_on_the_pooled_connections():
    """After a restart every pooled connection is dead: each command finds out and is sent again
    on a new connection, instead of failing once per pooled connection (a 503 with Redis up)."""
    server = RedisServer()

    async def main():
        client, waiter = connect(server.url), connect(server.url, blocking=True)
        queue = RedisQueue(client, prefix="restart", waiter=waiter)
        await asyncio.gather(client.set("a", 1), client.blpop(["nothing"], timeout=0.1), waiter.ping())  # two pooled connections, one waiter
        server.stop()
        server.start()
        try:
            assert await client.ping() and await client.ping() and await client.get("a") is None  # empty after the restart
            await queue.ensure_group()
            j = a_job()
            await queue.submit(j, 10)
            assert await queue.depth() == 1
            assert await queue.handed_over(j.id) is None and await waiter.ping()
        finally:
            await client.aclose()
            await waiter.aclose()

    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_readyz_knows_when_the_in_process_workers_have_stopped():
    from service.state import State

    async def main():
        finished = asyncio.create_task(asyncio.sleep(0))
        await finished
        state = State(settings=Settings(), registry=None, queue=None, workers=1, ready=True, tasks=[finished])
        assert state.workers_stopped()
        state.stop.set()  # shutting down: expected
        assert not state.workers_stopped()
        assert not State(settings=Settings(), registry=None, queue=None, workers=0, tasks=[finished]).workers_stopped()

    asyncio.run(main())


def test_a_synchronous_request_queued_longer_than_the_job_ttl_is_still_answered(redis_server):
    """Its status must outlive its deadline, not the (shorter) job TTL: an expired status would
    make the worker drop it silently and its request wait for nothing until 504."""

    async def body(queue, client):
        short = RedisQueue(client, queue.prefix, job_ttl_s=1)
        j = a_job(deadline_s=30)
        await short.submit(j, 10)
        await asyncio.sleep(2.2)  # longer than the job TTL
        worker = Worker(Settings(max_wait_ms=0), short, FakeRunner(), name="w")
        await worker.process(await worker.gather())
        result = await short.wait(j.id, 1)
        assert result is not None and result.status == "succeeded"

    with_queue(redis_server.url, body)


def test_takeover_works_where_redis_refuses_info(redis_server):
    """A managed Redis may forbid INFO: takeover then goes on without the restart wait."""

    async def body(queue, client):
        await client.execute_command("ACL", "SETUSER", "no-info", "on", "nopass", "~*", "&*", "+@all", "-info")
        url = redis_server.url.replace("redis://", "redis://no-info@")
        limited = aioredis.from_url(url)
        try:
            q = RedisQueue(limited, queue.prefix, queue.job_ttl_s)
            j = a_job()
            await q.submit(j, 10)
            await q.read("dead", 1, block_ms=None)
            await asyncio.sleep(0.15)
            assert [e.job.id for e in await q.claim("w", 100, 1)] == [j.id]
        finally:
            await limited.aclose()

    with_queue(redis_server.url, body)
