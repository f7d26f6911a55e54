"""`python -m training sample DIR`: a PNG grid of samples from a family's distilled students."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from model.family import Family
from model.pipeline import Pipeline, Request


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def save_grid(images: torch.Tensor, path: Path, columns: int, scale: int = 4) -> None:
    pixels = to_uint8(images)
    n, h, w, _ = pixels.shape
    rows = (n + columns - 1) // columns
    grid = torch.full((rows * h, columns * w, 3), 255, dtype=torch.uint8)
    for k in range(n):
        r, c = divmod(k, columns)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = pixels[k]
    im = Image.fromarray(grid.numpy())
    im.resize((im.width * scale, im.height * scale), Image.NEAREST).save(path)


def sample(directory: Path, out: Path, *, steps: int, guidance: float, stochastic: bool, prompt: str | None, class_name: str | None, n: int, seed: int) -> Path:
    family = Family(directory)
    pipe = Pipeline(family)
    label = None
    if class_name is not None:
        names = family.info.class_names
        if class_name.isdigit():
            label = int(class_name)
        elif class_name in names:
            label = names.index(class_name)
        else:
            raise ValueError(f"unknown class {class_name!r}; the family's classes: {', '.join(names) or 'none'}")
    requests = [Request(seed=seed + k, guidance=guidance, class_label=label, prompt=prompt) for k in range(n)]
    images = pipe.generate(requests, steps=steps, stochastic=stochastic)
    save_grid(images, out, columns=min(n, 8))
    return out
