"""Samplers over a denoiser callable (z_t, t, cond) -> x_hat, all with one signature:

    sampler(denoise, z, cond, *, steps, start=None, noise=None) -> x

`z` is the starting point: pure noise at t = 1, or (img2img) a noised image at t = start/steps.
`start` (B,) holds, per sample, the grid index i to start from (t = i/steps; default steps);
a sample waits, unchanged, until the loop reaches its start. The grid is uniform in t,
t_i = i / steps, which is the grid the distilled students were trained on.
"""

from __future__ import annotations

import math

import torch

from . import schedule
from .conditioning import Cond
from .guidance import Denoise
from .noise import SeededNoise


def _start(start: torch.Tensor | None, steps: int, z: torch.Tensor) -> torch.Tensor:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if start is None:
        return torch.full((z.shape[0],), steps, dtype=torch.long, device=z.device)
    return start.to(z.device)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(schedule.expand_like(mask, a).bool(), a, b)


def sample_ddim(denoise: Denoise, z: torch.Tensor, cond: Cond, *, steps: int, start=None, noise=None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12 with eta = 0) on the uniform grid; teacher+CFG or a distilled student."""
    start = _start(start, steps, z)
    for i in range(steps, 0, -1):
        active = start >= i
        if not active.any():
            continue
        t = torch.full((z.shape[0],), i / steps, dtype=z.dtype, device=z.device)
        s = torch.full_like(t, (i - 1) / steps)
        x_hat = denoise(z, t, cond)
        z = _where(active, schedule.ddim_step(z_t=z, x_hat=x_hat, t=t, s=s), z)
    return z


def sample_stochastic(
    denoise: Denoise, z: torch.Tensor, cond: Cond, *, steps: int, start=None, noise: SeededNoise | None = None
) -> torch.Tensor:
    """N-step stochastic sampling (Meng et al. 2023, sec. 4.2): from t = i/N take a deterministic
    step of length 2/N to u = (i-2)/N, then noise forward to s = (i-1)/N; the last step is plain."""
    if noise is None:
        raise ValueError("stochastic sampling needs per-sample noise (a SeededNoise)")
    start = _start(start, steps, z)
    for i in range(steps, 0, -1):
        active = start >= i
        xi = noise.randn(tuple(z.shape[1:])) if i > 1 else None  # drawn every step: a seed's noise never depends on its batch
        if not active.any():
            continue
        t = torch.full((z.shape[0],), i / steps, dtype=z.dtype, device=z.device)
        s = torch.full_like(t, (i - 1) / steps)
        x_hat = denoise(z, t, cond)
        if i > 1:
            u = torch.full_like(t, (i - 2) / steps)
            z_u = schedule.ddim_step(z_t=z, x_hat=x_hat, t=t, s=u)
            z_next = schedule.renoise(z_u=z_u, u=u, s=s, xi=xi)
        else:
            z_next = schedule.ddim_step(z_t=z, x_hat=x_hat, t=t, s=s)
        z = _where(active, z_next, z)
    return z


def _half_logsnr(t: float) -> float:
    """log(alpha_t / sigma_t), unclipped (float64); -inf/inf only at the ends, handled by the caller."""
    return math.log(math.cos(0.5 * math.pi * t)) - math.log(math.sin(0.5 * math.pi * t))


def sample_dpmpp_2m(denoise: Denoise, z: torch.Tensor, cond: Cond, *, steps: int, start=None, noise=None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in data prediction, on the uniform grid;
    first order on each sample's first step and on the final step to t = 0."""
    start = _start(start, steps, z)
    x_prev = None
    h_prev = None
    has_prev = torch.zeros_like(start, dtype=torch.bool)
    for i in range(steps, 0, -1):
        active = start >= i
        if not active.any():
            continue
        t_val, s_val = i / steps, (i - 1) / steps
        t = torch.full((z.shape[0],), t_val, dtype=z.dtype, device=z.device)
        x_hat = denoise(z, t, cond)
        if i == 1:  # sigma_0 = 0: the first-order step lands on x_hat
            z_next = x_hat
        else:
            h = _half_logsnr(s_val) - _half_logsnr(t_val)
            d = x_hat
            if x_prev is not None:
                r = h_prev / h
                d2 = (1.0 + 0.5 / r) * x_hat - (0.5 / r) * x_prev
                d = _where(has_prev, d2, x_hat)
            a_s = math.cos(0.5 * math.pi * s_val)
            ratio = math.sin(0.5 * math.pi * s_val) / math.sin(0.5 * math.pi * t_val)
            z_next = ratio * z + a_s * (-math.expm1(-h)) * d
            h_prev = h
        z = _where(active, z_next, z)
        x_prev = x_hat
        has_prev = has_prev | active
    return z


SAMPLERS = {"ddim": sample_ddim, "stochastic": sample_stochastic, "dpmpp2m": sample_dpmpp_2m}


def img2img_start(
    x: torch.Tensor, strength: torch.Tensor | float, steps: int, noise: SeededNoise
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Start img2img at exactly t = strength: z = alpha_t x + sigma_t eps. Returns (z, t, start),
    start the grid index i = floor(strength N) at or below t (0 when t < 1/N). A sample whose t
    lies between grid points needs one partial step to i/N first (`step_to_grid`)."""
    strength = torch.as_tensor(strength, dtype=torch.float32).expand(x.shape[0]).to(x.device)
    if ((strength <= 0) | (strength > 1)).any():
        raise ValueError("strength must lie in (0, 1]")
    start = grid_start(strength, steps)
    eps = noise.randn(tuple(x.shape[1:]))
    t = strength.clamp_min(1e-4).to(x.dtype)  # sigma_t > 0 even in half precision
    return schedule.diffuse(x=x, eps=eps, t=t), t, start


def grid_start(strength: torch.Tensor, steps: int) -> torch.Tensor:
    """The grid index i = floor(strength N) at or below t = strength."""
    return torch.floor(strength * steps + 1e-6).long().clamp(0, steps)


def img2img_evaluations(strength: float, steps: int) -> int:
    """Network evaluations of an img2img request: the grid steps below t = strength, plus the
    partial step when the strength falls between grid points."""
    t = torch.tensor([float(strength)])
    start = grid_start(t, steps)
    return int(start) + int(off_grid(t, start, steps))


def off_grid(t: torch.Tensor, start: torch.Tensor, steps: int) -> torch.Tensor:
    """Which samples start between grid points (t > start / steps)."""
    return t > start.to(t.dtype) / steps + 1e-6


def step_to_grid(denoise: Denoise, z: torch.Tensor, cond: Cond, *, t: torch.Tensor, start: torch.Tensor, steps: int) -> torch.Tensor:
    """One DDIM step from each sample's own t down to its grid point start / steps, for samples
    that start off the grid (others are returned unchanged). `denoise` must be good at any t:
    the stage-1 student, which was trained on t ~ U[0, 1]."""
    start = start.to(z.device)
    move = off_grid(t, start, steps)
    if not move.any():
        return z
    s = start.to(z.dtype) / steps
    x_hat = denoise(z, t, cond)
    return _where(move, schedule.ddim_step(z_t=z, x_hat=x_hat, t=t, s=s), z)


def network_evaluations(steps: int, guided: bool) -> int:
    """Network evaluations per image: a CFG step costs two."""
    return steps * (2 if guided else 1)
