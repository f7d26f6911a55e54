"""Backbones: raw networks mapping (z_t, t, cond, gamma features) to an output the Denoiser reads as v.

`UNetBackbone` wraps diffusers' UNet2DConditionModel: class labels through its class
embedding (one extra row for the null class), text token states through cross-attention
(a learned null sequence stands in for dropped prompts), inpainting context as extra input
channels. `MLPBackbone` is the same idea for 2-D toy data.

Gamma (the guidance weight of a stage-1 or distilled student) enters by one of two pathways,
`gamma_pathway` in the network config:
- "embedding" (the default of every recipe): its Fourier features go through a small MLP of
  their own whose output is added to the time embedding *after* the time MLP, next to the
  class embedding. The MLP's last layer starts at zero, so a fresh student is its teacher.
- "time_features": a linear projection of its features added to the sinusoidal time features
  *before* the time MLP (diffusers' `time_cond_proj_dim`). Kept to load early checkpoints;
  it learns almost nothing (docs/design.md, "Where gamma enters").

`gamma_extrapolate` adds a second, parameter-free way in, shaped like guidance itself: the
condition's own embedding is pushed away from the null condition's by gamma,
e_null + (1 + gamma) (e_c - e_null), for the class embedding ("class") and the text token
states ("text"). At gamma = 0 the student sees exactly the teacher's conditional input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .conditioning import NULL_LABEL, Cond
from .config_io import ConfigError

GAMMA_PATHWAYS = ("embedding", "time_features")
GAMMA_EXTRAPOLATE = ("class", "text")


def sinusoidal(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style Fourier features of a scalar per sample: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def labels_to_index(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Map NULL_LABEL to the extra embedding row `num_classes`."""
    return torch.where(labels == NULL_LABEL, torch.full_like(labels, num_classes), labels)


@dataclass(frozen=True)
class UNetConfig:
    kind: str = "unet"
    resolution: int = 16  # of z (latent or pixel)
    channels: int = 3  # of z
    context_channels: int = 0  # inpainting context: channels + 1, or 0 when the family has no inpainting
    num_classes: int = 0  # 0: no class conditioning
    text_dim: int = 0  # 0: no text conditioning
    text_len: int = 16
    block_out_channels: tuple[int, ...] = (32, 64)
    attention_levels: tuple[bool, ...] = (False, True)  # cross-attention per resolution level (needs text)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    gamma_embed_dim: int = 0  # 0: no gamma input (a teacher); >0: Fourier features of gamma
    gamma_pathway: str = "time_features"  # where gamma enters (module docstring); the old default, for old checkpoints
    gamma_scale: float = 100.0  # gamma is multiplied by this before its Fourier features
    gamma_extrapolate: tuple[str, ...] = ()  # conditions pushed from the null one by gamma (module docstring)

    def __post_init__(self):
        _check_gamma(self)
        if len(self.block_out_channels) != len(self.attention_levels):
            raise ConfigError("unet: block_out_channels and attention_levels must have the same length")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError("unet: every block width must be divisible by norm_num_groups")
        if self.resolution % (2 ** (len(self.block_out_channels) - 1)):
            raise ConfigError("unet: resolution must be divisible by 2^(levels - 1)")


def _check_gamma(cfg) -> None:
    if cfg.gamma_pathway not in GAMMA_PATHWAYS:
        raise ConfigError(f"{cfg.kind}: gamma_pathway must be one of {GAMMA_PATHWAYS}, got {cfg.gamma_pathway!r}")
    if not cfg.gamma_scale > 0:
        raise ConfigError(f"{cfg.kind}: gamma_scale must be > 0, got {cfg.gamma_scale}")
    unknown = set(cfg.gamma_extrapolate) - set(GAMMA_EXTRAPOLATE)
    if unknown:
        raise ConfigError(f"{cfg.kind}: gamma_extrapolate may hold {GAMMA_EXTRAPOLATE}, got {sorted(unknown)}")


def extrapolate(cond: torch.Tensor, null: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """null + (1 + gamma) (cond - null), gamma per sample (B,)."""
    g = gamma.to(cond.dtype).reshape(-1, *([1] * (cond.ndim - 1)))
    return null + (1.0 + g) * (cond - null)


class GammaClassEmbedding(nn.Embedding):
    """The class embedding (its last row: the null class) that, given (label, gamma) pairs as a
    float (B, 2) tensor, returns the class embedding pushed from the null one by gamma. Given
    labels alone it is a plain nn.Embedding; its one parameter keeps the name `weight`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            return super().forward(x)
        labels, gamma = x[:, 0].round().long(), x[:, 1]
        null = self.num_embeddings - 1
        gamma = torch.where(labels == null, torch.zeros_like(gamma), gamma)
        return extrapolate(super().forward(labels), self.weight[null].expand(len(labels), -1), gamma)


def _gamma_mlp(in_dim: int, out_dim: int) -> nn.Module:
    """Fourier features of gamma -> an embedding; the last layer starts at zero (output 0)."""
    from diffusers.models.embeddings import TimestepEmbedding

    mlp = TimestepEmbedding(in_dim, out_dim)
    nn.init.zeros_(mlp.linear_2.weight)
    nn.init.zeros_(mlp.linear_2.bias)
    return mlp


class GammaTimestepEmbedding(nn.Module):
    """The U-Net's time MLP plus gamma's own MLP, summed after both: emb(t) + emb_gamma(gamma).
    The UNet passes `timestep_cond` (here: gamma's features) as `condition`. The time MLP keeps
    the teacher's parameter names (linear_1, linear_2), so teacher weights load unchanged."""

    def __init__(self, time_embedding: nn.Module, gamma_dim: int):
        super().__init__()
        self.linear_1, self.act, self.linear_2 = time_embedding.linear_1, time_embedding.act, time_embedding.linear_2
        self.gamma_mlp = _gamma_mlp(gamma_dim, self.linear_2.out_features)
        self.pending: torch.Tensor | None = None  # gamma's features, for U-Nets that pass no `condition` (UNet2DModel)

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.linear_2(self.act(self.linear_1(sample)))
        condition = condition if condition is not None else self.pending
        if condition is not None:
            emb = emb + self.gamma_mlp(condition)
        return emb


class UNetBackbone(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.cfg = cfg
        use_text = cfg.text_dim > 0
        attn = [a and use_text for a in cfg.attention_levels]
        self.unet = UNet2DConditionModel(
            sample_size=cfg.resolution,
            in_channels=cfg.channels + cfg.context_channels,
            out_channels=cfg.channels,
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
            mid_block_type="UNetMidBlock2DCrossAttn" if use_text else "UNetMidBlock2D",
            block_out_channels=cfg.block_out_channels,
            layers_per_block=cfg.layers_per_block,
            cross_attention_dim=cfg.text_dim if use_text else 8,
            attention_head_dim=cfg.attention_head_dim,
            norm_num_groups=cfg.norm_num_groups,
            num_class_embeds=cfg.num_classes + 1 if cfg.num_classes else None,
            time_cond_proj_dim=(cfg.gamma_embed_dim or None) if cfg.gamma_pathway == "time_features" else None,
        )
        if cfg.gamma_embed_dim and cfg.gamma_pathway == "embedding":
            self.unet.time_embedding = GammaTimestepEmbedding(self.unet.time_embedding, cfg.gamma_embed_dim)
        if cfg.gamma_embed_dim and cfg.num_classes and "class" in cfg.gamma_extrapolate:
            old = self.unet.class_embedding
            self.unet.class_embedding = GammaClassEmbedding(old.num_embeddings, old.embedding_dim)
        if use_text:
            self.null_text = nn.Parameter(torch.randn(1, cfg.text_len, cfg.text_dim) * 0.02)

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: Cond, gamma_features: torch.Tensor | None = None, gamma: torch.Tensor | None = None):
        cfg, batch = self.cfg, z.shape[0]
        push = set(cfg.gamma_extrapolate) if gamma is not None else set()
        x = z
        if cfg.context_channels:
            if cond.context is None:
                raise ValueError("this network needs an inpainting context (use full_mask_context for plain generation)")
            x = torch.cat([z, cond.context.to(z.dtype)], dim=1)
        class_labels = None
        if cfg.num_classes:
            labels = cond.labels if cond.labels is not None else torch.full((batch,), NULL_LABEL, device=z.device)
            class_labels = labels_to_index(labels.to(z.device), cfg.num_classes)
            if "class" in push:
                class_labels = torch.stack([class_labels.float(), gamma.float()], dim=1)
        text = text_mask = None
        if cfg.text_dim:
            null_text = self.null_text.to(z.dtype).expand(batch, -1, -1)
            null_mask = torch.zeros(batch, cfg.text_len, dtype=torch.bool, device=z.device)
            null_mask[:, 0] = True
            if cond.text is None:
                text, text_mask = null_text, null_mask
            else:
                keep = cond.text_mask.any(dim=1)
                text = torch.where(keep[:, None, None], cond.text.to(z.dtype), null_text)
                text_mask = torch.where(keep[:, None], cond.text_mask, null_mask)
                if "text" in push:  # a dropped prompt stays the null sequence: text - null_text = 0 there
                    text = extrapolate(text, null_text, gamma)
        out = self.unet(
            x,
            t * 1000.0,
            encoder_hidden_states=text,
            class_labels=class_labels,
            timestep_cond=None if gamma_features is None else gamma_features.to(z.dtype),
            encoder_attention_mask=None if text_mask is None else text_mask.to(z.dtype),
        ).sample
        return out

    def gamma_branch(self) -> nn.Module | None:
        """The layers that only gamma feeds (zero-initialised in a fresh student; their own learning rate)."""
        emb = self.unet.time_embedding
        return emb.gamma_mlp if isinstance(emb, GammaTimestepEmbedding) else emb.cond_proj


@dataclass(frozen=True)
class MLPConfig:
    kind: str = "mlp"
    channels: int = 2
    num_classes: int = 0
    hidden: int = 256
    depth: int = 4
    time_embed_dim: int = 64
    gamma_embed_dim: int = 0
    gamma_pathway: str = "time_features"
    gamma_scale: float = 100.0
    gamma_extrapolate: tuple[str, ...] = ()

    def __post_init__(self):
        _check_gamma(self)
        if self.gamma_extrapolate:
            raise ConfigError("mlp: gamma_extrapolate is not supported (use the embedding pathway)")


class MLPBackbone(nn.Module):
    """Residual MLP for low-dimensional data; gamma joins the time embedding as in the U-Net."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_embed_dim, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.hidden))
        self.cond_proj = self.gamma_mlp = None
        if cfg.gamma_embed_dim and cfg.gamma_pathway == "time_features":
            self.cond_proj = nn.Linear(cfg.gamma_embed_dim, cfg.time_embed_dim, bias=False)
        elif cfg.gamma_embed_dim:
            self.gamma_mlp = _gamma_mlp(cfg.gamma_embed_dim, cfg.hidden)
        self.class_embed = nn.Embedding(cfg.num_classes + 1, cfg.hidden) if cfg.num_classes else None
        self.inp = nn.Linear(cfg.channels, cfg.hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(cfg.hidden), nn.Linear(cfg.hidden, cfg.hidden * 2), nn.SiLU(), nn.Linear(cfg.hidden * 2, cfg.hidden))
            for _ in range(cfg.depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(cfg.hidden), nn.Linear(cfg.hidden, cfg.channels))

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: Cond, gamma_features: torch.Tensor | None = None, gamma: torch.Tensor | None = None):
        temb = sinusoidal(t * 1000.0, self.cfg.time_embed_dim)
        if gamma_features is not None and self.cond_proj is not None:
            temb = temb + self.cond_proj(gamma_features)
        emb = self.time_mlp(temb)
        if gamma_features is not None and self.gamma_mlp is not None:
            emb = emb + self.gamma_mlp(gamma_features)
        h = self.inp(z) + emb
        if self.class_embed is not None:
            labels = cond.labels if cond.labels is not None else torch.full((z.shape[0],), NULL_LABEL, device=z.device)
            h = h + self.class_embed(labels_to_index(labels, self.cfg.num_classes))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)

    def gamma_branch(self) -> nn.Module | None:
        return self.gamma_mlp if self.gamma_mlp is not None else self.cond_proj


NETWORKS = {"unet": (UNetConfig, UNetBackbone), "mlp": (MLPConfig, MLPBackbone)}

from .diffusers_backbone import DiffusersBackbone, DiffusersConfig  # noqa: E402  (it uses the classes above)

NETWORKS["diffusers"] = (DiffusersConfig, DiffusersBackbone)
