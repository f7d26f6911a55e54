"""Samplers over a denoiser callable (z_t, t, cond) -> x_hat, all with one signature (as
k-diffusion's samplers take `sigmas` and `callback`):

    sampler(denoise, z, cond, *, grid, start=None, noise=None, callback=None) -> x

`grid` (N + 1,) holds the times t_0 = 0 < t_1 < ... < t_N = 1; a sampler steps from t_i to
t_{i-1}, i = N..1. Build it once with `schedule.time_grid(N)`: the uniform grid t_i = i / N
that the distilled students were trained on. `z` is the starting point: pure noise at t = 1,
or (img2img) a noised image at t_start. `start` (B,) holds, per sample, the grid index i to
start from (default N); a sample waits, unchanged, until the loop reaches its start.
`callback(k, n, x_hat)`, when given, is called after every step k = 0..n-1 (n = N) that some
sample takes (img2img skips those above its start) with that step's prediction of the clean
sample (progress previews).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from . import schedule
from .conditioning import Cond
from .guidance import Denoise
from .noise import SeededNoise


Callback = Callable[[int, int, torch.Tensor], None]


def _grid_steps(grid: torch.Tensor) -> int:
    if grid.ndim != 1 or len(grid) < 2:
        raise ValueError(f"a time grid holds N + 1 >= 2 times t_0 < ... < t_N, got shape {tuple(grid.shape)}")
    return len(grid) - 1


def _t(grid: torch.Tensor, i: int, z: torch.Tensor) -> torch.Tensor:
    """Grid time t_i for every sample of z, in z's dtype."""
    return torch.full((z.shape[0],), float(grid[i]), dtype=z.dtype, device=z.device)


def _start(start: torch.Tensor | None, steps: int, z: torch.Tensor) -> torch.Tensor:
    if start is None:
        return torch.full((z.shape[0],), steps, dtype=torch.long, device=z.device)
    return start.to(z.device)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(schedule.expand_like(mask, a).bool(), a, b)


def sample_ddim(denoise: Denoise, z: torch.Tensor, cond: Cond, *, grid: torch.Tensor, start=None, noise=None, callback: Callback | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12 with eta = 0) on the grid; teacher+CFG or a distilled student."""
    steps = _grid_steps(grid)
    start = _start(start, steps, z)
    for i in range(steps, 0, -1):
        active = start >= i
        if not active.any():
            continue
        t, s = _t(grid, i, z), _t(grid, i - 1, z)
        x_hat = denoise(z, t, cond)
        z = _where(active, schedule.ddim_step(z_t=z, x_hat=x_hat, t=t, s=s), z)
        if callback is not None:
            callback(steps - i, steps, x_hat)
    return z


def sample_stochastic(
    denoise: Denoise, z: torch.Tensor, cond: Cond, *, grid: torch.Tensor, start=None, noise: SeededNoise | None = None, callback: Callback | None = None
) -> torch.Tensor:
    """N-step stochastic sampling (Meng et al. 2023, sec. 4.2): from t_i take a deterministic
    step of two grid intervals to u = t_{i-2}, then noise forward to s = t_{i-1}; the last step is plain."""
    if noise is None:
        raise ValueError("stochastic sampling needs per-sample noise (a SeededNoise)")
    steps = _grid_steps(grid)
    start = _start(start, steps, z)
    for i in range(steps, 0, -1):
        active = start >= i
        xi = noise.randn(tuple(z.shape[1:])) if i > 1 else None  # drawn every step: a seed's noise never depends on its batch
        if not active.any():
            continue
        t, s = _t(grid, i, z), _t(grid, i - 1, z)
        x_hat = denoise(z, t, cond)
        if i > 1:
            u = _t(grid, i - 2, z)
            z_u = schedule.ddim_step(z_t=z, x_hat=x_hat, t=t, s=u)
            z_next = schedule.renoise(z_u=z_u, u=u, s=s, xi=xi)
        else:
            z_next = schedule.ddim_step(z_t=z, x_hat=x_hat, t=t, s=s)
        z = _where(active, z_next, z)
        if callback is not None:
            callback(steps - i, steps, x_hat)
    return z


def _half_logsnr(t: float) -> float:
    """log(alpha_t / sigma_t), unclipped (float64); -inf/inf only at the ends, handled by the caller."""
    return math.log(math.cos(0.5 * math.pi * t)) - math.log(math.sin(0.5 * math.pi * t))


def sample_dpmpp_2m(denoise: Denoise, z: torch.Tensor, cond: Cond, *, grid: torch.Tensor, start=None, noise=None, callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in data prediction, on the grid;
    first order on each sample's first step and on the final step to t = 0."""
    steps = _grid_steps(grid)
    start = _start(start, steps, z)
    x_prev = None
    h_prev = None
    has_prev = torch.zeros_like(start, dtype=torch.bool)
    for i in range(steps, 0, -1):
        active = start >= i
        if not active.any():
            continue
        t_val, s_val = float(grid[i]), float(grid[i - 1])
        t = _t(grid, i, z)
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
        if callback is not None:
            callback(steps - i, steps, x_hat)
    return z


SAMPLERS = {"ddim": sample_ddim, "stochastic": sample_stochastic, "dpmpp2m": sample_dpmpp_2m}


def img2img_start(
    x: torch.Tensor, strength: torch.Tensor | float, grid: torch.Tensor, noise: SeededNoise
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Start img2img at exactly t = strength: z = alpha_t x + sigma_t eps. Returns (z, t, start),
    start the index of the grid time at or below t (0 when t < t_1). A sample whose t lies
    between grid times needs one partial step down to t_start first (`step_to_grid`)."""
    strength = torch.as_tensor(strength, dtype=torch.float32).expand(x.shape[0]).to(x.device)  # in (0, 1]: model/validation.py
    start = grid_start(strength, grid)
    eps = noise.randn(tuple(x.shape[1:]))
    t = strength.clamp_min(1e-4).to(x.dtype)  # sigma_t > 0 even in half precision
    return schedule.diffuse(x=x, eps=eps, t=t), t, start


def grid_start(strength: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The index i of the grid time t_i at or below t = strength, within a millionth of a grid
    interval; compared in strength's dtype."""
    tolerance = 1e-6 / (len(grid) - 1)
    index = torch.searchsorted(grid.to(strength.device, strength.dtype), strength + tolerance, right=True) - 1
    return index.clamp(0, len(grid) - 1)


def img2img_evaluations(strength: float, grid: torch.Tensor) -> int:
    """Network evaluations of an img2img request: the grid steps below t = strength, plus the
    partial step when the strength falls between grid times."""
    t = torch.tensor([float(strength)])
    start = grid_start(t, grid)
    return int(start) + int(off_grid(t, start, grid))


def off_grid(t: torch.Tensor, start: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Which samples start between grid times (t > t_start), compared in t's dtype."""
    return t > grid.to(t.device, t.dtype)[start] + 1e-6


def step_to_grid(denoise: Denoise, z: torch.Tensor, cond: Cond, *, t: torch.Tensor, start: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """One DDIM step from each sample's own t down to its grid time t_start, for samples that
    start off the grid (others are returned unchanged). `denoise` must be good at any t: the
    stage-1 student, which was trained on t ~ U[0, 1]."""
    start = start.to(z.device)
    move = off_grid(t, start, grid)
    if not move.any():
        return z
    s = grid.to(z.device)[start].to(z.dtype)
    x_hat = denoise(z, t, cond)
    return _where(move, schedule.ddim_step(z_t=z, x_hat=x_hat, t=t, s=s), z)


def network_evaluations(steps: int, guided: bool) -> int:
    """Network evaluations per image: a CFG step costs two."""
    return steps * (2 if guided else 1)
