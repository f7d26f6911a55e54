"""The OpenAI Images API (generations and edits), so the official `openai` client works unchanged.

fewstep's own sampling fields (guidance, steps, stochastic, seed) may be passed with the
client's `extra_body`. Edits repaint where the mask (or, without a mask, the image) is transparent.
"""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from pydantic import ValidationError

from .handling import require_key, run_job, state_of
from .images import ImageError, open_image
from .jobs import BadRequest, build_job
from .registry import Registry
from .schemas import InpaintBody, OpenAIGenerationBody, Txt2ImgBody

router = APIRouter(prefix="/v1/images", dependencies=[Depends(require_key)])


def _check_size(size: str | None, registry: Registry, model: str | None) -> None:
    side = registry.info(model).resolution
    if size not in (None, "auto", f"{side}x{side}"):
        raise BadRequest(f"size {size!r} is not available; model {registry.info(model).family!r} draws {side}x{side}", status=400)


def _check_format(response_format: str | None) -> None:
    if response_format not in (None, "b64_json"):
        raise BadRequest(f"response_format {response_format!r} is not supported; use 'b64_json'", status=400)


def _answer(result: dict) -> dict:
    return {
        "created": int(time.time()),
        "data": [{"b64_json": img} for img in result["images"]],
        "output_format": result["format"],
    }


@router.post("/generations")
async def generations(body: OpenAIGenerationBody, request: Request) -> dict:
    state = state_of(request)
    _check_format(body.response_format)
    _check_size(body.size, state.registry, body.model)
    fields = body.model_dump(exclude={"size", "response_format", "output_format"})
    parsed = Txt2ImgBody(**fields, format=body.output_format or "png")
    job = build_job("txt2img", parsed, state.registry, state.settings, deadline_s=state.settings.request_timeout_s)
    return _answer(await run_job(request, job))


async def _read_upload(upload: UploadFile, field: str, max_bytes: int, max_side: int):
    data = await upload.read(max_bytes + 1)
    try:
        return open_image(data, field, max_bytes, max_side)
    except ImageError as exc:
        raise BadRequest(str(exc), exc.status) from None


def _transparent(image, field: str) -> np.ndarray:
    if "A" not in image.getbands() and "transparency" not in image.info:
        raise BadRequest(f"{field} has no alpha channel; transparent pixels mark what to repaint", status=400)
    return np.asarray(image.convert("RGBA"))[..., 3] == 0


@router.post("/edits")
async def edits(
    request: Request,
    image: UploadFile = File(..., description="the image to edit (PNG)"),
    prompt: str = Form(..., min_length=1),
    mask: UploadFile | None = File(None, description="PNG of the same size; transparent = repaint"),
    model: str | None = Form(None),
    n: int = Form(1, ge=1, le=8),
    size: str | None = Form(None),
    response_format: str | None = Form(None),
    guidance: float | None = Form(None),
    steps: int | None = Form(None, ge=1, le=8),
    stochastic: bool = Form(False),
    seed: int | None = Form(None, ge=0, le=2**63 - 9),
) -> dict:
    state = state_of(request)
    s = state.settings
    _check_format(response_format)
    _check_size(size, state.registry, model)
    picture = await _read_upload(image, "image", s.max_image_bytes, s.max_image_side)
    if mask is not None:
        mask_image = await _read_upload(mask, "mask", s.max_image_bytes, s.max_image_side)
        repaint = _transparent(mask_image, "mask")
    else:
        repaint = _transparent(picture, "image")
    try:
        parsed = InpaintBody(prompt=prompt, model=model, n=n, guidance=guidance, steps=steps, stochastic=stochastic, seed=seed, image="-", mask="-")
    except ValidationError as exc:
        raise HTTPException(422, [e["msg"] for e in exc.errors()]) from None
    job = build_job("inpaint", parsed, state.registry, state.settings, deadline_s=s.request_timeout_s, images={"image": picture, "mask": repaint})
    return _answer(await run_job(request, job))
