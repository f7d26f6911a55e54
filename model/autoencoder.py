"""The autoencoder seam: the same diffusion code runs in pixel space (identity) or latent space.

Images are (B, 3, H, W) in [-1, 1]. `encode` returns the z-space the denoiser works in,
`decode` maps back. Latent families use diffusers' AutoencoderKL: z = (mean of the posterior
- shift_factor) * scaling_factor, as Stable Diffusion does (shift_factor 0 there). Kind "kl"
builds one from a few widths; kind "diffusers" is an imported teacher's own `vae/`, its
diffusers config kept whole in `config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
import torch.nn.functional as F

from .config_io import ConfigError


@dataclass(frozen=True)
class AutoencoderConfig:
    kind: str = "identity"  # "identity" | "kl" | "diffusers"
    latent_channels: int = 3
    downsample: int = 1
    block_out_channels: tuple[int, ...] = ()
    layers_per_block: int = 1
    norm_num_groups: int = 8
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    config: dict = field(default_factory=dict)  # kind "diffusers": the AutoencoderKL's own config.json


class IdentityAutoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


class KLAutoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        from diffusers import AutoencoderKL

        self.cfg = cfg
        if cfg.kind == "diffusers":
            if not cfg.config:
                raise ConfigError("autoencoder.kind 'diffusers' needs the AutoencoderKL's config")
            self.vae = AutoencoderKL.from_config({k: v for k, v in cfg.config.items() if not k.startswith("_")})
            return
        if not cfg.block_out_channels:
            raise ConfigError("autoencoder.kind 'kl' needs block_out_channels")
        if 2 ** (len(cfg.block_out_channels) - 1) != cfg.downsample:
            raise ConfigError("autoencoder: downsample must be 2^(len(block_out_channels) - 1)")
        n = len(cfg.block_out_channels)
        self.vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=cfg.block_out_channels,
            layers_per_block=cfg.layers_per_block,
            latent_channels=cfg.latent_channels,
            norm_num_groups=cfg.norm_num_groups,
            scaling_factor=cfg.scaling_factor,
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return (self.vae.encode(images).latent_dist.mean - self.cfg.shift_factor) * self.cfg.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.cfg.scaling_factor + self.cfg.shift_factor).sample


def diffusers_autoencoder_config(vae_config: dict) -> AutoencoderConfig:
    """The AutoencoderConfig of an AutoencoderKL config.json (a pipeline's vae/)."""
    cfg = {k: v for k, v in vae_config.items() if not k.startswith("_")}
    channels = cfg.get("block_out_channels") or [64]
    return AutoencoderConfig(
        kind="diffusers",
        latent_channels=int(cfg.get("latent_channels", 4)),
        downsample=2 ** (len(channels) - 1),
        block_out_channels=tuple(channels),
        scaling_factor=float(cfg.get("scaling_factor") or 0.18215),
        shift_factor=float(cfg.get("shift_factor") or 0.0),
        config=cfg,
    )


def build_autoencoder(cfg: AutoencoderConfig) -> nn.Module:
    if cfg.kind == "identity":
        return IdentityAutoencoder(cfg)
    if cfg.kind in ("kl", "diffusers"):
        return KLAutoencoder(cfg)
    raise ConfigError(f"autoencoder.kind must be 'identity', 'kl' or 'diffusers', got {cfg.kind!r}")


def latent_mask(mask: torch.Tensor, downsample: int) -> torch.Tensor:
    """A pixel mask (B, H, W), 1 = repaint, at latent resolution: a latent cell is repainted
    if any of its pixels is."""
    if downsample == 1:
        return mask
    return F.max_pool2d(mask[:, None].float(), downsample)[:, 0]


def encode_inpaint_context(autoencoder: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Inpainting channels in z-space: the encoded kept part of the image and the mask at
    latent resolution (as Stable Diffusion's inpainting models take them); masks 1 = repaint."""
    from .conditioning import inpaint_context

    kept = autoencoder.encode(images * (1.0 - masks[:, None].to(images.dtype)))
    return inpaint_context(kept, latent_mask(masks, autoencoder.cfg.downsample).to(kept.dtype))
