"""The worker: read requests from the stream, batch them, run them, store results, acknowledge.

`python -m service.worker` runs one worker alone against REDIS_URL (several may run on
several machines); `python -m service` runs one inside the API process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import time
import uuid

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import metrics
from .batching import batch_key, plan_batches
from .contract import JobResult
from .queue import Entry, RedisQueue
from .runner import Runner
from .settings import Settings

log = logging.getLogger("fewstep.worker")
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, settings: Settings, queue: RedisQueue, runner: Runner, name: str | None = None):
        self.settings, self.queue, self.runner = settings, queue, runner
        self.name = name or worker_name()
        self._last_claim = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        beat = asyncio.create_task(self._heartbeat(stop))
        backoff = 0.1
        try:
            while not stop.is_set():
                try:
                    await self.queue.ensure_group()
                    while not stop.is_set():
                        entries = await self.gather()
                        if entries:
                            await self.process(entries)
                        backoff = 0.1
                except REDIS_DOWN as exc:
                    log.warning("worker %s: Redis unreachable (%s); retrying in %.1fs", self.name, exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):  # Redis restarted empty: recreate the group
                        raise
        finally:
            beat.cancel()
            try:
                await self.queue.leave(self.name)
            except REDIS_DOWN:
                pass

    async def gather(self) -> list[Entry]:
        """Up to max_batch_size entries: stale ones of dead workers first, then new ones."""
        s = self.settings
        entries: list[Entry] = []
        now = time.monotonic()
        if now - self._last_claim > s.claim_idle_ms / 4000:
            self._last_claim = now
            entries = await self.queue.claim(self.name, s.claim_idle_ms, s.max_batch_size)
            if entries:
                log.info("worker %s took over %d unacknowledged requests", self.name, len(entries))
        if not entries:
            entries = await self.queue.read(self.name, s.max_batch_size, block_ms=500)
        if not entries:
            return []
        # fill the batch: sweep what is already queued, then wait (here, not in Redis: a short
        # BLOCK times out only at Redis's next cron tick, up to 1/hz = 100 ms late)
        until = time.monotonic() + s.max_wait_ms / 1000
        while len(entries) < s.max_batch_size:
            more = await self.queue.read(self.name, s.max_batch_size - len(entries), block_ms=None)
            if more:
                entries += more
                continue
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(remaining)
        return entries

    async def process(self, entries: list[Entry]) -> None:
        now = time.time()
        done, ready, valid = [], [], []
        for e in entries:
            if e.job is not None:
                valid.append(e)
            else:  # not a job of this format: fail it (its waiter learns why) and acknowledge it
                log.warning("worker %s: %s", self.name, e.problem)
                done.append((e, JobResult.failed(500, f"the worker could not read this request: {e.problem}")))
        started = await self.queue.start([e.job.id for e in valid], self.name) if valid else []
        for entry, ok in zip(valid, started):
            job = entry.job
            if not ok:  # cancelled, or expired: acknowledge and drop
                done.append((entry, JobResult.failed(410, "cancelled")))
            elif job.deadline < now:
                done.append((entry, JobResult.failed(504, "the request's deadline passed before a worker could run it")))
            else:
                metrics.QUEUE_WAIT.observe(max(0.0, now - job.created))
                ready.append(entry)
        if done:
            await self.queue.finish(done)
        for batch in plan_batches(ready, self.settings.max_batch_size, key=lambda e: batch_key(e.job)):
            jobs = [e.job for e in batch]
            try:
                results = await asyncio.to_thread(self.runner.run, jobs)
            except Exception as exc:
                log.exception("worker %s: batch of %d failed", self.name, len(jobs))
                results = [JobResult.failed(500, f"the worker failed on this batch ({type(exc).__name__})")] * len(jobs)
            await self.queue.finish(list(zip(batch, results)))

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.queue.heartbeat(self.name)
            except REDIS_DOWN:
                pass
            await asyncio.sleep(self.settings.heartbeat_s)


def build_runner(settings: Settings, paths: dict, *, beside_api: bool = False) -> Runner:
    """Load and warm up the models. Beside the API on the CPU, torch gets all cores but one:
    its OpenMP threads spin, and a starved event loop delivers requests late, in small batches."""
    import torch

    runner = Runner(paths, device=settings.device, dtype=settings.dtype, fixed_batch=settings.fixed_batch)
    threads = settings.torch_threads
    if threads is None and beside_api and runner.device == "cpu":
        threads = max(1, (os.cpu_count() or 1) - 1)
    if threads:
        torch.set_num_threads(threads)
    runner.warm_up()
    return runner


async def _main(settings: Settings, metrics_port: int | None) -> None:
    import redis.asyncio as aioredis

    from .registry import discover

    if not settings.redis_url:
        raise SystemExit("python -m service.worker needs REDIS_URL (the Redis that the API queues requests on)")
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    runner = await asyncio.to_thread(build_runner, settings, discover(settings.models_dir))
    client = aioredis.from_url(settings.redis_url)
    worker = Worker(settings, RedisQueue(client, settings.queue_prefix, settings.job_ttl_s), runner)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker %s ready on %s", worker.name, runner.device)
    try:
        await worker.run(stop)
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.worker", description="Run one fewstep worker against REDIS_URL.")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve this worker's Prometheus metrics on this port")
    args = parser.parse_args(argv)
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(settings, args.metrics_port))


if __name__ == "__main__":
    main()
