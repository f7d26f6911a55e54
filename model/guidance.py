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
    x_hat^gamma = (1 + gamma) x_hat(z, c) - gamma x_hat(z, null)."""

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
