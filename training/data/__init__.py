"""Datasets: each yields `Batch`es deterministically from (seed, step, rank), so training resumes exactly."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    x: torch.Tensor  # (B, C, H, W) images in [-1, 1], or (B, D) points
    labels: torch.Tensor | None = None  # (B,) class ids
    captions: list[str] | None = None
    attrs: torch.Tensor | None = None  # (B, A) attribute ids (-1: not asked / unknown)
    masks: torch.Tensor | None = None  # (B, H, W) inpainting masks, 1 = repaint
    index: torch.Tensor | None = None  # (B,) rows of dataset.images, for data held in memory (latents are cached by it)


@dataclass
class Attribute:
    name: str
    values: tuple[str, ...]


def step_generator(seed: int, *parts: int) -> torch.Generator:
    """A generator for one (stage, step, rank): resuming at step k redraws exactly what step k drew."""
    h = seed
    for p in parts:
        h = (h * 1_000_003 + int(p) + 7) % (2**62)
    return torch.Generator().manual_seed(h)


def random_box_masks(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Rectangular inpainting masks covering 25-75% of each side, 1 = repaint."""
    masks = torch.zeros(n, size, size)
    lo, hi = max(1, size // 4), max(2, (3 * size) // 4)
    for k in range(n):
        h = int(torch.randint(lo, hi + 1, (1,), generator=g))
        w = int(torch.randint(lo, hi + 1, (1,), generator=g))
        y = int(torch.randint(0, size - h + 1, (1,), generator=g))
        x = int(torch.randint(0, size - w + 1, (1,), generator=g))
        masks[k, y : y + h, x : x + w] = 1.0
    return masks


def build_dataset(cfg):
    from .imagefolder import ImageFolderDataset
    from .shapes import ShapesDataset
    from .toy2d import Toy2dDataset

    kinds = {"toy2d": Toy2dDataset, "shapes": ShapesDataset, "imagefolder": ImageFolderDataset}
    if cfg.kind not in kinds:
        raise ValueError(f"unknown data kind {cfg.kind!r}; known: {', '.join(kinds)}")
    return kinds[cfg.kind](cfg)
