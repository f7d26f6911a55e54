"""Generation settings carried inside the PNG files the service returns, and read back.

Every PNG gets one iTXt chunk per setting (model, endpoint, steps, stochastic, guidance, seed,
prompt or class_label, strength for img2img) and a `fewstep` chunk holding them all as JSON, so
that a file dropped back into the playground, or sent to POST /v1/png-info, says how to draw it
again. Torch-free: the API reads them, workers write them.
"""

from __future__ import annotations

import io
import json

from PIL import Image

from .contract import Job, JobItem
from .images import ImageError

MAX_DEPTH = 32  # of the settings' JSON; the service writes one flat object
CHUNK = "fewstep"  # the JSON chunk; the per-setting chunks are for other PNG readers


def settings_of(job: Job, item: JobItem) -> dict:
    """What it takes to draw this image again."""
    out = {"model": job.model, "endpoint": job.endpoint, "steps": job.steps, "stochastic": job.stochastic, "guidance": item.guidance, "seed": item.seed}
    if item.prompt is not None:
        out["prompt"] = item.prompt
    if item.class_label is not None:
        out["class_label"] = item.class_label
    if job.endpoint == "img2img":
        out["strength"] = item.strength
    return out


def png_text(settings: dict) -> dict[str, str]:
    """The PNG text chunks (keyword -> text) that carry `settings` (service/png.py writes them)."""
    text = {key: value if isinstance(value, str) else json.dumps(value) for key, value in settings.items()}
    text[CHUNK] = json.dumps(settings, sort_keys=True)
    return text


def read_settings(data: bytes) -> dict:
    """The settings of a PNG the service made; ImageError (4xx) for anything else."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ImageError("image is not a PNG file", status=415, field="image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            text = dict(image.info)  # the chunks before the pixel data (where ours are), no pixel decoded
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for bad bytes
        raise ImageError(f"image is not a readable PNG ({type(exc).__name__})", field="image") from None
    raw = text.get(CHUNK)
    if raw is None:
        raise ImageError("the PNG carries no fewstep settings (it was not made by this service, or its text chunks were stripped)", status=422, field="image")
    try:
        settings = json.loads(raw)
        json.dumps(settings, allow_nan=False, ensure_ascii=False).encode("utf-8")  # what the answer will carry
    except (ValueError, RecursionError):  # UnicodeEncodeError (a lone surrogate) is a ValueError too
        raise ImageError("the PNG's fewstep settings are not valid JSON", status=422, field="image") from None
    if not isinstance(settings, dict):
        raise ImageError("the PNG's fewstep settings are not a JSON object", status=422, field="image")
    if _depth(settings) > MAX_DEPTH:  # the answer's serializer stops at 255 levels, with a 500
        raise ImageError(f"the PNG's fewstep settings are nested deeper than {MAX_DEPTH} levels", status=422, field="image")
    return settings


def _depth(value) -> int:
    """How deeply lists and objects nest in a parsed JSON value (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest
