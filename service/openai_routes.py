"""The OpenAI Images API (generations and edits), so the official `openai` client works unchanged.

fewstep's own sampling fields (guidance, steps, stochastic, seed) may be passed with the
client's `extra_body`. Edits repaint where the mask (or, without a mask, the image) is transparent.
With `stream: true` the answer is OpenAI's event stream: `partial_images` (0-3) previews of
the sampling steps (`image_generation.partial_image` / `image_edit.partial_image`), then one
`...completed` event per image.
"""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import StreamingResponse

from model.manifest import FamilyInfo
from model.validation import InvalidRequest

from .contract import Job, JobResult
from .deps import KeyChecked, StateDep
from . import progress
from .handling import enqueue, run_job
from .images import ImageError, open_image
from .jobs import build_job
from .schemas import InpaintBody, OpenAIGenerationBody, Text, Txt2ImgBody

router = APIRouter(prefix="/v1/images", dependencies=[KeyChecked])


def _check_size(size: str | None, info: FamilyInfo) -> None:
    side = info.resolution
    if size not in (None, "auto", f"{side}x{side}"):
        raise InvalidRequest(f"size {size!r} is not available; model {info.family!r} draws {side}x{side}", "size")


def _check_format(response_format: str | None) -> None:
    if response_format not in (None, "b64_json"):
        raise InvalidRequest(f"response_format {response_format!r} is not supported; use 'b64_json'", "response_format")


def _answer(result: JobResult) -> dict:
    return {
        "created": int(time.time()),
        "data": [{"b64_json": img} for img in result.images],
        "output_format": result.format,
    }


def partial_steps(steps: int, partial_images: int) -> list[int]:
    """The sampling steps (1..steps - 1) whose previews are sent: evenly spaced, before the last."""
    picked = sorted({max(1, round(k * steps / (partial_images + 1))) for k in range(1, partial_images + 1)})
    return [s for s in picked if s < steps]


async def _stream(request: Request, state: StateDep, job: Job, partial_images: int, kind: str) -> StreamingResponse:
    """OpenAI's image event stream for `job` (queued as an asynchronous job, for its step events)."""
    request.state.steps = job.steps
    await enqueue(state, job)
    wanted = partial_steps(job.steps, partial_images)
    side = state.registry.info(job.model).resolution
    common = {"background": "opaque", "output_format": job.format, "quality": "auto", "size": f"{side}x{side}"}

    async def events():
        index = 0
        async for event, data, _ in progress.updates(state, job.id, request):
            if event == "step" and data["step"] in wanted:
                yield progress.sse(f"{kind}.partial_image", {"type": f"{kind}.partial_image", "b64_json": data["preview"], "created_at": int(time.time()), "partial_image_index": index, **common})
                index += 1
            elif event == "done":
                usage = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}, "output_tokens": 0, "total_tokens": 0}
                for image in data["result"]["images"]:
                    yield progress.sse(f"{kind}.completed", {"type": f"{kind}.completed", "b64_json": image, "created_at": int(time.time()), "usage": usage, **common})
            elif event in ("failed", "cancelled"):
                error = data.get("error", {"status": 410, "detail": "cancelled"})
                yield progress.sse("error", {"type": "error", "error": {"code": str(error["status"]), "message": error["detail"]}})

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/generations")
async def generations(body: OpenAIGenerationBody, request: Request, state: StateDep):
    info = state.registry.info(body.model, prompt=True)
    _check_format(body.response_format)
    _check_size(body.size, info)
    fields = body.model_dump(exclude={"size", "response_format", "output_format", "stream", "partial_images"})
    parsed = Txt2ImgBody(**fields, format=body.output_format or "png")
    job = build_job("txt2img", parsed, info, state.settings, deadline_s=state.settings.request_timeout_s, store_result=body.stream)
    if body.stream:
        return await _stream(request, state, job, body.partial_images or 0, "image_generation")
    return _answer(await run_job(request, state, job))


async def _read_upload(upload: UploadFile, field: str, max_bytes: int, max_side: int):
    return open_image(await upload.read(max_bytes + 1), field, max_bytes, max_side)


def _transparent(image, field: str) -> np.ndarray:
    if "A" not in image.getbands() and "transparency" not in image.info:
        raise ImageError(f"{field} has no alpha channel; transparent pixels mark what to repaint", field=field)
    return np.asarray(image.convert("RGBA"))[..., 3] == 0


@router.post("/edits")
async def edits(
    request: Request,
    state: StateDep,
    image: UploadFile = File(..., description="the image to edit (PNG)"),
    prompt: Text = Form(...),
    mask: UploadFile | None = File(None, description="PNG of the same size; transparent = repaint"),
    model: Text | None = Form(None),
    n: int = Form(1, ge=1, le=8),
    size: Text | None = Form(None),
    response_format: Text | None = Form(None),
    guidance: float | None = Form(None),
    steps: int | None = Form(None),
    stochastic: bool = Form(False),
    seed: int | None = Form(None, ge=0, le=2**63 - 9),
    stream: bool = Form(False),
    partial_images: int | None = Form(None, ge=0, le=3),
):
    s = state.settings
    info = state.registry.info(model, prompt=True)
    _check_format(response_format)
    _check_size(size, info)
    picture = await _read_upload(image, "image", s.max_image_bytes, s.max_image_side)
    if mask is not None:
        mask_image = await _read_upload(mask, "mask", s.max_image_bytes, s.max_image_side)
        repaint = _transparent(mask_image, "mask")
    else:
        repaint = _transparent(picture, "image")
    parsed = InpaintBody(prompt=prompt, model=model, n=n, guidance=guidance, steps=steps, stochastic=stochastic, seed=seed, image="-", mask="-")
    job = build_job("inpaint", parsed, info, s, deadline_s=s.request_timeout_s, images={"image": picture, "mask": repaint}, store_result=stream)
    if stream:
        return await _stream(request, state, job, partial_images or 0, "image_edit")
    return _answer(await run_job(request, state, job))
