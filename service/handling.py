"""What the routes share: queueing a job, waiting for it, rendering its result."""

from __future__ import annotations

import asyncio
import base64
import time

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, Response
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .contract import Job, JobResult
from .images import MEDIA_TYPES
from .queue import SOCKET_TIMEOUT_S, QueueFull
from .state import State


SUBMIT_RETRY_S = 3 * SOCKET_TIMEOUT_S  # a submit that lost its answer is retried this long (within its deadline)


async def enqueue(state: State, job: Job) -> str:
    """Submit a job. A submit that timed out or lost its connection may have been queued all the
    same: it is retried (submitting is idempotent by job id, so the request is never queued
    twice) for longer than a command may take to time out, and within the job's deadline; only
    then does the client get a 503 to retry."""
    give_up = time.monotonic() + min(SUBMIT_RETRY_S, max(1.0, job.deadline - time.time()))
    backoff = 0.1
    while True:
        try:
            return await state.queue.submit(job, state.settings.queue_capacity)
        except QueueFull:
            raise HTTPException(429, f"the queue is full ({state.settings.queue_capacity} requests); retry later", headers={"Retry-After": "1"}) from None
        except (RedisTimeoutError, RedisConnectionError):
            if time.monotonic() + backoff > give_up:
                raise
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, 1.0)


async def run_job(request: Request, state: State, job: Job) -> JobResult:
    """Queue a job and wait for its result; 429 when full, 504 past the deadline. A result that
    lands at the deadline is still returned."""
    request.state.steps = job.steps
    await enqueue(state, job)
    result = await state.queue.wait(job.id, job.deadline - time.time())
    if result is None:
        outcome = await state.queue.cancel(job.id)
        if outcome in ("succeeded", "failed"):  # it finished as the wait ended
            result = await state.queue.handed_over(job.id)
    if result is None:
        raise HTTPException(504, f"no result within {state.settings.request_timeout_s:g}s (queue depth {await state.queue.depth()}); retry later")
    if result.status != "succeeded":
        raise HTTPException(result.code, result.error or "generation failed")
    return result


def wanted_image_type(request: Request) -> str | None:
    """'png', 'jpeg' or 'webp' when the client asks for the image itself (Accept), else None (JSON)."""
    for part in request.headers.get("accept", "").split(","):
        media = part.split(";")[0].strip().lower()
        if media in ("application/json", "*/*", ""):
            return None
        for fmt, mt in MEDIA_TYPES.items():
            if media == mt:
                return fmt
    return None


def public_result(result: JobResult) -> dict:
    return result.public()


def render(result: JobResult, fmt: str | None) -> Response:
    if fmt is None:
        return JSONResponse(public_result(result))
    headers = {"X-Seed": str(result.seeds[0]), "X-Steps": str(result.steps)}
    if result.network_evaluations is not None:
        headers["X-Network-Evaluations"] = str(result.network_evaluations)
    return Response(base64.b64decode(result.images[0]), media_type=MEDIA_TYPES[fmt], headers=headers)
