"""HTTP bodies -> queue jobs: resolve defaults, decode and check images, validate against the family.

A job is the JSON a worker runs: the family, the student (steps, stochastic), the output
format, a deadline, and one item per image (seed, guidance, condition, preprocessed image).
"""

from __future__ import annotations

import random
import time
import uuid

import numpy as np
import torch

from model.family import FamilyInfo
from model.pipeline import Request, validate_request

from .images import (
    ImageError,
    b64decode,
    from_png_b64,
    mask_to_tensor,
    open_image,
    png_b64,
    to_tensor,
)
from .registry import Registry
from .schemas import Sampling
from .settings import Settings


class BadRequest(ValueError):
    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def resolve_class(info: FamilyInfo, label: int | str | None) -> int | None:
    if label is None:
        return None
    if not info.class_names:
        raise BadRequest(f"model {info.family!r} takes no class labels")
    if isinstance(label, str):
        names = {n.lower(): i for i, n in enumerate(info.class_names)}
        key = label.strip().lower()
        if key.isdigit():
            return int(key)
        if key not in names:
            raise BadRequest(f"unknown class {label!r}; classes of {info.family!r}: {info.class_names}")
        return names[key]
    return label


def default_steps(info: FamilyInfo, wanted: int, stochastic: bool) -> int:
    available = info.stochastic_steps if stochastic else info.distilled_steps
    if not available:
        raise BadRequest(f"model {info.family!r} has no {'stochastic ' if stochastic else ''}students")
    return min(available, key=lambda s: (abs(s - wanted), s))


def build_job(endpoint: str, body: Sampling, registry: Registry, settings: Settings, *, deadline_s: float, images: dict | None = None) -> dict:
    """Validate a parsed body and turn it into a job. Raises BadRequest (or UnknownModel).

    `images` may carry already decoded inputs {"image": PIL, "mask": bool array} (the
    OpenAI edits endpoint, whose mask is an alpha channel); otherwise they come from the body.
    """
    info = registry.info(body.model)
    if body.steps is None:
        body.steps = default_steps(info, settings.default_steps, body.stochastic)
    if body.stochastic and body.steps == 1:
        raise BadRequest("the stochastic sampler needs at least 2 steps; use stochastic=false for 1 step")
    lo, hi = info.guidance_range
    guidance = body.guidance if body.guidance is not None else min(max(settings.default_guidance, lo), hi)
    prompt = getattr(body, "prompt", None)
    if prompt is not None and len(prompt) > settings.max_prompt_chars:
        raise BadRequest(f"prompt is longer than {settings.max_prompt_chars} characters")
    class_label = resolve_class(info, getattr(body, "class_label", None))
    image = mask = None
    side = info.resolution
    try:
        images = images or _decode_body_images(body, settings)
        if "image" in images:
            if side is None:
                raise BadRequest(f"model {info.family!r} does not take images")
            image = to_tensor(images["image"], side)
        if "mask" in images:
            mask_array = images["mask"]
            width, height = images["image"].size
            if mask_array.shape != (height, width):
                raise BadRequest(f"mask is {mask_array.shape[1]}x{mask_array.shape[0]} but image is {width}x{height}; they must be the same size")
            if not mask_array.any():
                raise BadRequest("the mask marks nothing to repaint")
            mask = mask_to_tensor(mask_array, side)
    except ImageError as exc:
        raise BadRequest(str(exc), exc.status) from None
    strength = getattr(body, "strength", 1.0)
    request = Request(seed=0, guidance=guidance, class_label=class_label, prompt=prompt, image=image, mask=mask, strength=strength)
    try:
        validate_request(info, request, steps=body.steps, stochastic=body.stochastic)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    seed = body.seed if body.seed is not None else random.randrange(2**31)
    item = {
        "guidance": guidance,
        "class_label": class_label,
        "prompt": prompt,
        "image": png_b64(image) if image is not None else None,
        "mask": mask.to(int).tolist() if mask is not None else None,
        "strength": strength,
    }
    now = time.time()
    return {
        "id": uuid.uuid4().hex,
        "endpoint": endpoint,
        "model": info.family,
        "steps": body.steps,
        "stochastic": body.stochastic,
        "format": body.format,
        "created": now,
        "deadline": now + deadline_s,
        "items": [{**item, "seed": seed + k} for k in range(body.n)],
    }


def _decode_body_images(body: Sampling, settings: Settings) -> dict:
    out = {}
    if getattr(body, "image", None) is not None:
        data = b64decode(body.image, "image", settings.max_image_bytes)
        out["image"] = open_image(data, "image", settings.max_image_bytes, settings.max_image_side)
    if getattr(body, "mask", None) is not None:
        data = b64decode(body.mask, "mask", settings.max_image_bytes)
        mask = open_image(data, "mask", settings.max_image_bytes, settings.max_image_side)
        out["mask"] = np.asarray(mask.convert("L")) > 127
    return out


def job_requests(job: dict) -> list[Request]:
    """The pipeline requests of a job (worker side)."""
    out = []
    for it in job["items"]:
        out.append(
            Request(
                seed=int(it["seed"]),
                guidance=float(it["guidance"]),
                class_label=it["class_label"],
                prompt=it["prompt"],
                image=from_png_b64(it["image"]) if it["image"] else None,
                mask=torch.tensor(it["mask"], dtype=torch.float32) if it["mask"] else None,
                strength=float(it["strength"]),
            )
        )
    return out
