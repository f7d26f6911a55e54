"""Conditioning carried alongside z_t: class labels, text token states and inpainting context.

One `Cond` batch serves every task of a family. The null condition of classifier-free
guidance is label NULL_LABEL and an all-False text mask (the backbone substitutes its
learned null token sequence). The inpainting context (masked image and mask, docs/design.md
section 5) is never dropped: both guidance branches see the same context.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

NULL_LABEL = -1


@dataclass(frozen=True)
class Cond:
    labels: torch.Tensor | None = None  # (B,) long, NULL_LABEL for "no class"
    text: torch.Tensor | None = None  # (B, L, D) token states
    text_mask: torch.Tensor | None = None  # (B, L) bool; an all-False row is the null prompt
    context: torch.Tensor | None = None  # (B, C + 1, H, W): masked image and mask (1 = repaint)

    @property
    def batch_size(self) -> int:
        for value in (self.labels, self.text, self.context):
            if value is not None:
                return value.shape[0]
        raise ValueError("empty Cond has no batch size")

    def _fields(self):
        return {"labels": self.labels, "text": self.text, "text_mask": self.text_mask, "context": self.context}

    def map(self, fn) -> "Cond":
        return Cond(**{k: None if v is None else fn(v) for k, v in self._fields().items()})

    def to(self, device=None, dtype=None) -> "Cond":
        def move(v: torch.Tensor) -> torch.Tensor:
            if v.is_floating_point():
                return v.to(device=device, dtype=dtype)
            return v.to(device=device)

        return self.map(move)

    def index(self, idx) -> "Cond":
        return self.map(lambda v: v[idx])

    def drop(self, drop_labels: torch.Tensor | None = None, drop_text: torch.Tensor | None = None) -> "Cond":
        """Replace labels and/or prompts by the null condition where the (B,) masks are True."""
        labels, text_mask = self.labels, self.text_mask
        if labels is not None and drop_labels is not None:
            labels = torch.where(drop_labels.to(labels.device), torch.full_like(labels, NULL_LABEL), labels)
        if text_mask is not None and drop_text is not None:
            text_mask = text_mask & ~drop_text.to(text_mask.device)[:, None]
        return replace(self, labels=labels, text_mask=text_mask)

    def null(self) -> "Cond":
        """The unconditional counterpart (classifier-free guidance's c = null)."""
        every = torch.ones(self.batch_size, dtype=torch.bool)
        return self.drop(every, every)

    @staticmethod
    def cat(conds: list["Cond"]) -> "Cond":
        first = conds[0]._fields()
        out = {}
        for key, value in first.items():
            parts = [c._fields()[key] for c in conds]
            if value is None:
                if any(p is not None for p in parts):
                    raise ValueError(f"cannot concatenate Conds where only some carry {key}")
                out[key] = None
            else:
                out[key] = torch.cat(parts)
        return Cond(**out)


def inpaint_context(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Extra input channels for inpainting: the kept part of the image and the mask (1 = repaint).

    Plain generation is the all-masked case: mask = 1 everywhere, kept image = 0.
    """
    if mask.ndim == image.ndim - 1:
        mask = mask[:, None]
    mask = mask.to(image.dtype)
    return torch.cat([image * (1.0 - mask), mask], dim=1)


def full_mask_context(batch: int, channels: int, height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """Context for plain (non-inpainting) generation: nothing kept, everything repainted."""
    image = torch.zeros(batch, channels, height, width, device=device, dtype=dtype)
    mask = torch.ones(batch, height, width, device=device, dtype=dtype)
    return inpaint_context(image, mask)
