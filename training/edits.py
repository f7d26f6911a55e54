"""Do img2img and inpainting honour the request? Measured through the pipeline the service runs.

- img2img: the distance (RMSE, pixels in [-1, 1]) of the output to the input image as the
  strength varies, with the network evaluations each strength costs. It must grow with the
  strength: a 1-step student at strength 0.3 that ignored the image would sit at the level of
  strength 1.
- inpainting: the kept pixels are exact (max abs difference), and the seam: the mean absolute
  step across the mask border in the output, against the same measure on the real images.
"""

from __future__ import annotations

import torch

from model.family import Family
from model.pipeline import Pipeline, Request

STRENGTHS = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


def _border_step(images: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean |difference| between horizontally or vertically adjacent pixels on either side of
    the mask border (one inside, one outside)."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean(1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean(1)
    bx = masks[..., :, 1:] != masks[..., :, :-1]
    by = masks[..., 1:, :] != masks[..., :-1, :]
    total = dx[bx].sum() + dy[by].sum()
    count = bx.sum() + by.sum()
    return float(total / count.clamp_min(1))


@torch.no_grad()
def evaluate_edits(family: Family, real: torch.Tensor, masks: torch.Tensor, prompts: list[str] | None, labels: list[int] | None, *, steps_list=(1, 4), gamma: float = 1.0) -> dict:
    """img2img and inpainting figures on real images (B, 3, H, W) with repaint masks (B, H, W)."""
    pipe = Pipeline(family, fixed_batch=None)
    n = real.shape[0]

    def requests(**kw) -> list[Request]:
        return [Request(seed=10_000 + k, guidance=gamma, class_label=None if labels is None else labels[k], prompt=None if prompts is None else prompts[k], image=real[k], **{key: (v[k] if isinstance(v, (list, torch.Tensor)) else v) for key, v in kw.items()}) for k in range(n)]

    out = {"img2img": [], "inpaint": []}
    for steps in steps_list:
        if steps not in family.info.distilled_steps:
            continue
        for strength in STRENGTHS:
            reqs = requests(strength=strength)
            x = pipe.generate(reqs, steps=steps).float().cpu()
            rmse = (x - real).flatten(1).pow(2).mean(1).sqrt().mean()
            out["img2img"].append({"steps": steps, "strength": strength, "rmse_to_input": float(rmse), "evaluations": pipe.evaluations(reqs[0], steps=steps)})
        if family.info.inpainting:
            x = pipe.generate(requests(mask=masks), steps=steps).float().cpu()
            keep = (masks < 0.5)[:, None].expand_as(x)
            out["inpaint"].append({
                "steps": steps,
                "kept_max_abs_diff": float((x - real)[keep].abs().max()),
                "border_step": _border_step(x, masks),
                "border_step_real": _border_step(real, masks),
            })
    return out
