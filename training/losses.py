"""The three training objectives and the distillation targets (docs/design.md, section 1).

Each loss takes the networks as callables and a generator, draws its own t, gamma and
noise, and returns the weighted mean squared error in v-space (see schedule.loss_weight).
With `clip` (pixel-space data), the teacher's x_hat is clipped to the data range [-1, 1]
in every teacher step and target: guidance extrapolates beyond the data range.
"""

from __future__ import annotations

import torch

from model import schedule
from model.conditioning import Cond
from model.guidance import Denoise, clipped, gamma_conditioned


def device_generator(g: torch.Generator, device) -> torch.Generator:
    """A generator on `device`, seeded by the first draw of the step's generator `g`: t, gamma
    and the noise are drawn where the network runs, with no host-to-device copy, and a
    resumed step draws exactly what the killed one would have."""
    dg = torch.Generator(device=device)
    dg.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
    return dg


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=g.device)


def _noise(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=g, device=g.device, dtype=x.dtype)


def _weighted_mse(v_pred: torch.Tensor, v_target: torch.Tensor, t: torch.Tensor, weighting: str) -> torch.Tensor:
    per_sample = (v_pred - v_target).pow(2).flatten(1).mean(1)
    return (schedule.loss_weight(t, weighting) * per_sample).mean()


def teacher_loss(model, x: torch.Tensor, cond: Cond, *, weighting: str, g: torch.Generator) -> torch.Tensor:
    """Conditional diffusion with v-prediction (Salimans & Ho 2022); `cond` already carries the
    condition dropout that trains the null branch."""
    n, g = x.shape[0], device_generator(g, x.device)
    t = torch.rand(n, generator=g, device=x.device)
    eps = _noise(x, g)
    z = schedule.diffuse(x=x, eps=eps, t=t)
    v_pred = model(z, t, cond, predict="v")
    return _weighted_mse(v_pred, schedule.v_from_x_eps(x=x, eps=eps, t=t), t, weighting)


def stage1_loss(student, teacher, x: torch.Tensor, cond: Cond, *, gamma_range, weighting: str, g: torch.Generator, clip: bool = False) -> torch.Tensor:
    """Stage 1 (Meng et al. 2023, Algorithm 1): match the teacher's guided prediction for
    gamma ~ U[gamma_min, gamma_max]. Guidance is linear, so the guided x_hat^gamma target
    equals the guided v target (1 + gamma) v_c - gamma v_null exactly; we compare in v-space
    (after clipping x_hat^gamma with `clip`)."""
    n, g = x.shape[0], device_generator(g, x.device)
    gamma = _uniform(n, *gamma_range, g)
    t = torch.rand(n, generator=g, device=x.device)
    eps = _noise(x, g)
    z = schedule.diffuse(x=x, eps=eps, t=t)
    with torch.no_grad():
        v_both = teacher(torch.cat([z, z]), torch.cat([t, t]), Cond.cat([cond, cond.null()]), predict="v")
        v_c, v_u = v_both.chunk(2)
        g_ = schedule.expand_like(gamma, x)
        v_target = (1 + g_) * v_c - g_ * v_u
    v_pred = student(z, t, cond, gamma, predict="v")
    if not clip:
        return _weighted_mse(v_pred, v_target, t, weighting)
    return _weighted_mse_clipped(v_pred, v_target, z, t, weighting)


def _weighted_mse_clipped(v_pred: torch.Tensor, v_target: torch.Tensor, z: torch.Tensor, t: torch.Tensor, weighting: str) -> torch.Tensor:
    """The v-space error of what the sampler uses, x_hat clipped to [-1, 1]: the target's x is
    clipped, and where the target lies beyond a bound, a prediction beyond the same bound is
    not an error (both clip to it). v = (alpha z - x) / sigma, so an x error d is a v error
    -d / sigma. A student that starts as its teacher (gamma = 0) starts at zero loss, even
    where the teacher's raw x_hat lies far outside the data range (near pure noise)."""
    sigma = schedule.expand_like(schedule.sigma_t(t).clamp_min(1e-4), z)
    x_target = schedule.x_from_v(z=z, v=v_target, t=t)
    x_pred = schedule.x_from_v(z=z, v=v_pred, t=t)
    err = x_pred - x_target.clamp(-1.0, 1.0)
    both_beyond = ((x_target > 1.0) & (x_pred > 1.0)) | ((x_target < -1.0) & (x_pred < -1.0))
    err = torch.where(both_beyond, torch.zeros_like(err), err)
    per_sample = (err / sigma).pow(2).flatten(1).mean(1)
    return (schedule.loss_weight(t, weighting) * per_sample).mean()


def two_ddim_steps_target(teacher: Denoise, z_t, t, t_mid, t_end, cond: Cond) -> torch.Tensor:
    """Two DDIM steps with the teacher, z_t -> z_mid -> z_end, then the x_tilde that makes ONE
    DDIM step t -> t_end land on z_end (Salimans & Ho 2022, Algorithm 2)."""
    z_mid = schedule.ddim_step(z_t=z_t, x_hat=teacher(z_t, t, cond), t=t, s=t_mid)
    z_end = schedule.ddim_step(z_t=z_mid, x_hat=teacher(z_mid, t_mid, cond), t=t_mid, s=t_end)
    return schedule.x_tilde(z_t=z_t, z_s=z_end, t=t, s=t_end)


def stochastic_target(teacher: Denoise, z_t, t, step: float, first: torch.Tensor, cond: Cond) -> torch.Tensor:
    """Target for the N-step stochastic student: from t = i/N, two teacher steps of length
    1/N (= `step`) when i >= 2, so the student learns one step of 2/N; at i = 1 (`first`) one
    teacher step to t = 0, whose x_tilde is the teacher's own x_hat."""
    x_hat_t = teacher(z_t, t, cond)
    t_mid = (t - step).clamp_min(0.0)
    z_mid = schedule.ddim_step(z_t=z_t, x_hat=x_hat_t, t=t, s=t_mid)
    safe_mid = torch.where(first, torch.full_like(t, step), t_mid)  # the i = 1 rows stop at t = 0
    t_end = (t - 2 * step).clamp_min(0.0)
    z_end = schedule.ddim_step(z_t=z_mid, x_hat=teacher(z_mid, safe_mid, cond), t=safe_mid, s=t_end)
    two = schedule.x_tilde(z_t=z_t, z_s=z_end, t=t, s=t_end)
    return torch.where(first.reshape(first.shape + (1,) * (two.ndim - 1)), x_hat_t, two)


def distill_loss(student, teacher, x: torch.Tensor, cond: Cond, *, steps: int, stochastic: bool, gamma_range, weighting: str, g: torch.Generator, clip: bool = False) -> torch.Tensor:
    """Stage 2 (Meng et al. 2023, Algorithm 2): the N-step student matches two steps of its
    teacher; with `stochastic`, the student for the N-step stochastic sampler (see stochastic_target)."""
    n, g = x.shape[0], device_generator(g, x.device)
    gamma = _uniform(n, *gamma_range, g)
    i = torch.randint(1, steps + 1, (n,), generator=g, device=x.device)
    t = i.to(x.dtype) / steps
    eps = _noise(x, g)
    z_t = schedule.diffuse(x=x, eps=eps, t=t)
    with torch.no_grad():
        fn = gamma_conditioned(teacher, gamma)
        fn = clipped(fn) if clip else fn
        if stochastic:
            target = stochastic_target(fn, z_t, t, 1.0 / steps, i == 1, cond)
        else:
            target = two_ddim_steps_target(fn, z_t, t, t - 0.5 / steps, t - 1.0 / steps, cond)
        v_target = schedule.v_from_x(z=z_t, x=target, t=t)
    v_pred = student(z_t, t, cond, gamma, predict="v")
    return _weighted_mse(v_pred, v_target, t, weighting)
