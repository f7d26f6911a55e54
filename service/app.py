"""The FastAPI application: lifespan (Redis, models, in-process workers), middleware, routes.

The API process imports no torch: it validates requests from the family manifests and
queues them. Only in-process workers (`workers` > 0) load service.worker, and torch with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import errors, metrics, pages
from .openai_routes import router as openai_router
from .queue import RedisQueue, connect, connect_sync
from .registry import Registry
from .routes import router
from .settings import Settings
from .startup import Startup
from .state import State

log = logging.getLogger("fewstep.api")
WORKER_GRACE_S = 10.0  # at shutdown, how long in-process workers may take to end their batch before they are cancelled
access = logging.getLogger("fewstep.access")


class BodyLimit:
    """Refuse request bodies over max_bytes with 413, before anything parses them."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        messages, total = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body"):
                break
        replay = iter(messages)

        async def replayed():
            return next(replay, None) or await receive()

        return await self.app(scope, replayed, send)

    async def _refuse(self, scope, receive, send):
        metrics.ERRORS.labels(status="413").inc()
        response = errors.error_response(scope.get("path", ""), 413, f"request body is larger than {self.max_bytes} bytes")
        await response(scope, receive, send)


class Observe:
    """Request metrics and the access log, as plain ASGI (Starlette's BaseHTTPMiddleware runs
    every request through an extra task and memory stream: about a millisecond each)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500  # an exception that escapes is answered 500 by Starlette's outermost middleware
        headed = None  # when the response started: a stream's latency is its time to first byte

        async def sent(message):
            nonlocal status, headed
            if message["type"] == "http.response.start":
                status, headed = message["status"], time.perf_counter()
            await send(message)

        try:
            await self.app(scope, receive, sent)
        except asyncio.CancelledError:  # the client went away, or the server is stopping: no error of ours
            if headed is None:
                status = 499
            raise
        finally:
            elapsed = (headed or time.perf_counter()) - start
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            if endpoint.startswith("/v1/"):
                steps = str((scope.get("state") or {}).get("steps", "none"))
                metrics.REQUEST_LATENCY.labels(endpoint=endpoint, steps=steps).observe(elapsed)
                # never bodies or headers: no image bytes, no keys
                access.info("%s %s %d %.1fms", scope.get("method", ""), endpoint, status, 1000 * elapsed)
            metrics.REQUESTS.labels(endpoint=endpoint, status=str(status)).inc()
            if status >= 400 and status != 499:
                metrics.ERRORS.labels(status=str(status)).inc()


def create_app(settings: Settings | None = None, *, redis_url: str | None = None, workers: int | None = None) -> FastAPI:
    settings = settings or Settings()
    redis_url = redis_url or settings.redis_url
    if not redis_url:
        raise ValueError("no Redis: set REDIS_URL, or run `python -m service`, which starts an embedded one")
    workers = settings.workers if workers is None else workers
    registry = Registry(settings.models_dir, settings.default_model, settings.default_text_model)
    client, waiter = connect(redis_url), connect(redis_url, blocking=True)
    sync = connect_sync(redis_url) if workers else None  # for the workers' model thread (no connection until used)
    state = State(settings, registry, RedisQueue(client, settings.queue_prefix, settings.job_ttl_s, waiter=waiter, sync=sync), workers=workers)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            await state.queue.ensure_group()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning("Redis at startup: %s (requests get 503 until it is reachable)", exc)
        if workers:
            state.startup = Startup(registry.paths)
            state.tasks.append(asyncio.create_task(_start_workers(state, workers)))
        else:
            state.ready = True
        try:
            yield
        finally:
            state.stop.set()
            if state.ready and state.tasks:  # workers end the batch they run, and run what they hold back, first
                await asyncio.wait(state.tasks, timeout=WORKER_GRACE_S)
            for task in state.tasks:
                task.cancel()
            await asyncio.gather(*state.tasks, return_exceptions=True)
            await client.aclose()
            await waiter.aclose()
            state.queue.close_sync()

    app = FastAPI(
        title="fewstep",
        version="0.1.0",
        summary="Guided-distilled diffusion students (1-8 steps) over HTTP.",
        lifespan=lifespan,
        docs_url=None,  # served from the package by service/pages.py (no CDN)
        redoc_url=None,
    )
    app.state.fewstep = state

    errors.install(app)
    app.include_router(router)
    app.include_router(openai_router)
    pages.install(app)
    app.add_middleware(Observe)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app


async def _start_workers(state: State, count: int) -> None:
    from .worker import Worker, load_runner  # torch: only a process that runs models imports it

    try:
        runner = await load_runner(state.settings, state.registry.paths, beside_api=True, on_stage=state.startup.stage if state.startup else None)
    except Exception as exc:
        state.startup_error = f"loading models failed: {exc}"
        log.exception("loading models failed")
        return
    state.ready = True
    log.info("models loaded and warmed up; ready")
    workers = [Worker(state.settings, state.queue, runner) for _ in range(count)]
    try:
        await asyncio.gather(*(w.run(state.stop) for w in workers))
    finally:
        runner.thread.shutdown(wait=False, cancel_futures=True)
