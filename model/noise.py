"""Per-sample seeded noise: a sample's noise depends on its own seed only, never on its batch."""

from __future__ import annotations

import torch


class SeededNoise:
    """One CPU generator per sample; each draw returns a (B, *shape) tensor, row b from seed b."""

    def __init__(self, seeds: list[int], device=None, dtype=torch.float32):
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        self.device = device
        self.dtype = dtype

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        rows = [torch.randn(shape, generator=g) for g in self.generators]
        return torch.stack(rows).to(device=self.device, dtype=self.dtype)

    @staticmethod
    def cat(parts: list["SeededNoise"]) -> "SeededNoise":
        """Join the generators of several requests (their states carry over) into one batch."""
        out = SeededNoise([], parts[0].device if parts else None, parts[0].dtype if parts else torch.float32)
        for p in parts:
            out.seeds += p.seeds
            out.generators += p.generators
        return out
