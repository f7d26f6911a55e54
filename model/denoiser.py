"""The denoiser x_hat(z_t, t, cond, gamma): a backbone read as a v-prediction (Salimans & Ho 2022).

The backbone never knows what it predicts; this wrapper turns its output v_hat into
x_hat = alpha_t z_t - sigma_t v_hat and embeds the guidance weight gamma: Fourier features of
gamma * gamma_scale (network config). Keep the scale small enough that the features vary
smoothly over the guidance range (docs/design.md, "Where gamma enters").
"""

from __future__ import annotations

import torch
from torch import nn

from . import schedule
from .conditioning import Cond
from .config_io import ConfigError, from_dict, to_dict
from .networks import NETWORKS, sinusoidal


class Denoiser(nn.Module):
    def __init__(self, network: dict):
        super().__init__()
        kind = network.get("kind") if isinstance(network, dict) else None
        if kind not in NETWORKS:
            raise ConfigError(f"network.kind must be one of {sorted(NETWORKS)}, got {kind!r}")
        cfg_cls, net_cls = NETWORKS[kind]
        self.net_cfg = from_dict(cfg_cls, network, "network")
        self.backbone = net_cls(self.net_cfg)

    @property
    def network_config(self) -> dict:
        return to_dict(self.net_cfg)

    @property
    def takes_gamma(self) -> bool:
        return self.net_cfg.gamma_embed_dim > 0

    def gamma_per_sample(self, gamma, batch: int, device) -> torch.Tensor | None:
        """gamma as (B,) float32, or None for a teacher."""
        if not self.takes_gamma:
            return None
        if gamma is None:
            raise ValueError("this student takes the guidance weight gamma as an input; none was given")
        gamma = torch.as_tensor(gamma, dtype=torch.float32, device=device)
        return gamma.expand(batch) if gamma.ndim == 0 else gamma

    def gamma_features(self, gamma, batch: int, device) -> torch.Tensor | None:
        """Fourier features of gamma * gamma_scale, (B, gamma_embed_dim); None for a teacher."""
        gamma = self.gamma_per_sample(gamma, batch, device)
        return None if gamma is None else sinusoidal(gamma * self.net_cfg.gamma_scale, self.net_cfg.gamma_embed_dim)

    def v(self, z: torch.Tensor, t: torch.Tensor, cond: Cond, gamma=None) -> torch.Tensor:
        """The raw v_hat prediction; t is (B,) or a scalar."""
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
        if t.ndim == 0:
            t = t.expand(z.shape[0])
        gamma = self.gamma_per_sample(gamma, z.shape[0], z.device)
        if gamma is None:
            return self.backbone(z, t, cond)
        return self.backbone(z, t, cond, self.gamma_features(gamma, z.shape[0], z.device), gamma)

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: Cond, gamma=None, *, predict: str = "x") -> torch.Tensor:
        """x_hat (predict="x") or the raw v_hat (predict="v", what the training losses compare)."""
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
        v = self.v(z, t, cond, gamma)
        if predict == "v":
            return v
        return schedule.x_from_v(z=z, v=v, t=t)


    def gamma_parameters(self) -> list[nn.Parameter]:
        """Parameters that only gamma feeds (empty for a teacher)."""
        branch = self.backbone.gamma_branch() if self.takes_gamma else None
        return list(branch.parameters()) if branch is not None else []


def gamma_student_from_teacher(teacher: Denoiser, gamma_embed_dim: int, pathway: str = "embedding", scale: float = 1.0, extrapolate: tuple[str, ...] = (), **network) -> Denoiser:
    """Stage-1 initialisation: the teacher's weights plus a gamma branch whose output starts at
    zero (and, with `extrapolate`, conditions pushed from the null one by gamma), so that the
    fresh student equals the teacher's conditional model exactly at gamma = 0. `network` fields
    override the teacher's (an imported teacher's students may read their output otherwise)."""
    network = dict(teacher.network_config, gamma_embed_dim=gamma_embed_dim, gamma_pathway=pathway, gamma_scale=scale, gamma_extrapolate=tuple(extrapolate), **network)
    student = Denoiser(network)
    branch = {id(p) for p in student.gamma_parameters()}
    names = {name for name, p in student.named_parameters() if id(p) in branch}
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or set(missing) - names:
        raise RuntimeError(f"teacher/student mismatch: missing {missing}, unexpected {unexpected}")
    if pathway == "time_features":
        nn.init.zeros_(student.backbone.gamma_branch().weight)
    return student
