"""`python -m training sample DIR`: a PNG grid of samples from a family's distilled students."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from model.family import Family
from model.pipeline import Pipeline, Request
from model.validation import Ask, check_request


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
    ask = Ask(steps=steps, stochastic=stochastic, guidance=guidance, class_label=class_name, prompt=prompt)
    c = check_request(family.info, ask)  # InvalidRequest (a ValueError) says what is wrong
    requests = [Request(seed=seed + k, guidance=c.guidance, class_label=c.class_label, prompt=c.prompt) for k in range(n)]
    images = Pipeline(family).generate(requests, steps=c.steps, stochastic=c.stochastic)
    save_grid(images, out, columns=min(n, 8))
    return out
