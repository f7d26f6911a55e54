"""The evaluation network: a small CNN trained on the dataset's attribute labels.

Its pooled features are the feature space of our FID (a Fréchet distance between Gaussian
fits of real and generated features, as FID does with Inception features), and its heads
are the attribute classifier that measures prompt adherence. For toy2d the feature space
is the data space itself and the classifier is the Bayes-optimal one from the known density.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn
from tqdm import tqdm

from model.checkpoint import CheckpointError, load_tensors, save_tensors

from .data import step_generator

FEATURE_DIM = 64


class AttributeNet(nn.Module):
    def __init__(self, heads: list[int]):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),
            nn.Conv2d(64, FEATURE_DIM, 3, stride=2, padding=1), nn.SiLU(),
        )
        self.heads = nn.ModuleList(nn.Linear(FEATURE_DIM * 4, n) for n in heads)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        # a 2x2 pooled grid keeps coarse position, which the position attribute needs
        return F.adaptive_avg_pool2d(h, 2).flatten(1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.embed(x)
        return [head(f) for head in self.heads]


@dataclass
class Evaluator:
    """features(x) -> (B, D) numpy; classify(x) -> (B, A) attribute ids."""

    net: AttributeNet | None
    dataset: object

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> np.ndarray:
        if self.net is None:
            return x.double().numpy()
        return torch.cat([self.net.embed(c) for c in x.split(512)]).double().numpy()

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            return self.dataset.classify(x)
        if not self.net.heads:
            return torch.full((x.shape[0], 0), -1)
        logits = [self.net(c) for c in x.split(512)]
        return torch.stack([torch.cat([l[a] for l in logits]).argmax(1) for a in range(len(self.net.heads))], dim=1)


def train_evaluator(dataset, steps: int, seed: int = 1234) -> AttributeNet:
    heads = [len(a.values) for a in dataset.attributes]
    torch.manual_seed(seed)
    net = AttributeNet(heads)
    if not heads or steps == 0:
        return net.eval()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    for step in tqdm(range(steps), desc="evaluator", mininterval=2.0, dynamic_ncols=True):
        batch = dataset.batch(128, (9_999, step))
        g = step_generator(seed, step)
        x = batch.x + 0.03 * torch.randn(batch.x.shape, generator=g)  # robust to generator noise
        logits = net(x)
        loss = sum(F.cross_entropy(l, batch.attrs[:, a], ignore_index=-1) for a, l in enumerate(logits))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def load_or_train_evaluator(directory: Path, dataset, steps: int) -> Evaluator:
    if dataset.resolution is None:
        return Evaluator(None, dataset)
    heads = [len(a.values) for a in dataset.attributes]
    path = Path(directory) / "evaluator"
    if (path / "config.json").exists():
        try:
            tensors, cfg = load_tensors(path, "evaluator")
            if cfg.get("heads") == heads and cfg.get("steps") == steps:
                net = AttributeNet(heads)
                net.load_state_dict(tensors)
                return Evaluator(net.eval(), dataset)
        except (CheckpointError, RuntimeError):
            pass
    net = train_evaluator(dataset, steps)
    save_tensors(path, net.state_dict(), {"heads": heads, "steps": steps, "feature_dim": FEATURE_DIM * 4})
    return Evaluator(net, dataset)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussian fits (Heusel et al. 2017)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean, _ = linalg.sqrtm(s_a @ s_b, disp=False)
    if not np.isfinite(covmean).all():
        eps = np.eye(s_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


def adherence(predicted: torch.Tensor, asked: torch.Tensor) -> float:
    """Share of asked attributes (asked >= 0) that the classifier finds in the samples."""
    known = asked >= 0
    if not known.any():
        return float("nan")
    return float((predicted[known] == asked[known]).float().mean())
