"""GET /v1/jobs/{id}/events: a job's progress as server-sent events.

    queued      {"position": n}             while it waits (again when the position changes)
    started     {}                          a worker took it
    step        {"step", "steps", "preview"} after each sampling step: a base64 PNG of the first
                                            image's clean-image prediction at that step
    done        {"result": ...}             as GET /v1/jobs/{id} gives it; the stream ends
    failed      {"error": {"status", "detail"}}
    cancelled   {}

Workers write started and step events to the job's event stream (service/queue.py); the end
comes from the job's status, read after the events of the worker, which writes them all
before it finishes the job. Each SSE message's `id` is the event's stream id.
"""

from __future__ import annotations

import json
from typing import AsyncIterator

from fastapi import Request
from redis.exceptions import RedisError

from .contract import JobResult
from .handling import public_result
from .state import State

POLL_S = 0.5  # how long one read waits for a worker's event before the status is looked at again


def sse(event: str, data: dict, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


async def job_events(state: State, job_id: str, request: Request) -> AsyncIterator[str]:
    """The SSE messages of GET /v1/jobs/{id}/events."""
    async for kind, data, event_id in updates(state, job_id, request):
        yield sse(kind, data, event_id)


async def updates(state: State, job_id: str, request: Request) -> AsyncIterator[tuple[str, dict, str | None]]:
    """(event, data, stream id or None) of a job until it ends; a Redis that goes away ends it
    with a "failed" event (the answer has started, so the error goes into the stream)."""
    try:
        async for update in _updates(state, job_id, request):
            yield update
    except (RedisError, OSError) as exc:
        yield "failed", {"error": {"status": 503, "detail": f"the queue is unreachable ({type(exc).__name__}); the job may still finish: GET /v1/jobs/{job_id}"}}, None


def _end(status: str, result: JobResult | None) -> tuple[str, dict, None]:
    if status == "cancelled":
        return "cancelled", {}, None
    if result is None:
        return "failed", {"error": {"status": 410, "detail": "the job's result has expired"}}, None
    if status == "succeeded":
        return "done", {"result": public_result(result)}, None
    return "failed", {"error": result.public_error()}, None


async def _updates(state: State, job_id: str, request: Request) -> AsyncIterator[tuple[str, dict, str | None]]:
    queue = state.queue
    position = None
    events = _worker_events(queue, job_id)
    while True:
        async for update in events(block_ms=int(POLL_S * 1000)):
            yield update
        status = await queue.status(job_id)
        if status is None:
            yield "failed", {"error": {"status": 410, "detail": "the job has expired"}}, None
            return
        st = status["status"]
        if st == "queued":
            now = await queue.position(status["stream_id"])
            if now != position:
                position = now
                yield "queued", {"position": now}, None
        elif st in ("succeeded", "failed", "cancelled"):
            async for update in events(block_ms=None):  # what came in since the last read
                yield update
            yield _end(st, await queue.result(job_id) if st != "cancelled" else None)
            return
        if await request.is_disconnected():
            return


def _worker_events(queue, job_id: str):
    """A reader of the job's event stream that remembers where it stopped."""
    after = "0-0"

    async def read(block_ms: int | None) -> AsyncIterator[tuple[str, dict, str]]:
        nonlocal after
        for sid, event in await queue.read_events(job_id, after, block_ms=block_ms):
            after = sid
            yield event.pop("type", "step"), event, sid

    return read
