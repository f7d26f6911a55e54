"""What the routes share: auth, queueing a job, waiting for it, rendering its result."""

from __future__ import annotations

import base64
import hmac
import time

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, Response

from .app import State
from .images import MEDIA_TYPES
from .queue import QueueFull


def state_of(request: Request) -> State:
    return request.app.state.fewstep


async def require_key(request: Request) -> None:
    """With FEWSTEP_API_KEY set, /v1 needs `Authorization: Bearer KEY` (as the OpenAI client sends) or `X-API-Key`."""
    key = state_of(request).settings.api_key
    if key is None:
        return
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not hmac.compare_digest(given.encode(), key.get_secret_value().encode()):
        raise HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})


async def enqueue(state: State, job: dict) -> str:
    try:
        return await state.queue.submit(job, state.settings.queue_capacity)
    except QueueFull:
        raise HTTPException(429, f"the queue is full ({state.settings.queue_capacity} requests); retry later", headers={"Retry-After": "1"}) from None


async def run_job(request: Request, job: dict) -> dict:
    """Queue a job and wait for its result; 429 when full, 504 past the deadline."""
    state = state_of(request)
    request.state.steps = job["steps"]
    await enqueue(state, job)
    result = await state.queue.wait(job["id"], job["deadline"] - time.time())
    if result is None:
        await state.queue.cancel(job["id"])
        raise HTTPException(504, f"no result within {state.settings.request_timeout_s:g}s (queue depth {await state.queue.depth()}); retry later")
    if result["status"] != "succeeded":
        raise HTTPException(result.get("code", 500), result.get("error", "generation failed"))
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


def public_result(result: dict) -> dict:
    keys = ("model", "steps", "stochastic", "guidance", "seeds", "format", "images", "batch_requests", "model_seconds", "network_evaluations")
    return {k: result[k] for k in keys if k in result}


def render(result: dict, fmt: str | None) -> Response:
    if fmt is None:
        return JSONResponse(public_result(result))
    headers = {"X-Seed": str(result["seeds"][0]), "X-Steps": str(result["steps"])}
    if "network_evaluations" in result:
        headers["X-Network-Evaluations"] = str(result["network_evaluations"])
    return Response(base64.b64decode(result["images"][0]), media_type=MEDIA_TYPES[fmt], headers=headers)
