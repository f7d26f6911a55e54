"""The evaluation network: a small CNN trained on the dataset's attribute labels.

Its globally pooled features (FEATURE_DIM = 64) are the feature space of our FID (a
Fréchet distance between Gaussian fits of real and generated features, as FID does with
Inception features) and KID; 64 dimensions keep the covariance estimable from ~1000 samples.
Its heads (on a 2x2 pooled grid, which keeps coarse position) are the attribute classifier
that measures prompt adherence. For captioned data it also learns a small joint space of
images and captions (contrastive, as CLIP), in which adherence to free text is the accuracy
of retrieving an image's own caption among others. For toy2d the feature space is the data
space itself and the classifier is the Bayes-optimal one from the known density.
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


JOINT_DIM = 64


def stem_depth(resolution: int | None) -> int:
    """Strided convolutions put in front of the body so that it sees at most 16x16 inputs
    (64x64 emoji: two), which keeps its cost and receptive field those of the 16x16 case."""
    k = 0
    while resolution and resolution > 16 * 2**k:
        k += 1
    return k


class AttributeNet(nn.Module):
    def __init__(self, heads: list[int], text_dim: int = 0, stem: int = 0):
        super().__init__()
        layers: list[nn.Module] = []
        for k in range(stem):
            layers += [nn.Conv2d(3 if k == 0 else 32, 32, 3, stride=2, padding=1), nn.GroupNorm(8, 32), nn.SiLU()]
        self.body = nn.Sequential(
            *layers,
            nn.Conv2d(32 if stem else 3, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),
            nn.Conv2d(64, FEATURE_DIM, 3, stride=2, padding=1), nn.SiLU(),
        )
        self.heads = nn.ModuleList(nn.Linear(FEATURE_DIM * 4, n) for n in heads)
        self.text_dim = text_dim
        if text_dim:
            self.image_proj = nn.Linear(FEATURE_DIM * 4, JOINT_DIM)
            self.text_proj = nn.Sequential(nn.Linear(text_dim, 128), nn.SiLU(), nn.Linear(128, JOINT_DIM))
            self.logit_scale = nn.Parameter(torch.tensor(2.5))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        # a 2x2 pooled grid keeps coarse position, which the position attribute needs
        return F.adaptive_avg_pool2d(h, 2).flatten(1)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The FID/KID features: the body's output averaged over the image, (B, 64)."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.embed(x)
        return [head(f) for head in self.heads]

    def image_joint(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.embed(x)), dim=-1)

    def text_joint(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean of the caption's token states (B, L, D) over its tokens -> unit vectors."""
        m = mask.to(text.dtype)[..., None]
        mean = (text * m).sum(1) / m.sum(1).clamp_min(1.0)
        return F.normalize(self.text_proj(mean), dim=-1)


@dataclass
class Evaluator:
    """features(x) -> (B, D) numpy; classify(x) -> (B, A) attribute ids."""

    net: AttributeNet | None
    dataset: object

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> np.ndarray:
        x = x.float().cpu()
        if self.net is None:
            return x.double().numpy()
        return torch.cat([self.net.pooled(c) for c in x.split(512)]).double().numpy()

    @property
    def has_text(self) -> bool:
        return self.net is not None and self.net.text_dim > 0

    @torch.no_grad()
    def caption_space(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Captions' token states (N, L, D) and masks -> their unit vectors in the joint space."""
        return self.net.text_joint(text.float().cpu(), mask.cpu())

    @torch.no_grad()
    def ranks(self, x: torch.Tensor, names: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """Rank (0 = best) of each image's own caption `own[i]` (an index into `names`, the
        caption_space of every name) among all the names, by the joint-space score."""
        img = torch.cat([self.net.image_joint(c) for c in x.float().cpu().split(512)])
        scores = img @ names.T
        return (scores > scores.gather(1, own[:, None])).sum(1)

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().cpu()
        if self.net is None:
            return self.dataset.classify(x)
        if not self.net.heads:
            return torch.full((x.shape[0], 0), -1)
        logits = [self.net(c) for c in x.split(512)]
        return torch.stack([torch.cat([l[a] for l in logits]).argmax(1) for a in range(len(self.net.heads))], dim=1)


def top_k(ranks: torch.Tensor, k: int) -> float:
    """Share of ranks below k: top-k retrieval accuracy."""
    return float((ranks < k).float().mean()) if len(ranks) else float("nan")


def train_evaluator(dataset, steps: int, seed: int = 1234, text_encoder=None) -> AttributeNet:
    """Attribute heads (cross-entropy) and, with a text encoder, the joint image-caption space
    (symmetric InfoNCE over the batch; captions shared by several images count as matches)."""
    heads = [len(a.values) for a in dataset.attributes]
    text_dim = text_encoder.dim if text_encoder is not None else 0
    torch.manual_seed(seed)
    net = AttributeNet(heads, text_dim, stem_depth(dataset.resolution))
    if not (heads or text_dim) or steps == 0:
        return net.eval()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    for step in tqdm(range(steps), desc="evaluator", mininterval=2.0, dynamic_ncols=True):
        batch = dataset.batch(128, (9_999, step))
        g = step_generator(seed, step)
        x = batch.x + 0.03 * torch.randn(batch.x.shape, generator=g)  # robust to generator noise
        logits = net(x)
        loss = sum(F.cross_entropy(l, batch.attrs[:, a], ignore_index=-1) for a, l in enumerate(logits))
        if text_dim:
            text, mask = (t.cpu() for t in text_encoder(batch.captions))  # the evaluator trains on the CPU
            sim = net.image_joint(x) @ net.text_joint(text, mask).T * net.logit_scale.exp()
            same = torch.tensor([[a == b for b in batch.captions] for a in batch.captions], dtype=torch.float32)
            target = same / same.sum(1, keepdim=True)
            loss = loss + 0.5 * (torch.sum(-target * F.log_softmax(sim, 1), 1).mean() + torch.sum(-target * F.log_softmax(sim.T, 1), 1).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def load_or_train_evaluator(directory: Path, dataset, steps: int, text_encoder=None) -> Evaluator:
    """The family's evaluator (DIR/evaluator), trained on the family's data if it is missing
    or was trained with other settings. A text encoder is used for data without attributes."""
    if dataset.resolution is None:
        return Evaluator(None, dataset)
    heads = [len(a.values) for a in dataset.attributes]
    if heads:
        text_encoder = None  # attributes measure adherence; no caption space needed
    text_dim = text_encoder.dim if text_encoder is not None else 0
    stem = stem_depth(dataset.resolution)
    path = Path(directory) / "evaluator"
    if (path / "config.json").exists():
        try:
            tensors, cfg = load_tensors(path, "evaluator")
            if cfg.get("heads") == heads and cfg.get("steps") == steps and cfg.get("text_dim", 0) == text_dim and cfg.get("stem", 0) == stem:
                net = AttributeNet(heads, text_dim, stem)
                net.load_state_dict({k: v.float() for k, v in tensors.items()})
                return Evaluator(net.eval(), dataset)
        except (CheckpointError, RuntimeError):
            pass
    net = train_evaluator(dataset, steps, text_encoder=text_encoder)
    save_tensors(path, net.state_dict(), {"heads": heads, "steps": steps, "feature_dim": FEATURE_DIM, "text_dim": text_dim, "stem": stem})
    return Evaluator(net, dataset)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussian fits (Heusel et al. 2017)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(s_a @ s_b)  # (scipy >= 1.16 dropped the `disp` flag and its tuple)
    if not np.isfinite(covmean).all():
        eps = np.eye(s_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


def kernel_inception_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 (Binkowski et
    al. 2018): unlike FID it has no bias that depends on the sample count."""
    d = a.shape[1]
    k_aa, k_bb, k_ab = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
    m, n = len(a), len(b)
    return float((k_aa.sum() - np.trace(k_aa)) / (m * (m - 1)) + (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1)) - 2 * k_ab.mean())


def attribute_distance(predicted: torch.Tensor, real: torch.Tensor, classes: int) -> float:
    """Total variation distance between the distributions of one attribute's values."""
    p = torch.bincount(predicted, minlength=classes).double() / max(1, len(predicted))
    q = torch.bincount(real, minlength=classes).double() / max(1, len(real))
    return float(0.5 * (p - q).abs().sum())


def adherence(predicted: torch.Tensor, asked: torch.Tensor) -> float:
    """Share of asked attributes (asked >= 0) that the classifier finds in the samples."""
    known = asked >= 0
    if not known.any():
        return float("nan")
    return float((predicted[known] == asked[known]).float().mean())
