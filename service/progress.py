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

import asyncio
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


def _end(status: str, result: JobResult | None) -> str:
    if status == "cancelled":
        return sse("cancelled", {})
    if result is None:
        return sse("failed", {"error": {"status": 410, "detail": "the job's result has expired"}})
    if status == "succeeded":
        return sse("done", {"result": public_result(result)})
    return sse("failed", {"error": {"status": result.code, "detail": result.error or ""}})


async def job_events(state: State, job_id: str, request: Request) -> AsyncIterator[str]:
    try:
        async for message in _events(state, job_id, request):
            yield message
    except (RedisError, OSError) as exc:  # the answer has started: the error goes in the stream
        yield sse("failed", {"error": {"status": 503, "detail": f"the queue is unreachable ({type(exc).__name__}); the job may still finish: GET /v1/jobs/{job_id}"}})


async def _events(state: State, job_id: str, request: Request) -> AsyncIterator[str]:
    queue = state.queue
    after, position = "0-0", None
    while True:
        for sid, event in await queue.read_events(job_id, after, block_ms=int(POLL_S * 1000)):
            after = sid
            kind = event.pop("type", "step")
            yield sse(kind, event, sid)
        status = await queue.status(job_id)
        if status is None:
            yield sse("failed", {"error": {"status": 410, "detail": "the job has expired"}})
            return
        st = status["status"]
        if st == "queued":
            now = await queue.position(status["stream_id"])
            if now != position:
                position = now
                yield sse("queued", {"position": now})
        elif st in ("succeeded", "failed", "cancelled"):
            for sid, event in await queue.read_events(job_id, after):  # what came in since the last read
                kind = event.pop("type", "step")
                yield sse(kind, event, sid)
            yield _end(st, await queue.result(job_id) if st != "cancelled" else None)
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(0)
