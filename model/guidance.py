"""Guidance wraps the denoiser; samplers only see a callable (z_t, t, cond) -> x_hat."""

from __future__ import annotations

from typing import Callable

import torch

from .conditioning import Cond
from .denoiser import Denoiser
from .schedule import expand_like

Denoise = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]


def guided(teacher: Denoiser, gamma) -> Denoise:
    """Classifier-free guidance (Ho & Salimans 2022) in x-space, one batched 2B pass per call:
    x_hat^gamma = (1 + gamma) x_hat(z, c) - gamma x_hat(z, null). A plain gamma of 0 is the
    conditional prediction alone, computed in one B pass."""
    if isinstance(gamma, (int, float)) and gamma == 0:

        def conditional(z: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
            t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
            return teacher(z, t.expand(z.shape[0]) if t.ndim == 0 else t, cond)

        return conditional

    def denoise(z: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
        t = t.expand(z.shape[0]) if t.ndim == 0 else t
        both = teacher(torch.cat([z, z]), torch.cat([t, t]), Cond.cat([cond, cond.null()]))
        x_cond, x_uncond = both.chunk(2)
        g = expand_like(torch.as_tensor(gamma, dtype=z.dtype, device=z.device), z)
        return (1.0 + g) * x_cond - g * x_uncond

    return denoise


def gamma_conditioned(student: Denoiser, gamma) -> Denoise:
    """A distilled student that takes gamma as an input: one network evaluation per call."""

    def denoise(z: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        return student(z, t, cond, gamma)

    return denoise


def clipped(denoise: Denoise, lo: float = -1.0, hi: float = 1.0) -> Denoise:
    """x_hat clipped to the data range [lo, hi]: for pixel-space models only (a latent has no
    such range). Guidance extrapolates, so a guided x_hat can leave the range the data has."""

    def denoise_clipped(z: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        return denoise(z, t, cond).clamp(lo, hi)

    return denoise_clipped


def inpainting(denoise: Denoise, x_known: torch.Tensor, keep: torch.Tensor) -> Denoise:
    """x_hat with the known region replaced by the known image (z-space), at every step: a
    DDIM step then keeps that region exactly on the known image's own noising path, so the
    unknown region is drawn around what stays. `keep` (B, 1|C, H, W) is True where the image stays."""

    def denoise_inpaint(z: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        return torch.where(keep, x_known, denoise(z, t, cond))

    return denoise_inpaint
