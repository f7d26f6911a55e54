"""Cosine variance-preserving schedule and the v/x/eps parametrisation (docs/design.md, section 1).

Everything here is a pure function of tensors (or floats). Time t lies in [0, 1]:
alpha_t = cos(pi t / 2), sigma_t = sin(pi t / 2), so alpha_t^2 + sigma_t^2 = 1, z_0 = x
and z_1 is pure noise. Only the log-SNR is clipped, so that it stays finite at the ends.
"""

from __future__ import annotations

import math

import torch

LOGSNR_MIN = -20.0
LOGSNR_MAX = 20.0


def alpha_t(t: torch.Tensor) -> torch.Tensor:
    """Signal scale alpha_t = cos(pi t / 2)."""
    return torch.cos(0.5 * math.pi * t)


def sigma_t(t: torch.Tensor) -> torch.Tensor:
    """Noise scale sigma_t = sin(pi t / 2)."""
    return torch.sin(0.5 * math.pi * t)


def logsnr(t: torch.Tensor) -> torch.Tensor:
    """lambda_t = log(alpha_t^2 / sigma_t^2) = -2 log tan(pi t / 2), clipped to [LOGSNR_MIN, LOGSNR_MAX]."""
    tan = torch.tan(0.5 * math.pi * t.clamp(1e-12, 1.0 - 1e-12))
    return (-2.0 * torch.log(tan)).clamp(LOGSNR_MIN, LOGSNR_MAX)


def expand_like(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample value (B,) or scalar against a batch x (B, ...)."""
    a = torch.as_tensor(a, dtype=x.dtype, device=x.device)
    if a.ndim == 0:
        return a
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def diffuse(*, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Forward process z_t = alpha_t x + sigma_t eps."""
    return expand_like(alpha_t(t), x) * x + expand_like(sigma_t(t), x) * eps


def v_from_x_eps(*, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Velocity target v = alpha_t eps - sigma_t x."""
    return expand_like(alpha_t(t), x) * eps - expand_like(sigma_t(t), x) * x


def x_from_v(*, z: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_hat = alpha_t z_t - sigma_t v_hat."""
    return expand_like(alpha_t(t), z) * z - expand_like(sigma_t(t), z) * v


def eps_from_v(*, z: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """eps_hat = sigma_t z_t + alpha_t v_hat."""
    return expand_like(sigma_t(t), z) * z + expand_like(alpha_t(t), z) * v


def v_from_x(*, z: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The v that x_from_v maps to x: v = (alpha_t z_t - x) / sigma_t (needs t > 0)."""
    return (expand_like(alpha_t(t), z) * z - x) / expand_like(sigma_t(t), z)


def ddim_step(*, z_t: torch.Tensor, x_hat: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """DDIM update from t to s < t: z_s = alpha_s x_hat + sigma_s (z_t - alpha_t x_hat) / sigma_t."""
    a_t, s_t = expand_like(alpha_t(t), z_t), expand_like(sigma_t(t), z_t)
    a_s, s_s = expand_like(alpha_t(s), z_t), expand_like(sigma_t(s), z_t)
    return a_s * x_hat + s_s * (z_t - a_t * x_hat) / s_t


def x_tilde(*, z_t: torch.Tensor, z_s: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The x that makes ONE DDIM step t -> s land exactly on z_s (Salimans & Ho 2022, eq. 8):
    x_tilde = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t)."""
    ratio = expand_like(sigma_t(s) / sigma_t(t), z_t)
    a_t, a_s = expand_like(alpha_t(t), z_t), expand_like(alpha_t(s), z_t)
    return (z_s - ratio * z_t) / (a_s - ratio * a_t)


def renoise(*, z_u: torch.Tensor, u: torch.Tensor, s: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """Forward-noise from u to s > u: z_s = (alpha_s/alpha_u) z_u + sigma_{s|u} xi."""
    return expand_like(alpha_t(s) / alpha_t(u), z_u) * z_u + expand_like(sigma_s_given_u(s=s, u=u), z_u) * xi


def sigma_s_given_u(*, s: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """sigma_{s|u} = sqrt(sigma_s^2 - (alpha_s/alpha_u)^2 sigma_u^2), the std of z_s given z_u."""
    var = sigma_t(s) ** 2 - (alpha_t(s) / alpha_t(u)) ** 2 * sigma_t(u) ** 2
    return var.clamp_min(0.0).sqrt()


def time_grid(steps: int) -> torch.Tensor:
    """The sampling grid (steps + 1,) in float64: t_i = i / steps, i = 0..steps (what the
    distilled students were trained on; every sampler steps from t_i to t_{i-1})."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.arange(steps + 1, dtype=torch.float64) / steps


def loss_weight(t: torch.Tensor, weighting: str) -> torch.Tensor:
    """Weight on the v-space squared error for a given x-space weighting w(lambda_t).

    ||x - x_hat||^2 = sigma_t^2 ||v - v_hat||^2, so:
    - "snr+1": w = 1 + SNR on x-MSE is plain v-MSE (weight 1);
    - "truncated-snr": w = max(SNR, 1) on x-MSE is max(alpha_t^2, sigma_t^2) on v-MSE.
    """
    if weighting == "snr+1":
        return torch.ones_like(t)
    if weighting == "truncated-snr":
        return torch.maximum(alpha_t(t) ** 2, sigma_t(t) ** 2)
    raise ValueError(f"unknown loss weighting {weighting!r}; use 'snr+1' or 'truncated-snr'")
