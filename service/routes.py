"""fewstep's own endpoints: generation, jobs, models, health, metrics. Thin: parse, queue, render."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from redis.exceptions import RedisError

from . import metrics, progress
from .deps import KeyChecked, StateDep
from .handling import enqueue, public_result, render, run_job, wanted_image_type
from .images import b64decode
from .jobs import build_job, idempotent_job_id
from .png_info import read_settings
from .webhooks import check_webhook
from .schemas import (
    BODIES,
    GenerateBody,
    Img2ImgBody,
    InpaintBody,
    JobBody,
    PngInfoBody,
    Sampling,
    Txt2ImgBody,
)

log = logging.getLogger("fewstep.api")
router = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[KeyChecked])

IMAGE_RESPONSES = {200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}, "description": "JSON with base64 `images`, or the image itself with `Accept: image/png`"}}


def by_prompt(body: Sampling) -> bool:
    """Asked by prompt and not by class: a request naming no model goes to the text default."""
    return getattr(body, "prompt", None) is not None and getattr(body, "class_label", None) is None


async def _sync(request: Request, state: StateDep, endpoint: str, body: Sampling) -> Response:
    fmt = wanted_image_type(request)
    if fmt is not None:
        images = len(body.guidance) if isinstance(body.guidance, list) else body.n  # a guidance sweep draws one per value
        if images != 1:
            raise HTTPException(406, f"Accept: image/{fmt} returns one image and this request draws {images}; ask for n=1 without "
                                     "a guidance sweep, or accept application/json")
        body.format = fmt
    job = build_job(endpoint, body, state.registry.info(body.model, prompt=by_prompt(body)), state.settings, deadline_s=state.settings.request_timeout_s)
    return render(await run_job(request, state, job), fmt)


@v1.post("/generate", responses=IMAGE_RESPONSES)
async def generate(body: GenerateBody, request: Request, state: StateDep) -> Response:
    """Class-conditional (class_label: id or name) or text-conditional generation."""
    return await _sync(request, state, "generate", body)


@v1.post("/txt2img", responses=IMAGE_RESPONSES)
async def txt2img(body: Txt2ImgBody, request: Request, state: StateDep) -> Response:
    return await _sync(request, state, "txt2img", body)


@v1.post("/img2img", responses=IMAGE_RESPONSES)
async def img2img(body: Img2ImgBody, request: Request, state: StateDep) -> Response:
    return await _sync(request, state, "img2img", body)


@v1.post("/inpaint", responses=IMAGE_RESPONSES)
async def inpaint(body: InpaintBody, request: Request, state: StateDep) -> Response:
    return await _sync(request, state, "inpaint", body)


@v1.post("/jobs", status_code=202)
async def create_job(body: JobBody, request: Request, state: StateDep) -> JSONResponse:
    """Queue a request of any generation endpoint; poll GET /v1/jobs/{id} for its result. With an
    `Idempotency-Key` header, a retry (the answer was lost) gets the job the first try queued."""
    key = request.headers.get("idempotency-key")
    try:
        job_id = idempotent_job_id(key) if key is not None else None
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    try:
        parsed = BODIES[body.endpoint].model_validate(body.request)
    except ValidationError as exc:
        errors = [{"loc": ["body", "request", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors(include_url=False, include_context=False)]
        return JSONResponse({"detail": errors}, status_code=422)
    webhook = check_webhook(body.webhook, state.settings) if body.webhook is not None else None
    job = build_job(body.endpoint, parsed, state.registry.info(parsed.model, prompt=by_prompt(parsed)), state.settings, deadline_s=state.settings.job_ttl_s, store_result=True, job_id=job_id, webhook=webhook)
    request.state.steps = job.steps
    sid = await enqueue(state, job)
    position = await state.queue.position(sid)
    return JSONResponse({"id": job.id, "status": "queued", "queue_position": position}, status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


@v1.get("/jobs/{job_id}")
async def get_job(job_id: str, state: StateDep) -> dict:
    queue = state.queue
    status = await queue.status(job_id)
    if status is None:
        raise HTTPException(404, f"no job {job_id!r} (unknown, or its result has expired)")
    out = {"id": job_id, "status": status["status"]}
    if status["status"] == "queued":
        out["queue_position"] = await queue.position(status["stream_id"])
    elif status["status"] in ("succeeded", "failed"):
        result = await queue.result(job_id)
        if result is None:
            out["status"] = "failed"
            out["error"] = {"status": 410, "detail": "the job's result has expired"}
        elif status["status"] == "succeeded":
            out["result"] = public_result(result)
        else:
            out["error"] = result.public_error()
    return out


@v1.get("/jobs/{job_id}/events", response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events: queued, started, step (with a preview), then done, failed or cancelled"}})
async def job_events(job_id: str, request: Request, state: StateDep) -> StreamingResponse:
    """A job's progress as server-sent events (service/progress.py lists them)."""
    if await state.queue.status(job_id) is None:
        raise HTTPException(404, f"no job {job_id!r} (unknown, or its result has expired)")
    return StreamingResponse(progress.job_events(state, job_id, request), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@v1.delete("/jobs/{job_id}")
async def cancel_job(job_id: str, state: StateDep) -> dict:
    outcome = await state.queue.cancel(job_id)
    if outcome is None:
        raise HTTPException(404, f"no job {job_id!r} (unknown, or its result has expired)")
    if outcome != "cancelled":
        raise HTTPException(409, f"job {job_id} has already ended ({outcome})")
    return {"id": job_id, "status": "cancelled"}


@v1.post("/png-info")
async def png_info(body: PngInfoBody, state: StateDep) -> dict:
    """The generation settings a PNG from this service carries (its text chunks)."""
    data = b64decode(body.image, "image", state.settings.max_image_bytes)
    return {"settings": read_settings(data)}


@v1.get("/models")
async def models(state: StateDep) -> dict:
    return {"object": "list", "data": state.registry.describe()}


router.include_router(v1)


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    if state.startup_error:
        return JSONResponse({"status": "failed", "detail": state.startup_error}, status_code=503)
    if not state.ready:
        progress = state.startup.describe() if state.startup else {}  # each family's stage: compiling takes a while on a first start
        return JSONResponse({"status": "loading", "detail": "models are loading and warming up", **progress}, status_code=503)
    if state.workers_stopped():
        return JSONResponse({"status": "failed", "detail": "the workers of this process have stopped"}, status_code=503)
    await state.queue.redis.ping()  # 503 through the Redis handler when it is down
    return JSONResponse({"status": "ready"})


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(state: StateDep) -> Response:
    try:
        metrics.QUEUE_DEPTH.set(await state.queue.depth())
        metrics.LIVE_WORKERS.set(await state.queue.live_workers(3 * state.settings.heartbeat_s))
    except (RedisError, OSError) as exc:  # metrics must answer even with Redis down
        log.debug("queue gauges not refreshed: %s", exc)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

