"""The first stage of a latent recipe (autoencoder.kind "kl"): a diffusers AutoencoderKL trained
on the recipe's own images, as Stable Diffusion's first stage was (Rombach et al. 2022), with a
pixel reconstruction loss and a small KL weight instead of their perceptual and adversarial
terms. Its latent statistics then set `shift_factor` and `scaling_factor` so the diffusion sees
unit-variance latents (Stable Diffusion took 1 / std of its latents for scaling_factor).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from model.autoencoder import AutoencoderConfig

STAT_ROWS = 64  # images encoded at once when the latent statistics are measured


def autoencoder_loss(ae, x: torch.Tensor, *, kl_weight: float, g: torch.Generator) -> torch.Tensor:
    """Reconstruction (MSE + L1 on pixels in [-1, 1]) of a posterior sample, plus kl_weight times
    the KL divergence to N(0, I) summed over the latent and averaged over the batch."""
    posterior = ae.vae.encode(x).latent_dist
    eps = torch.randn(posterior.mean.shape, generator=g, device=x.device, dtype=x.dtype)
    recon = ae.vae.decode(posterior.mean + posterior.std * eps).sample
    kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).flatten(1).sum(1).mean()
    return F.mse_loss(recon, x) + F.l1_loss(recon, x) + kl_weight * kl


@torch.no_grad()
def latent_statistics(ae, images: torch.Tensor) -> tuple[float, float]:
    """(mean, std) of the posterior means of `images`, all channels pooled."""
    means = torch.cat([ae.vae.encode(chunk).latent_dist.mean.double() for chunk in images.split(STAT_ROWS)])
    return float(means.mean()), float(means.std())


def scaled_config(cfg: AutoencoderConfig, mean: float, std: float) -> AutoencoderConfig:
    """The config whose z = (mean_posterior - shift) * scale has zero mean and unit variance."""
    if not std > 0:
        raise FloatingPointError(f"autoencoder: its latents have standard deviation {std}; it did not train")
    return dataclasses.replace(cfg, shift_factor=round(mean, 6), scaling_factor=round(1.0 / std, 6))
