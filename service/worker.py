"""The worker: read requests from the stream, batch them, run them, store results, acknowledge.

`python -m service.worker` runs one worker alone against REDIS_URL (several may run on
several machines); `python -m service` runs one inside the API process.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from redis.exceptions import RedisError, ResponseError

from . import metrics, webhooks
from .batching import batch_key, cut_rows, plan_batches
from .contract import JobResult
from .queue import THREAD_PAUSE_S, Entry, RedisQueue, connect, connect_sync
from .precompile import available_cores
from .runner import Runner
from .settings import Settings

log = logging.getLogger("fewstep.worker")
REDIS_TROUBLE = (RedisError, OSError)  # unreachable, timed out, or refusing (OOM, READONLY, MISCONF...)


def _rows(entry: Entry) -> int:
    """The rows (images) a request takes in a network call."""
    return len(entry.job.items)


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, settings: Settings, queue: RedisQueue, runner: Runner, name: str | None = None):
        self.settings, self.queue, self.runner = settings, queue, runner
        self.name = name or worker_name()
        self._last_claim = 0.0
        self._last_batch = 0  # entries in the last batch gathered (the batch-fill wait is for load)
        self._stop = asyncio.Event()
        self._pending: list[Entry] = []  # gathered, not yet finished: resumed after a Redis error
        self._carried: list[Entry] = []  # gathered, held back for the next batch (`_carry`)
        self._batch_started: float | None = None  # monotonic start of the batch now running
        self._batch_ids: set[str] = set()  # its stream ids
        self._tasks: set[asyncio.Task] = set()  # webhook deliveries under way

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set. Any Redis error (and any other failure outside a batch) makes
        the worker back off and retry; it never exits on its own."""
        self._stop = stop
        beat = asyncio.create_task(self._heartbeat(stop))
        backoff = 0.1
        try:
            while not stop.is_set() or self._carried:  # what it holds back runs before it stops
                try:
                    await self.queue.ensure_group()
                    while not stop.is_set() or self._carried:
                        entries = await self._resume() if self._pending else await self.gather()
                        if entries:
                            await self.process(entries)
                        backoff = 0.1
                except ResponseError as exc:
                    if "NOGROUP" in str(exc):  # Redis restarted empty: recreate the group at once
                        continue
                    log.warning("worker %s: Redis refused (%s); retrying in %.1fs", self.name, exc, backoff)
                except REDIS_TROUBLE as exc:
                    log.warning("worker %s: Redis unreachable (%s); retrying in %.1fs", self.name, exc, backoff)
                except Exception:  # noqa: BLE001 - a bug must not end the worker either
                    log.exception("worker %s: unexpected failure; retrying in %.1fs", self.name, backoff)
                    self._pending = []  # not Redis trouble: what it held is left to a takeover (and the delivery limit)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        finally:
            beat.cancel()
            try:
                await self.queue.leave(self.name)
            except REDIS_TROUBLE:
                pass

    async def _resume(self) -> list[Entry]:
        """The entries a Redis error interrupted, those this worker still holds (another worker
        may have taken some over meanwhile): run them now rather than leave them to a takeover,
        which would count a delivery against them."""
        held = await self.queue.touch(self.name, [e.stream_id for e in self._pending])
        entries, self._pending = [e for e in self._pending if e.stream_id in held], []
        if entries:
            log.info("worker %s: resuming %d requests after a Redis error", self.name, len(entries))
        return entries

    async def gather(self) -> list[Entry]:
        """What to run next: one stale entry of a dead worker, alone (it may be what killed that
        worker, and a request taken over with others would share its delivery count); else up
        to max_batch_size new ones, after those held back from the last batch."""
        s = self.settings
        now = time.monotonic()
        claim_due = now - self._last_claim > s.claim_idle_ms / 4000
        if self._carried:  # under load: they run now, with what has come meanwhile
            entries, self._carried = self._carried, []
            self._pending = list(entries)
            # alone when stopping, or when a takeover is due: the next gather looks for one then
            # (a request taken over may kill its worker: it runs with nothing else held)
            return entries if self._stop.is_set() or claim_due else await self._fill(entries)
        if claim_due:
            self._last_claim = now
            taken = await self.queue.claim(self.name, s.claim_idle_ms, 1)
            if taken:
                self._last_claim = 0.0  # more may be waiting: look again at once
                log.info("worker %s took over an unacknowledged request (delivery %d)", self.name, taken[0].deliveries)
                self._pending = list(taken)
                return taken
        entries = await self.queue.read(self.name, s.max_batch_size, block_ms=500)
        if not entries:
            return []
        return await self._fill(entries)

    async def _fill(self, entries: list[Entry]) -> list[Entry]:
        s = self.settings
        self._pending = list(entries)  # from here on a Redis error resumes them, not a takeover
        # fill the batch: sweep what is already queued, then wait (here, not in Redis: a short
        # BLOCK times out only at Redis's next cron tick, up to 1/hz = 100 ms late). The wait is
        # for load: after a batch of one (an idle worker), a lone request runs at once, and what
        # arrives meanwhile is read as soon as it is done
        lone = self._last_batch <= 1 and len(entries) == 1
        until = time.monotonic() + (0.0 if lone else s.max_wait_ms / 1000)
        while len(entries) < s.max_batch_size and not lone:
            more = await self.queue.read(self.name, s.max_batch_size - len(entries), block_ms=None)
            if more:
                entries += more
                self._pending = list(entries)
                continue
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(remaining)
        self._last_batch = len(entries)
        return entries

    async def process(self, entries: list[Entry]) -> None:
        """Run what was gathered: entries that are not jobs, or that were delivered too often, are
        failed at once; the rest run in batches (taken-over ones alone), each checked for
        cancellation and deadline just before it runs. The entries held stay fresh meanwhile."""
        s = self.settings
        self._pending = list(entries)  # until each is finished: a Redis error resumes the rest
        ready = []
        for e in entries:
            if e.job is None:  # not a job of this format: fail it (its waiter learns why)
                log.warning("worker %s: %s", self.name, e.problem)
                await self._finish_surely([(e, JobResult.failed(500, f"the worker could not read this request: {e.problem}"))])
            elif e.deliveries > s.max_deliveries:
                reason = (f"this request was delivered {e.deliveries} times and its worker stopped each time (a crash, "
                          f"out of memory or a hang); it is not retried (limit FEWSTEP_MAX_DELIVERIES={s.max_deliveries})")
                if await self._finish_surely([(e, JobResult.failed(500, reason))], dead_letter=reason) == [True]:
                    log.error("worker %s: job %s: %s", self.name, e.job.id, reason)
                    metrics.DEAD_LETTERS.inc()
            else:
                ready.append(e)
        held = {e.stream_id for e in ready}
        keeper = asyncio.create_task(self._keep_fresh(held))
        try:
            alone = [[e] for e in ready if e.deliveries > 1]  # taken over: maybe what killed a worker
            fresh = [e for e in ready if e.deliveries <= 1]
            batches, carried = self._carry(plan_batches(fresh, s.max_batch_size, key=lambda e: batch_key(e.job)))
            for batch in alone + batches:
                self._batch_ids = {e.stream_id for e in batch}
                await self._run_batch(batch)
                held.difference_update(e.stream_id for e in batch)
        finally:
            keeper.cancel()
        self._pending, self._carried = [], carried  # only once the rest has run: after a failure, every entry left is resumed

    def _carry(self, batches: list[list[Entry]]) -> tuple[list[list[Entry]], list[Entry]]:
        """With a fixed row count per network call, cut batches into runs of that many rows, each
        run and finished on its own. Under load (a batch of more than one run), the last run of
        the first such batch, if it would be padded, is held back for the next gather, where
        requests that arrived meanwhile fill its rows. It leads that gather (the oldest there),
        so it runs in its first call, about when it would have run as the padded last one, and
        is never held back twice. Nothing is held back once stopping."""
        size = self.settings.fixed_batch
        if size is None:
            return batches, []
        out, carried = [], []
        for batch in batches:
            runs = cut_rows(batch, _rows, size)
            if not carried and len(runs) > 1 and sum(map(_rows, runs[-1])) < size and not self._stop.is_set():
                carried = runs.pop()
            out += runs
        return out, carried

    async def _run_batch(self, batch: list[Entry]) -> None:
        now = time.time()
        done, run = [], []
        for entry in batch:
            if entry.job.deadline < now:
                done.append((entry, JobResult.failed(504, "the request's deadline passed before a worker could run it")))
            else:
                run.append(entry)
        finished: list[tuple[Entry, JobResult, bool]] = []  # each entry, its result, and whether its finish won
        if run and all(not e.job.store_result for e in run):
            # synchronous requests only: their waiters cancel them only once their deadline has
            # passed (checked above), so they are marked running while the model runs, not
            # before (a round trip off the request's path), and finished on the model thread
            # as soon as their images are encoded (a hop back to the event loop off it). One
            # cancelled meanwhile all the same stays cancelled: its finish does not win
            starting = asyncio.create_task(self._start_beside(run))
            token = uuid.uuid4().hex  # one finish, whichever thread sends it and however often
            try:
                results, won = await self._execute_batch(run, now, finish_token=token)
            finally:
                await starting
            if won is None:  # not sent from the model thread (no synchronous client, Redis away): from here, same token
                won = await self._finish_surely(list(zip(run, results)), token=token)
            else:
                self._forget(run)
            finished = list(zip(run, results, won))
        elif run:
            started = await self.queue.start([e.job.id for e in run], self.name)
            done += [(e, JobResult.failed(410, "cancelled")) for e, ok in zip(run, started) if not ok]  # cancelled while it waited
            run = [e for e, ok in zip(run, started) if ok]
            if run:
                results, _ = await self._execute_batch(run, now)
                done += list(zip(run, results))
        if done:
            finished += [(e, r, w) for (e, r), w in zip(done, await self._finish_surely(done))]
        for entry, result, first in finished:
            if first and entry.job.webhook:
                self._spawn(webhooks.deliver(entry.job.webhook, webhooks.payload(entry.job.id, result), self.settings))

    async def _start_beside(self, run: list[Entry]) -> None:
        """Mark synchronous jobs running while they run. The mark is for status readers only (a
        job cancelled meanwhile stays cancelled, and its finish does not win): one that Redis
        refuses (it is away) is logged, and the finish, which waits for Redis, still decides
        which results count, so the batch is never run twice for it."""
        try:
            await self.queue.start([e.job.id for e in run], self.name)
        except REDIS_TROUBLE as exc:
            log.warning("worker %s: could not mark %d requests running (%s); finishing them all the same", self.name, len(run), exc)

    async def _execute_batch(self, run: list[Entry], now: float, finish_token: str | None = None) -> tuple[list[JobResult], list[bool] | None]:
        """Run the batch in a thread, with the progress events of its asynchronous jobs; a
        failure fails every job of the batch (500), never the worker. With `finish_token`, the
        thread also finishes the batch (`_finish_from_thread`); returns the results, and per
        entry whether its finish won, or None where the batch is still to be finished."""
        for entry in run:
            metrics.QUEUE_WAIT.observe(max(0.0, now - entry.job.created))
        jobs = [e.job for e in run]
        events = _Progress(self.queue, [j.id for j in jobs if j.store_result])
        await events.started()
        finish = functools.partial(self._finish_from_thread, run, finish_token) if finish_token and self.queue.can_finish_from_thread() else None
        try:
            # on the runner's thread (load_runner), where its warm-up ran; a runner without one: any
            return await asyncio.get_running_loop().run_in_executor(getattr(self.runner, "thread", None), self._execute, jobs, events.on_event if events.job_ids else None, finish)
        except Exception as exc:
            log.exception("worker %s: batch of %d failed", self.name, len(jobs))
            return [JobResult.failed(500, f"the worker failed on this batch ({type(exc).__name__})")] * len(jobs), None
        finally:
            self._batch_started = None
            await events.close()  # every step event is written before the job's finish

    def _finish_from_thread(self, run: list[Entry], token: str, results: list[JobResult]) -> list[bool] | None:
        """On the model thread: finish the batch at once (the waiting requests wake without
        waiting for the event loop). None when Redis could not be reached: the event loop then
        sends the same finish (its token) again, and waits for Redis as long as it takes."""
        try:
            return self.queue.finish_from_thread(list(zip(run, results)), token)
        except REDIS_TROUBLE as exc:
            log.warning("worker %s: finish from the model thread failed (%s); the event loop sends it again, and finishes "
                        "the next %.0f s of batches itself", self.name, exc, THREAD_PAUSE_S)
            return None

    def _spawn(self, coro) -> None:
        """A background task (a webhook delivery) kept referenced until it ends."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish_surely(self, done: list, dead_letter: str | None = None, token: str | None = None) -> list[bool]:
        """Record results computed at a cost; a Redis that is away (a restart) is waited for, so
        that the work is not lost and run again by whoever takes the entries over. Finished
        entries leave the pending list; returns, per entry, whether this finish won. `token`:
        that of an earlier try of this finish (from the model thread), if any."""
        backoff, token = 0.1, token or uuid.uuid4().hex  # one finish, however often sent: a try that Redis ran still wins
        while True:
            try:
                won = await self.queue.finish(done, dead_letter=dead_letter, token=token)
                self._forget([e for e, _ in done])
                return won
            except REDIS_TROUBLE as exc:
                if self._stop.is_set() and backoff > 0.1:  # shutting down, and tried again: the entries stay pending and are taken over
                    raise
                log.warning("worker %s: could not record %d results (%s); retrying in %.1fs", self.name, len(done), exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _forget(self, entries: list[Entry]) -> None:
        """Finished entries leave the pending list (what a Redis error would resume)."""
        finished = {e.stream_id for e in entries}
        self._pending = [e for e in self._pending if e.stream_id not in finished]

    def _execute(self, jobs: list, on_event=None, finish=None) -> tuple[list[JobResult], list[bool] | None]:
        self._batch_started = time.monotonic()  # here, on the model thread: not while it waits behind another worker's batch
        s = self.settings
        if s.test_crash_prompt is not None and any(it.prompt == s.test_crash_prompt for j in jobs for it in j.items):
            log.error("worker %s: test hook: a request asked for the crash prompt; exiting at once", self.name)
            os._exit(70)
        if s.test_batch_delay_s:
            time.sleep(s.test_batch_delay_s)
        results = self.runner.run(jobs, on_event)
        metrics.JOBS_EXECUTED.inc(len(jobs))
        log.debug("worker %s ran %s", self.name, " ".join(j.id for j in jobs))
        return results, finish(results) if finish is not None else None

    async def _keep_fresh(self, held: set[str]) -> None:
        """Touch the entries this worker holds, well within claim_idle_ms, until cancelled. A batch
        that runs longer than batch_timeout_s is taken for hung: its entries (and those behind it)
        are no longer refreshed, so other workers take them over and the delivery limit applies."""
        s = self.settings
        period = s.claim_idle_ms / 4000
        hung: set[str] = set()
        while True:
            await asyncio.sleep(period)
            started = self._batch_started
            if started is not None and time.monotonic() - started > s.batch_timeout_s and not held <= hung:
                log.error("worker %s: a batch has run for over %.0fs (FEWSTEP_BATCH_TIMEOUT_S); leaving its %d requests, and the %d "
                          "behind it, to other workers", self.name, s.batch_timeout_s, len(self._batch_ids), len(held - self._batch_ids))
                hung |= held
            try:
                await self.queue.touch(self.name, sorted(held - hung))
            except REDIS_TROUBLE as exc:
                log.warning("worker %s: could not refresh its requests (%s)", self.name, exc)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Heartbeat, and now and then remove consumers of workers that are gone."""
        last_prune = 0.0
        while not stop.is_set():
            try:
                await self.queue.heartbeat(self.name)
                if time.monotonic() - last_prune > 30:
                    last_prune = time.monotonic()
                    gone = await self.queue.prune_consumers(idle_ms=max(60_000, 10 * self.settings.claim_idle_ms))
                    if gone:
                        log.info("worker %s: removed %d departed consumers from the group", self.name, len(gone))
            except REDIS_TROUBLE:
                pass
            await asyncio.sleep(self.settings.heartbeat_s)


class _Progress:
    """Progress events of a batch's asynchronous jobs: "started", then the runner's step events,
    which arrive from the worker thread and are written in order by one task. Best effort: an
    event Redis refuses is logged and dropped; it never fails the job."""

    def __init__(self, queue: RedisQueue, job_ids: list[str]):
        self.queue, self.job_ids = queue, job_ids
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.create_task(self._publish()) if job_ids else None

    async def started(self) -> None:
        for job_id in self.job_ids:
            self._events.put_nowait((job_id, {"type": "started"}))

    def on_event(self, job_id: str, event: dict) -> None:  # called from the worker thread
        self._loop.call_soon_threadsafe(self._events.put_nowait, (job_id, event))

    async def close(self) -> None:
        if self._task is not None:
            self._events.put_nowait(None)
            await self._task

    async def _publish(self) -> None:
        while (item := await self._events.get()) is not None:
            try:
                await self.queue.add_events(item[0], [item[1]])
            except REDIS_TROUBLE as exc:
                log.warning("progress event of job %s not written (%s)", item[0], exc)


def build_runner(settings: Settings, paths: dict, *, beside_api: bool = False, on_stage: Callable[[str, str], None] | None = None) -> Runner:
    """Load and warm up the models. Beside the API on the CPU, eager networks get all cores but
    one: their Python-heavy forward passes and the event loop fight for the interpreter, and a
    starved loop delivers requests late, in small batches. Compiled networks hold the
    interpreter little and get every core (measured on 2 cores, concurrency 16: compiled 68.7
    images/s on 2 threads against 61.9 on 1; eager 46.3 on 2 against 49.4 on 1;
    docs/benchmarks/service.md). `on_stage(family, stage)`: what each family's warm-up is doing
    (service/startup.py)."""
    import torch

    runner = Runner(paths, device=settings.device, dtype=settings.dtype, fixed_batch=settings.fixed_batch, compile=settings.compile,
                    cpp_wrapper=settings.cpp_wrapper, cuda_graphs=settings.cuda_graphs)
    threads = settings.torch_threads
    spare_one = threads is None and beside_api and runner.device == "cpu"
    if threads:
        torch.set_num_threads(threads)
    elif spare_one and not runner.compiles:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))
    runner.warm_up(processes=settings.compile_processes or available_cores(), on_stage=on_stage)
    if spare_one and not runner.compiles:  # compilation failed during warm-up: eager after all
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))
    return runner


async def load_runner(settings: Settings, paths: dict, *, beside_api: bool = False, on_stage: Callable[[str, str], None] | None = None) -> Runner:
    """`build_runner` on a thread of the runner's own, which then runs every batch of the
    workers that share it (Worker): CUDA graphs are kept per thread, so the warm-up must record
    them on the thread that replays them."""
    thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fewstep-model")
    try:
        runner = await asyncio.get_running_loop().run_in_executor(thread, functools.partial(build_runner, settings, paths, beside_api=beside_api, on_stage=on_stage))
    except BaseException:
        thread.shutdown(wait=False)
        raise
    runner.thread = thread
    return runner


async def _main(settings: Settings, metrics_port: int | None) -> None:
    from .registry import STARTUP_ERRORS, discover

    if not settings.redis_url:
        raise SystemExit("python -m service.worker needs REDIS_URL (the Redis that the API queues requests on)")
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    try:
        families = discover(settings.models_dir)
    except STARTUP_ERRORS as exc:
        raise SystemExit(f"error: {exc}") from None
    runner = await load_runner(settings, families)
    client = connect(settings.redis_url)
    worker = Worker(settings, RedisQueue(client, settings.queue_prefix, settings.job_ttl_s, sync=connect_sync(settings.redis_url)), runner)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker %s ready on %s", worker.name, runner.device)
    try:
        await worker.run(stop)
    finally:
        runner.thread.shutdown(wait=False, cancel_futures=True)
        await client.aclose()
        worker.queue.close_sync()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.worker", description="Run one fewstep worker against REDIS_URL.")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve this worker's Prometheus metrics on this port")
    args = parser.parse_args(argv)
    from pydantic import ValidationError

    try:
        settings = Settings()
    except ValidationError as exc:
        raise SystemExit(f"error: bad settings in the environment:\n{exc}") from None
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # uvloop (uvicorn[standard]), as the API process runs under uvicorn: a faster event loop
        import uvloop
    except ImportError:
        asyncio.run(_main(settings, args.metrics_port))
    else:
        uvloop.run(_main(settings, args.metrics_port))


if __name__ == "__main__":
    main()
