"""Gamma response: does a student's prediction follow the guidance weight it is given?

For the same z_t, condition and t, the guided teacher's prediction moves by
(gamma_max - gamma_min) (x_hat(z, c) - x_hat(z, null)) between gamma_min and gamma_max.
The response is the size of the student's own move over that:
||x_s(z, c, gamma_max) - x_s(z, c, gamma_min)|| / ||teacher's move||, over a batch.
A student that ignores gamma scores 0; one that follows it as the teacher does, about 1.
An N-step student only knows the times of its grid, so it is measured there (response_times).
"""

from __future__ import annotations

import torch

from model import schedule
from model.conditioning import Cond
from model.denoiser import Denoiser
from model.guidance import guided

RESPONSE_TIMES = (0.3, 0.5, 0.7)


def response_times(steps: int | None) -> tuple[float, ...]:
    """Where to measure a student: RESPONSE_TIMES for the stage-1 student (steps None, trained on
    every t); for an N-step student, the points of its own grid i/N nearest to them."""
    if steps is None:
        return RESPONSE_TIMES
    return tuple(sorted({min(max(round(t * steps), 1), steps) / steps for t in RESPONSE_TIMES}))


@torch.no_grad()
def gamma_response(student: Denoiser, teacher: Denoiser, x: torch.Tensor, cond: Cond, *, gamma_range, times=RESPONSE_TIMES, seed: int = 0, clip: bool = False) -> dict:
    """{"t=0.3": r, ..., "mean": mean over t} for clean samples x (z-space) and their conditions.
    With `clip` (pixel space), both predictions are clipped to [-1, 1] first, as the students'
    targets and every sampler clip them."""
    lo, hi = (float(g) for g in gamma_range)
    if hi <= lo:
        raise ValueError(f"gamma response needs gamma_max > gamma_min, got {gamma_range}")
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t_val in times:
        eps = torch.randn(x.shape, generator=g).to(x.device)
        t = torch.full((x.shape[0],), float(t_val), device=x.device)
        z = schedule.diffuse(x=x, eps=eps, t=t)
        c = (lambda v: v.clamp(-1.0, 1.0)) if clip else (lambda v: v)
        teacher_move = c(guided(teacher, hi)(z, t, cond)) - c(guided(teacher, lo)(z, t, cond))
        student_move = c(student(z, t, cond, hi)) - c(student(z, t, cond, lo))
        out[f"t={t_val:g}"] = float(student_move.norm() / teacher_move.norm().clamp_min(1e-12))
    out["mean"] = sum(out.values()) / len(times)
    return out
