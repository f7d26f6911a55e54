"""Checking a generation request against a family's manifest: the one place every request
field is validated, before a worker ever sees it. Pure and torch-free (the API calls it; so
does `python -m training sample`).

`check_request(info, ask, limits)` takes what a request asks (`Ask`: sizes of uploaded
images, not their pixels) and either returns it resolved (`Checked`: defaults filled in,
class names turned into ids) or raises `InvalidRequest` naming the field at fault.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .manifest import FamilyInfo
from .prompt_length import prompt_tokens


class InvalidRequest(ValueError):
    """A request the family cannot serve; `field` names the request field at fault."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Limits:
    """Service-wide defaults and limits (the service's settings)."""

    default_steps: int = 4
    default_guidance: float = 1.0
    max_prompt_chars: int = 500


@dataclass(frozen=True)
class Ask:
    """What one request asks of a family. Images are described by their sizes (width, height)."""

    steps: int | None = None
    stochastic: bool = False
    guidance: float | tuple[float, ...] | None = None  # a tuple: a guidance sweep (one image per value, one seed)
    n: int = 1
    class_label: int | str | None = None
    prompt: str | None = None
    image_size: tuple[int, int] | None = None  # img2img source or the image to inpaint
    mask_size: tuple[int, int] | None = None  # inpainting: repaint mask
    mask_empty: bool = False  # the mask marks nothing to repaint
    strength: float | None = None  # img2img only


@dataclass(frozen=True)
class Checked:
    """A valid request, resolved: what a worker runs without checking again."""

    steps: int
    stochastic: bool
    guidance: float
    class_label: int | None
    prompt: str | None
    strength: float  # 1.0 unless img2img
    sweep: tuple[float, ...] | None = None  # a guidance sweep: these values, one image each (`guidance` is the first)


MAX_SWEEP = 8  # guidance values in one sweep


def check_request(info: FamilyInfo, ask: Ask, limits: Limits = Limits()) -> Checked:
    """Resolve and check `ask` against `info`; raise InvalidRequest with a message a user can act on."""
    steps = _steps(info, ask.steps, ask.stochastic, limits.default_steps)
    sweep = _sweep(info, ask, limits.default_guidance)
    return Checked(
        steps=steps,
        stochastic=ask.stochastic,
        guidance=sweep[0] if sweep else _guidance(info, ask.guidance, limits.default_guidance),
        sweep=sweep,
        class_label=_class_label(info, ask.class_label),
        prompt=_prompt(info, ask, limits.max_prompt_chars),
        strength=_images(info, ask),
    )


def _steps(info: FamilyInfo, steps: int | None, stochastic: bool, default: int) -> int:
    kind = "stochastic " if stochastic else ""
    available = info.stochastic_steps if stochastic else info.distilled_steps
    if not available:
        raise InvalidRequest(f"model {info.family!r} has no {kind}students", "stochastic" if stochastic else "steps")
    if steps is None:
        return min(available, key=lambda s: (abs(s - default), s))
    if stochastic and steps == 1:
        raise InvalidRequest("the stochastic sampler needs at least 2 steps; use stochastic=false for 1 step", "steps")
    if steps not in available:
        raise InvalidRequest(f"no {kind}student for {steps} steps in model {info.family!r}; available: {available}", "steps")
    return steps


def _guidance(info: FamilyInfo, guidance: float | None, default: float) -> float:
    lo, hi = (float(g) for g in info.guidance_range)
    if guidance is None:
        return min(max(default, lo), hi)
    if not (math.isfinite(guidance) and lo <= guidance <= hi):
        raise InvalidRequest(f"guidance {guidance} is outside the trained range [{lo}, {hi}] of model {info.family!r}", "guidance")
    return float(guidance)


def _sweep(info: FamilyInfo, ask: Ask, default: float) -> tuple[float, ...] | None:
    """A guidance sweep's values, each in range; None for a single guidance value."""
    if not isinstance(ask.guidance, (tuple, list)):
        return None
    values = tuple(ask.guidance)
    if not 1 <= len(values) <= MAX_SWEEP:
        raise InvalidRequest(f"a guidance sweep takes 1 to {MAX_SWEEP} values, got {len(values)}", "guidance")
    if ask.n != 1:
        raise InvalidRequest(f"a guidance sweep draws one seed at each of its values: n must be 1, got {ask.n}", "n")
    return tuple(_guidance(info, float(g), default) for g in values)


def _class_label(info: FamilyInfo, label: int | str | None) -> int | None:
    if label is None:
        return None
    names = info.class_names
    if not names:
        raise InvalidRequest(f"model {info.family!r} takes no class labels", "class_label")
    if isinstance(label, str):
        key = label.strip().lower()
        if not (key.isascii() and key.isdigit() and len(key) <= 9):  # "²" is a digit to isdigit(), not to int()
            index = {n.lower(): i for i, n in enumerate(names)}
            if key not in index:
                raise InvalidRequest(f"unknown class {label!r}; classes of {info.family!r}: {names}", "class_label")
            return index[key]
        label = int(key)
    if not 0 <= label < len(names):
        raise InvalidRequest(f"class_label {label} is out of range (0..{len(names) - 1})", "class_label")
    return int(label)


def _prompt(info: FamilyInfo, ask: Ask, max_chars: int) -> str | None:
    prompt = ask.prompt
    blank = prompt is None or prompt.strip() == ""
    if not blank and ask.class_label is not None:
        raise InvalidRequest("give either prompt or class_label, not both", "prompt")
    unconditional = not info.class_names and not info.text_encoder  # a family that takes neither
    if blank and ask.class_label is None and not unconditional:
        raise InvalidRequest("give a prompt or a class_label" if prompt is None else "prompt is blank", "prompt")
    if blank:
        return None
    if not info.text_encoder:
        raise InvalidRequest(f"model {info.family!r} takes no text prompts", "prompt")
    if len(prompt) > max_chars:
        raise InvalidRequest(f"prompt is longer than {max_chars} characters", "prompt")
    tokens = prompt_tokens(info.text_encoder, prompt, info.family)
    if tokens is not None and tokens > info.text_len:
        raise InvalidRequest(f"prompt is {tokens} tokens long; model {info.family!r} reads at most {info.text_len} (2 of them the start and end tokens): shorten it", "prompt")
    return prompt


def _images(info: FamilyInfo, ask: Ask) -> float:
    """Check the uploads' sizes and the strength; returns the strength (1.0 without img2img)."""
    if ask.image_size is not None and info.resolution is None:
        raise InvalidRequest(f"model {info.family!r} does not take images", "image")
    if ask.mask_size is not None:
        if ask.image_size is None:
            raise InvalidRequest("a mask needs an image", "mask")
        if not info.inpainting:
            raise InvalidRequest(f"model {info.family!r} does not inpaint", "mask")
        if tuple(ask.mask_size) != tuple(ask.image_size):
            (mw, mh), (iw, ih) = ask.mask_size, ask.image_size
            raise InvalidRequest(f"mask is {mw}x{mh} but image is {iw}x{ih}; they must be the same size", "mask")
        if ask.mask_empty:
            raise InvalidRequest("the mask marks nothing to repaint", "mask")
    if ask.strength is None:
        return 1.0
    if ask.image_size is None or ask.mask_size is not None:
        raise InvalidRequest("strength applies to img2img only (an image without a mask)", "strength")
    if not (math.isfinite(ask.strength) and 0 < ask.strength <= 1):
        raise InvalidRequest(f"strength must lie in (0, 1], got {ask.strength}", "strength")
    return float(ask.strength)
