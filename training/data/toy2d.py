"""toy2d: a 2-D class-conditional Gaussian mixture with a known density, so that adherence is exact.

Nine modes on a 3x3 grid; class c owns three of them. Neighbouring modes of different
classes overlap a little, so guidance visibly sharpens the conditional samples.
"""

from __future__ import annotations

import math

import torch

from . import Attribute, Batch, step_generator

SPACING = 1.0
STD = 0.22
# class of each grid cell, row by row: every class has three modes spread over the grid
CELL_CLASS = (0, 1, 2, 1, 2, 0, 2, 0, 1)


class Toy2dDataset:
    kind = "toy2d"
    channels = 2
    resolution = None
    has_text = False
    has_inpainting = False

    def __init__(self, cfg):
        self.cfg = cfg
        self.num_classes = 3
        self.class_names = [f"class {c}" for c in range(3)]
        self.attributes = [Attribute("class", tuple(self.class_names))]
        centres = [((k % 3) - 1.0) * SPACING for k in range(9)], [((k // 3) - 1.0) * SPACING for k in range(9)]
        self.centres = torch.tensor(list(zip(*centres)))  # (9, 2)
        self.cell_class = torch.tensor(CELL_CLASS)

    def sample_labels(self, labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Points for the given classes: a uniform choice among the class's modes plus N(0, STD^2)."""
        out = torch.empty(labels.shape[0], 2)
        for c in range(self.num_classes):
            idx = (labels == c).nonzero().flatten()
            if len(idx) == 0:
                continue
            modes = (self.cell_class == c).nonzero().flatten()
            pick = modes[torch.randint(0, len(modes), (len(idx),), generator=g)]
            out[idx] = self.centres[pick] + STD * torch.randn(len(idx), 2, generator=g)
        return out

    def batch(self, size: int, seed_parts: tuple[int, ...]) -> Batch:
        g = step_generator(self.cfg.seed, *seed_parts)
        labels = torch.randint(0, self.num_classes, (size,), generator=g)
        return Batch(x=self.sample_labels(labels, g), labels=labels, attrs=labels[:, None].clone())

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x | c) for every class: (B, num_classes)."""
        d2 = ((x[:, None, :] - self.centres[None]) ** 2).sum(-1)  # (B, 9)
        log_mode = -d2 / (2 * STD**2) - math.log(2 * math.pi * STD**2)
        out = []
        for c in range(self.num_classes):
            modes = (self.cell_class == c).nonzero().flatten()
            out.append(torch.logsumexp(log_mode[:, modes], dim=1) - math.log(len(modes)))
        return torch.stack(out, dim=1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Bayes-optimal class under a uniform prior: the attribute classifier for adherence."""
        return self.log_density(x).argmax(dim=1)[:, None]
