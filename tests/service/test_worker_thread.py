"""The model thread: a runner is built, warmed up and run on one thread of its own (CUDA graphs
are kept per thread), a batch of synchronous requests is finished from it, and
FEWSTEP_CUDA_GRAPHS takes effect only where it can."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid

import pytest
import redis.asyncio as aioredis
import torch
from redis.exceptions import ConnectionError as RedisConnectionError

from model.builtin import BUILTIN_DIR
from service import worker as worker_module
from service.contract import Job, JobItem, JobResult
from service.queue import RedisQueue, connect_sync
from service.runner import Runner
from service.settings import Settings
from service.testing import free_port
from service.worker import Worker, load_runner

pytestmark = pytest.mark.usefixtures("probes")  # warm-ups here compile nothing real: no probes (tests/service/conftest.py)


class ThreadRecordingRunner:
    """Records the thread it was built on and the threads its batches ran on."""

    def __init__(self):
        self.built_on, self.ran_on = threading.get_ident(), []

    def run(self, jobs, on_event=None):
        self.ran_on.append(threading.get_ident())
        return [JobResult(status="succeeded", model=j.model, steps=j.steps, images=["img"]) for j in jobs]


def test_batches_run_on_the_thread_that_built_and_warmed_up_the_runner(redis_server, monkeypatch):
    monkeypatch.setattr(worker_module, "build_runner", lambda settings, paths, **kwargs: ThreadRecordingRunner())

    async def main():
        runner = await load_runner(Settings(), {})
        client = aioredis.from_url(redis_server.url)
        queue = RedisQueue(client, prefix=f"mt-{uuid.uuid4().hex[:8]}", job_ttl_s=60)
        await queue.ensure_group()
        workers = [Worker(Settings(max_wait_ms=0), queue, runner, name=f"w{k}") for k in range(2)]  # two workers share the runner
        try:
            for k in range(6):
                now = time.time()
                job = Job(id=uuid.uuid4().hex, endpoint="generate", model="shapes", steps=4, stochastic=False, format="png", created=now,
                          deadline=now + 60, store_result=k % 2 == 0, items=[JobItem(seed=k, guidance=1.0, class_label=k)])
                await queue.submit(job, 10)
                w = workers[k % 2]
                await w.process(await w.gather())
                assert (await queue.status(job.id))["status"] == "succeeded"
        finally:
            runner.thread.shutdown()
            await client.aclose()
        return runner

    runner = asyncio.run(main())
    assert runner.built_on != threading.get_ident() and runner.ran_on == [runner.built_on] * 6


class ThreadFinishes(RedisQueue):
    """Records the threads that finish from the model thread; `lose_reply`: Redis runs the
    finish, and the reply is lost on the way back."""

    lose_reply = False

    def finish_from_thread(self, done, token):
        self.finished_on.append(threading.get_ident())
        won = super().finish_from_thread(done, token)
        if self.lose_reply:
            raise RedisConnectionError("Connection closed by server.")
        return won

    async def finish(self, done, dead_letter=None, token=None):
        self.finished_on_loop += 1
        return await super().finish(done, dead_letter=dead_letter, token=token)


def _job(k: int, store_result: bool, webhook: str | None = None) -> Job:
    now = time.time()
    return Job(id=uuid.uuid4().hex, endpoint="generate", model="shapes", steps=4, stochastic=False, format="png", created=now, deadline=now + 60,
               store_result=store_result, webhook=webhook, items=[JobItem(seed=k, guidance=1.0, class_label=k)])


def _serve(redis_url: str, sync_url: str, jobs: list[Job], lose_reply: bool = False, monkeypatch=None):
    """Submit each job and let one worker run it while a request waits for the synchronous ones;
    returns what the waiters got, the queue, the runner and the webhooks delivered."""
    monkeypatch.setattr(worker_module, "build_runner", lambda settings, paths, **kwargs: ThreadRecordingRunner())
    delivered = []

    async def deliver(url, payload, settings):
        delivered.append(payload["id"])

    monkeypatch.setattr(worker_module.webhooks, "deliver", deliver)

    async def main():
        runner = await load_runner(Settings(), {})
        client, sync = aioredis.from_url(redis_url), connect_sync(sync_url)
        queue = ThreadFinishes(client, prefix=f"mt-{uuid.uuid4().hex[:8]}", job_ttl_s=60, sync=sync)
        queue.finished_on, queue.finished_on_loop, queue.lose_reply = [], 0, lose_reply
        await queue.ensure_group()
        worker = Worker(Settings(max_wait_ms=0), queue, runner, name="w")
        got = []
        try:
            for job in jobs:
                await queue.submit(job, 10)
                waiter = asyncio.create_task(queue.wait(job.id, 10)) if not job.store_result else None
                await worker.process(await worker.gather())
                got.append(await waiter if waiter else await queue.result(job.id))
            assert await queue.depth() == 0  # every entry acknowledged
        finally:
            runner.thread.shutdown()
            await client.aclose()
            queue.close_sync()
        return got, queue, runner

    got, queue, runner = asyncio.run(main())
    return got, queue, runner, delivered


def test_a_batch_of_synchronous_requests_is_finished_from_the_model_thread(redis_server, monkeypatch):
    jobs = [_job(0, store_result=False), _job(1, store_result=True), _job(2, store_result=False)]
    got, queue, runner, _ = _serve(redis_server.url, redis_server.url, jobs, monkeypatch=monkeypatch)
    assert [r.status for r in got] == ["succeeded"] * 3
    # the synchronous ones from the model thread, without a finish from the event loop; the
    # asynchronous one from the loop, after its progress events
    assert queue.finished_on == [runner.built_on] * 2 and queue.finished_on_loop == 1


def test_a_finish_the_model_thread_could_not_send_is_sent_from_the_event_loop(redis_server, monkeypatch):
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # the model thread's client reaches no Redis
    got, queue, _, _ = _serve(redis_server.url, nowhere, [_job(k, store_result=False) for k in range(2)], monkeypatch=monkeypatch)
    assert [r.status for r in got] == ["succeeded"] * 2 and queue.finished_on_loop == 2
    assert len(queue.finished_on) == 1  # after a failure the model thread does not try again for a while (each try may wait)


def test_a_batch_of_several_requests_is_finished_from_the_model_thread_also_after_redis_lost_its_scripts(redis_server, monkeypatch):
    monkeypatch.setattr(worker_module, "build_runner", lambda settings, paths, **kwargs: ThreadRecordingRunner())

    async def batch(queue, worker, jobs):
        for job in jobs:
            await queue.submit(job, 10)
        waiters = [asyncio.create_task(queue.wait(job.id, 10)) for job in jobs]
        await worker.process(await worker.gather())
        return [(await w).status for w in waiters]

    async def main():
        runner = await load_runner(Settings(), {})
        client, sync = aioredis.from_url(redis_server.url), connect_sync(redis_server.url)
        queue = ThreadFinishes(client, prefix=f"mt-{uuid.uuid4().hex[:8]}", job_ttl_s=60, sync=sync)
        queue.finished_on, queue.finished_on_loop = [], 0
        await queue.ensure_group()
        worker = Worker(Settings(max_wait_ms=0), queue, runner, name="w")
        try:
            assert await batch(queue, worker, [_job(0, False)]) == ["succeeded"]  # the finish script is loaded
            assert await batch(queue, worker, [_job(k, False) for k in (1, 2, 3)]) == ["succeeded"] * 3  # one batch of three
            assert len(queue.finished_on) == 2 and queue.finished_on_loop == 0
            await client.script_flush()  # as after a Redis restart: the model thread's EVALSHAs find no script, and load it
            assert await batch(queue, worker, [_job(k, False) for k in (4, 5)]) == ["succeeded"] * 2
            assert len(queue.finished_on) == 3 and queue.finished_on_loop == 0 and await queue.depth() == 0
        finally:
            runner.thread.shutdown()
            await client.aclose()
            queue.close_sync()

    asyncio.run(main())


def test_a_finish_from_the_model_thread_whose_reply_was_lost_still_counts_once(redis_server, monkeypatch):
    job = _job(0, store_result=False, webhook="http://127.0.0.1:9/hook")
    got, queue, _, delivered = _serve(redis_server.url, redis_server.url, [job], lose_reply=True, monkeypatch=monkeypatch)
    # the loop sends the finish again with the thread's token: it reports the first run's win,
    # so the job's webhook goes out once (a new token would report a loss: no webhook)
    assert got[0].status == "succeeded" and len(queue.finished_on) == 1 and queue.finished_on_loop == 1 and delivered == [job.id]


def test_cuda_graphs_are_not_used_off_a_gpu_or_without_compiling(caplog):
    paths = {"shapes": BUILTIN_DIR / "shapes"}
    with caplog.at_level(logging.WARNING, logger="fewstep.runner"):
        eager = Runner(paths, device="cpu", fixed_batch=4, compile=False, cuda_graphs=True)
        compiled = Runner(paths, device="cpu", fixed_batch=4, compile=True, cuda_graphs=True)
    assert not eager.cuda_graphs and not compiled.cuda_graphs
    assert compiled.pipelines["shapes"].compile_mode == "default"
    assert sum("FEWSTEP_CUDA_GRAPHS needs compiled networks on a CUDA device" in r.message for r in caplog.records) == 2


@pytest.mark.parametrize("failing", ["cpp wrapper", "every compile"])
def test_a_failed_compile_falls_back_a_step_at_a_time(monkeypatch, caplog, tmp_path, failing):
    """A family whose compiled package fails to build is compiled with the Python wrapper; one that
    fails to compile at all runs eagerly; each says so and the service still starts."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # a cache of its own: a start records how its compile ended there
    runner = Runner({"shapes": BUILTIN_DIR / "shapes"}, device="cpu", fixed_batch=4, compile=True)
    pipe = runner.pipelines["shapes"]
    assert pipe.compile and pipe.cpp_wrapper
    tried = []

    def warm(p):
        tried.append((p.compile, p.cpp_wrapper))
        if p.compile and (p.cpp_wrapper or failing == "every compile"):
            raise RuntimeError("C++ compile error: something went wrong")

    monkeypatch.setattr(Runner, "_warm", staticmethod(warm))
    with caplog.at_level(logging.WARNING, logger="fewstep.runner"):
        runner.warm_up()
    if failing == "cpp wrapper":
        assert tried == [(True, True), (True, False)] and pipe.compile and not pipe.cpp_wrapper
        assert "compiling shapes failed (RuntimeError: C++ compile error: something went wrong); it is compiled again with inductor's Python wrapper" in caplog.text
    else:
        assert tried == [(True, True), (True, False), (False, False)] and not pipe.compile and not runner.compiles
        assert caplog.text.count("compiling shapes failed") == 2 and "it runs eagerly" in caplog.text


@pytest.mark.parametrize("value,expected", [(None, True), ("0", False)])
def test_fewstep_cpp_wrapper_chooses_the_compiled_wrapper(monkeypatch, value, expected):
    monkeypatch.delenv("FEWSTEP_COMPILE", raising=False)
    monkeypatch.delenv("FEWSTEP_CPP_WRAPPER", raising=False)
    if value is not None:
        monkeypatch.setenv("FEWSTEP_CPP_WRAPPER", value)
    monkeypatch.setattr(Runner, "warm_up", lambda self, processes=1, on_stage=None: None)  # no compiling: only which wrapper was asked for
    runner = worker_module.build_runner(Settings(device="cpu"), {"shapes": BUILTIN_DIR / "shapes"})
    assert runner.compiles and runner.pipelines["shapes"].cpp_wrapper is expected


def test_a_warm_up_that_fails_eagerly_too_raises(monkeypatch):
    runner = Runner({"shapes": BUILTIN_DIR / "shapes"}, device="cpu", fixed_batch=4, compile=True)

    def warm(p):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Runner, "_warm", staticmethod(warm))
    with pytest.raises(RuntimeError, match="out of memory"):
        runner.warm_up()
    assert not runner.pipelines["shapes"].compile


def test_a_bad_compile_mode_is_refused():
    from model.family import Family
    from model.pipeline import Pipeline

    with pytest.raises(ValueError, match="compile_mode must be one of default, reduce-overhead"):
        Pipeline(Family(BUILTIN_DIR / "shapes"), fixed_batch=4, compile=True, compile_mode="max-speed")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_students_match_eager_and_keep_earlier_outputs():
    """On a GPU: a network under CUDA graphs keeps an output the next replay would overwrite
    (it is copied out), and the students give the eager pixels within float16 rounding, the same
    pixels for a seed whatever its batch mates."""
    from model.family import Family
    from model.pipeline import Pipeline, Request

    family = Family(BUILTIN_DIR / "shapes", "cuda", torch.float16)
    eager = Pipeline(family, fixed_batch=4)
    graphs = Pipeline(family, fixed_batch=4, compile=True, compile_mode="reduce-overhead")
    batch = [Request(seed=k, guidance=float(k % 3), class_label=k % 14) if k % 2 else Request(seed=k, guidance=1.0, prompt="a red circle") for k in range(6)]
    net = graphs.network(family.student(4))
    cond = graphs.cond(batch[:4])
    t, gamma = torch.full((4,), 0.5, device="cuda", dtype=torch.float16), torch.ones(4, device="cuda", dtype=torch.float16)
    z1, z2 = (torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(k)).to("cuda", torch.float16) for k in (1, 2))
    for _ in range(3):  # warm up, record, replay
        first = net(z1, t, cond, gamma)
    kept = first.clone()
    second = net(z2, t, cond, gamma)  # a replay writes the graph's output memory again
    assert torch.equal(first, kept), "a later replay overwrote an earlier output"
    assert (second - first).abs().max() > 0.1
    together = graphs.generate(batch, steps=4)
    for k, r in enumerate(batch):
        assert torch.equal(graphs.generate([r], steps=4)[0], together[k])
    diff = (together.float() - eager.generate(batch, steps=4).float()).abs().max().item()
    assert diff < 2e-2, f"CUDA graphs differ from eager by {diff}"


class SlowRunner:
    def run(self, jobs, on_event=None):
        time.sleep(1.0)
        return [JobResult(status="succeeded", model=j.model, steps=j.steps, images=["img"]) for j in jobs]


def test_an_api_process_that_stops_lets_its_worker_end_the_batch_it_runs(redis_server, monkeypatch):
    """Stopping `python -m service` while a batch runs: its worker ends the batch and records it,
    instead of being cancelled and leaving the request to a takeover, as another delivery."""
    from starlette.testclient import TestClient

    from service.app import create_app

    monkeypatch.setattr(worker_module, "build_runner", lambda settings, paths, **kwargs: SlowRunner())
    prefix = f"grace-{uuid.uuid4().hex[:8]}"
    with TestClient(create_app(Settings(queue_prefix=prefix), redis_url=redis_server.url, workers=1)) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.05)
        r = client.post("/v1/jobs", json={"endpoint": "txt2img", "request": {"prompt": "a red cross", "seed": 3}})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        while client.get(f"/v1/jobs/{job_id}").json()["status"] != "running":
            assert time.monotonic() < deadline, "never ran"
            time.sleep(0.02)
    # the app has stopped, its worker's batch (1 s) under way when it did

    async def stored():
        redis_client = aioredis.from_url(redis_server.url)
        try:
            queue = RedisQueue(redis_client, prefix=prefix)
            return await queue.result(job_id), await queue.depth()
        finally:
            await redis_client.aclose()

    result, depth = asyncio.run(stored())
    assert result is not None and result.status == "succeeded" and depth == 0
