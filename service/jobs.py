"""HTTP bodies -> checked jobs (service/contract.py). Torch-free: the API process runs this.

The body's fields are checked against the family's manifest in one place,
`model.validation.check_request`; uploads are decoded and size-capped here (service/images.py),
then resized to the family's resolution and shipped as PNG bytes.
"""

from __future__ import annotations

import random
import time
import hashlib
import uuid

from model.manifest import FamilyInfo
from model.validation import Ask, Limits, check_request

from .contract import Job, JobItem
from .images import b64decode, mask_of, open_image, resized_mask, resized_rgb
from .schemas import Sampling
from .settings import Settings


def limits(settings: Settings) -> Limits:
    return Limits(default_steps=settings.default_steps, default_guidance=settings.default_guidance, max_prompt_chars=settings.max_prompt_chars)


def idempotent_job_id(key: str) -> str:
    """The job id of a client's Idempotency-Key: a retried POST /v1/jobs finds the job it queued."""
    if not 1 <= len(key) <= 255 or not key.isascii() or not key.isprintable():
        raise ValueError("Idempotency-Key must be 1 to 255 printable ASCII characters")
    return hashlib.sha256(b"fewstep-idempotency-key:" + key.encode()).hexdigest()[:32]


def build_job(endpoint: str, body: Sampling, info: FamilyInfo, settings: Settings, *, deadline_s: float, images: dict | None = None, store_result: bool = False, job_id: str | None = None, webhook: str | None = None) -> Job:
    """Check a parsed body against its family and turn it into a job. Raises InvalidRequest or
    ImageError (both say what is wrong).

    `images` may carry already decoded uploads {"image": PIL image, "mask": (H, W) bool array}
    (the OpenAI edits endpoint, whose mask is an alpha channel); otherwise they come from the body.
    `store_result`: keep the result for GET /v1/jobs/{id} (else it goes to the waiting request only).
    """
    if images is None:
        images = decode_body_images(body, settings)
    picture, mask = images.get("image"), images.get("mask")
    ask = Ask(
        steps=body.steps,
        stochastic=body.stochastic,
        guidance=tuple(body.guidance) if isinstance(body.guidance, list) else body.guidance,
        n=body.n,
        class_label=getattr(body, "class_label", None),
        prompt=getattr(body, "prompt", None),
        image_size=picture.size if picture is not None else None,
        mask_size=(mask.shape[1], mask.shape[0]) if mask is not None else None,
        mask_empty=mask is not None and not mask.any(),
        strength=getattr(body, "strength", None),
    )
    checked = check_request(info, ask, limits(settings))
    side = info.resolution
    item = {
        "guidance": checked.guidance,
        "class_label": checked.class_label,
        "prompt": checked.prompt,
        "image": resized_rgb(picture, side) if picture is not None else None,
        "mask": resized_mask(mask, side) if mask is not None else None,
        "strength": checked.strength,
    }
    seed = body.seed if body.seed is not None else random.randrange(2**31)
    if checked.sweep is not None:  # one seed, one image per guidance value
        items = [JobItem(**{**item, "guidance": g}, seed=seed) for g in checked.sweep]
    else:
        items = [JobItem(**item, seed=seed + k) for k in range(body.n)]
    now = time.time()
    return Job(
        id=job_id or uuid.uuid4().hex,
        endpoint=endpoint,
        model=info.family,
        steps=checked.steps,
        stochastic=checked.stochastic,
        format=body.format,
        created=now,
        deadline=now + deadline_s,
        store_result=store_result,
        sweep=checked.sweep is not None,
        webhook=webhook,
        items=items,
    )


def decode_body_images(body: Sampling, settings: Settings) -> dict:
    """{"image": PIL image, "mask": (H, W) bool} from a JSON body's base64 fields (those it has)."""
    out: dict = {}
    for field in ("image", "mask"):
        text = getattr(body, field, None)
        if text is not None:
            data = b64decode(text, field, settings.max_image_bytes)
            out[field] = open_image(data, field, settings.max_image_bytes, settings.max_image_side)
    if "mask" in out:
        out["mask"] = mask_of(out["mask"])
    return out

