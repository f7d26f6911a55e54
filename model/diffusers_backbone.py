"""A teacher (or student) that is somebody's diffusers U-Net, used as it is, in its own
parametrisation (docs/design.md, "Teachers from diffusers").

The backbone maps fewstep's (z_t, t, cond) to the U-Net's inputs, a fractional timestep on the
teacher's own discrete schedule (model/discrete_schedule.py) and its class ids, and reads the
U-Net's output (epsilon, v_prediction or sample) back as a clean-sample prediction with the
teacher's own signal scales, which it returns as fewstep's v (so the Denoiser, the losses and the
samplers treat it like any backbone). Students keep the teacher's U-Net and its output
parametrisation, plus the gamma pathway of our own U-Nets: gamma's Fourier features through a
zero-initialised MLP added to the time embedding (model/networks.py, "embedding"), so that a
fresh student is its teacher.

Class-conditional teachers need a null class (the unconditional branch of guidance); fewstep's
class k is the teacher's k-th non-null class id. Text teachers (cross-attention, Stable
Diffusion style) take the token states of their own CLIP text encoder
(model/clip_text_encoder.py) without an attention mask, as diffusers' pipelines call them; a
null prompt (an all-False mask) is replaced by `null_text`, the teacher's encoding of the empty
prompt, computed when the teacher is imported and saved with every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from . import discrete_schedule as ds
from . import schedule
from .conditioning import NULL_LABEL, Cond
from .config_io import ConfigError

UNET_CLASSES = ("UNet2DConditionModel", "UNet2DModel")


@dataclass(frozen=True)
class DiffusersConfig:
    kind: str = "diffusers"
    unet_class: str = "UNet2DConditionModel"
    unet: dict = field(default_factory=dict)  # the U-Net's own config.json, as diffusers reads it
    scheduler: dict = field(default_factory=dict)  # the teacher's scheduler config (its betas)
    prediction_type: str = "epsilon"
    alpha_floor: float = 0.05  # of the bounded_epsilon reading (students only)
    null_class: int | None = None  # the teacher's class id of the unconditional branch
    channels: int = 3  # of z (the U-Net's in/out channels)
    resolution: int | None = None  # of z (the U-Net's sample_size)
    context_channels: int = 0  # no inpainting context for imported teachers
    text_dim: int = 0  # text teachers: the width of the text encoder's token states (cross_attention_dim)
    text_len: int = 0  # and their length (the tokenizer's model_max_length)
    gamma_embed_dim: int = 0
    gamma_pathway: str = "embedding"
    gamma_scale: float = 1.0
    gamma_extrapolate: tuple[str, ...] = ()

    def __post_init__(self):
        if self.unet_class not in UNET_CLASSES:
            raise ConfigError(f"diffusers: unet_class must be one of {UNET_CLASSES}, got {self.unet_class!r}")
        if self.prediction_type not in ds.STUDENT_READINGS:
            raise ConfigError(f"diffusers: prediction_type {self.prediction_type!r} is not supported; fewstep reads {', '.join(ds.STUDENT_READINGS)}")
        if not 0.0 < self.alpha_floor <= 1.0:
            raise ConfigError(f"diffusers: alpha_floor must lie in (0, 1], got {self.alpha_floor!r}")
        if self.gamma_embed_dim and self.gamma_pathway != "embedding":
            raise ConfigError("diffusers: students of imported teachers take gamma through the 'embedding' pathway")
        if self.gamma_extrapolate:
            raise ConfigError("diffusers: gamma_extrapolate is not available for imported teachers")
        if bool(self.text_dim) != bool(self.text_len):
            raise ConfigError("diffusers: text_dim and text_len are given together (a text teacher) or not at all")
        classes = self.unet.get("num_class_embeds")
        if classes and (self.null_class is None or not 0 <= self.null_class < classes):
            raise ConfigError(f"diffusers: a class-conditional teacher needs its null class id in [0, {classes}) (the unconditional branch of guidance), got {self.null_class!r}")

    @property
    def num_classes(self) -> int:
        """Classes a user may ask for: the teacher's class ids except the null one."""
        classes = self.unet.get("num_class_embeds") or 0
        return classes - 1 if classes else 0


def build_unet(unet_class: str, config: dict) -> nn.Module:
    import diffusers

    cls = getattr(diffusers, unet_class)
    return cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})


class DiffusersBackbone(nn.Module):
    def __init__(self, cfg: DiffusersConfig):
        super().__init__()
        from .networks import GammaTimestepEmbedding

        self.cfg = cfg
        self.unet = build_unet(cfg.unet_class, cfg.unet)
        self._schedule = ds.from_scheduler_config(cfg.scheduler)
        if cfg.gamma_embed_dim:
            self.unet.time_embedding = GammaTimestepEmbedding(self.unet.time_embedding, cfg.gamma_embed_dim)
        ids = [c for c in range(cfg.unet.get("num_class_embeds") or 0) if c != cfg.null_class]
        if cfg.text_dim:
            self.register_buffer("null_text", torch.zeros(1, cfg.text_len, cfg.text_dim))
        self.register_buffer("class_ids", torch.tensor(ids + [cfg.null_class if cfg.null_class is not None else 0], dtype=torch.long), persistent=False)

    def _class_ids(self, cond: Cond, batch: int, device) -> torch.Tensor | None:
        if not self.cfg.num_classes:
            return None
        labels = cond.labels if cond.labels is not None else torch.full((batch,), NULL_LABEL, device=device)
        index = torch.where(labels.to(device) == NULL_LABEL, torch.full_like(labels, self.cfg.num_classes), labels)
        return self.class_ids.to(device)[index.long()]

    def _text(self, cond: Cond, z: torch.Tensor) -> torch.Tensor | None:
        """Token states for cross-attention: the prompt's, or the empty prompt's for a null row."""
        if not self.cfg.text_dim:
            return None
        null = self.null_text.to(z.dtype).expand(z.shape[0], -1, -1)
        if cond.text is None:
            return null
        keep = cond.text_mask.to(z.device).any(dim=1)
        return torch.where(keep[:, None, None], cond.text.to(z.device, z.dtype), null)

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: Cond, gamma_features: torch.Tensor | None = None, gamma: torch.Tensor | None = None) -> torch.Tensor:
        tau = ds.timestep(self._schedule, t)
        alpha, sigma = ds.signal_scales(self._schedule, tau)
        kwargs = {"class_labels": self._class_ids(cond, z.shape[0], z.device)}
        if self.cfg.unet_class == "UNet2DConditionModel":
            kwargs["encoder_hidden_states"] = self._text(cond, z)
            kwargs["timestep_cond"] = None if gamma_features is None else gamma_features.to(z.dtype)
        elif gamma_features is not None:  # UNet2DModel passes no condition to its time embedding
            self.unet.time_embedding.pending = gamma_features.to(z.dtype)
        try:
            out = self.unet(z, tau.to(z.dtype), **kwargs).sample
        finally:
            if self.cfg.gamma_embed_dim:
                self.unet.time_embedding.pending = None
        x_hat = ds.x_from_output(out, z, self.cfg.prediction_type, alpha.to(z.device), sigma.to(z.device), self.cfg.alpha_floor)
        t = t.to(z.dtype)  # fewstep's v of that x_hat: (alpha_t z - x_hat) / sigma_t, finite at t = 0
        a_t, s_t = schedule.expand_like(schedule.alpha_t(t), z), schedule.expand_like(schedule.sigma_t(t).clamp_min(1e-6), z)
        return (a_t * z - x_hat) / s_t

    def gamma_branch(self) -> nn.Module | None:
        emb = self.unet.time_embedding
        return getattr(emb, "gamma_mlp", None)
