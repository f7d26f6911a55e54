"""A discrete-time teacher's noise schedule (diffusers' `num_train_timesteps`, `beta_schedule`
or `trained_betas`) mapped onto fewstep's continuous time (docs/design.md, "Teachers from
diffusers").

Both are variance preserving: a diffusers teacher sees x_tau = sqrt(abar_tau) x + sqrt(1 - abar_tau) eps
at integer timesteps tau = 0..T-1, and fewstep's z_t = alpha_t x + sigma_t eps. A z_t is what
the teacher expects at the (fractional) timestep whose log-SNR equals lambda(t); between integer
timesteps the log-SNR is interpolated linearly (the U-Nets embed fractional timesteps
smoothly). Beyond the teacher's range the timestep is clamped: at t = 1 (pure noise) the teacher
is asked at tau = T - 1, whose log-SNR is finite (about -5.4 for Stable Diffusion's
scaled_linear betas, i.e. t_max = 0.956), and it is told the signal scale of that timestep.

Pure functions of tensors; the schedule itself is computed by diffusers' own DDPMScheduler,
so that it matches, bit for bit, the alphas_cumprod the teacher was trained with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import schedule
from .config_io import ConfigError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# how a student of an imported teacher may read its output: a teacher's types, or epsilon with the
# division by alpha bounded (exact where alpha >= alpha_floor; see x_from_output)
STUDENT_READINGS = PREDICTION_TYPES + ("bounded_epsilon",)


@dataclass(frozen=True)
class DiscreteSchedule:
    """The teacher's alphas_cumprod (T,) and its log-SNR table, decreasing in tau."""

    alphas_cumprod: torch.Tensor  # float64
    logsnr: torch.Tensor  # float64, log(abar / (1 - abar)), clipped to fewstep's range

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])


def from_scheduler_config(config: dict) -> DiscreteSchedule:
    """The schedule of a diffusers scheduler config (any scheduler class: the fields that define
    the betas are shared). ConfigError for a schedule fewstep does not map."""
    trained = config.get("trained_betas")
    kind = config.get("beta_schedule", "linear")
    if trained is None and kind not in BETA_SCHEDULES:
        raise ConfigError(f"beta_schedule {kind!r} is not supported; fewstep maps {', '.join(BETA_SCHEDULES)} or trained_betas")
    steps = config.get("num_train_timesteps", 1000)
    if not isinstance(steps, int) or steps < 2:
        raise ConfigError(f"num_train_timesteps must be an integer >= 2, got {steps!r}")
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "rescale_betas_zero_snr")
    scheduler = DDPMScheduler(**{k: config[k] for k in keys if k in config and config[k] is not None})
    return from_alphas_cumprod(scheduler.alphas_cumprod)


def from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> DiscreteSchedule:
    abar = alphas_cumprod.to(torch.float64)
    if abar.ndim != 1 or abar.shape[0] < 2 or not bool((abar[1:] < abar[:-1]).all()) or not bool(((abar >= 0) & (abar <= 1)).all()):
        raise ConfigError("alphas_cumprod must lie in [0, 1] and decrease strictly over the timesteps")
    lam = (torch.log(abar) - torch.log1p(-abar)).clamp(schedule.LOGSNR_MIN, schedule.LOGSNR_MAX)
    return DiscreteSchedule(alphas_cumprod=abar, logsnr=lam)


def time_of_logsnr(lam: torch.Tensor) -> torch.Tensor:
    """fewstep's t whose log-SNR is lam: t = (2 / pi) atan(exp(-lam / 2))."""
    return (2.0 / math.pi) * torch.atan(torch.exp(-0.5 * lam))


def covered_times(s: DiscreteSchedule) -> tuple[float, float]:
    """(t_min, t_max): the continuous times of the teacher's first and last timesteps."""
    return float(time_of_logsnr(s.logsnr[0])), float(time_of_logsnr(s.logsnr[-1]))


def timestep(s: DiscreteSchedule, t: torch.Tensor) -> torch.Tensor:
    """The teacher's fractional timestep tau in [0, T - 1] at fewstep time t (float64): the log-SNR
    interpolated linearly between integer timesteps, clamped at both ends."""
    lam = schedule.logsnr(t.to(torch.float64))
    table = s.logsnr
    # table decreases in tau: count the timesteps whose log-SNR is still above lam
    i = torch.searchsorted(-table, -lam, right=False).clamp(1, s.num_timesteps - 1)
    hi, lo = table[i - 1], table[i]  # hi >= lam > lo inside the range
    frac = ((hi - lam) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0)
    tau = (i - 1).to(torch.float64) + frac
    return tau.clamp(0.0, s.num_timesteps - 1)


def signal_scales(s: DiscreteSchedule, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) the teacher assumes at fractional timestep tau (from the interpolated log-SNR)."""
    lo = tau.floor().long().clamp(0, s.num_timesteps - 1)
    hi = (lo + 1).clamp(max=s.num_timesteps - 1)
    frac = tau - lo.to(tau.dtype)
    lam = s.logsnr[lo] * (1 - frac) + s.logsnr[hi] * frac
    return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()


def x_from_output(output: torch.Tensor, z: torch.Tensor, prediction_type: str, alpha: torch.Tensor, sigma: torch.Tensor, alpha_floor: float = 0.05) -> torch.Tensor:
    """The teacher's clean-sample prediction from its raw output, with the teacher's own scales:
    epsilon: (z - sigma eps) / alpha; v_prediction: alpha z - sigma v; sample: the output itself.

    bounded_epsilon (students only): with m = max(alpha, alpha_floor),
    x = ((alpha m + sigma^2) z - sigma out) / m. Where alpha >= alpha_floor this is the epsilon
    reading exactly (alpha^2 + sigma^2 = 1), so a student initialised from an epsilon teacher is
    that teacher there; nearer pure noise the output's gain on x stays at most 1 / alpha_floor
    instead of 1 / alpha (156 at t = 1 for linear betas)."""
    a, sg = schedule.expand_like(alpha.to(z.dtype), z), schedule.expand_like(sigma.to(z.dtype), z)
    if prediction_type == "epsilon":
        return (z - sg * output) / a
    if prediction_type == "bounded_epsilon":  # written so that m = alpha gives epsilon's x exactly, in any dtype
        m = a.clamp_min(alpha_floor)
        return (z - sg * output) / m + a * (m - a) * z / m
    if prediction_type == "v_prediction":
        return a * z - sg * output
    if prediction_type == "sample":
        return output
    raise ConfigError(f"prediction_type {prediction_type!r} is not supported; fewstep reads {', '.join(PREDICTION_TYPES)}")
