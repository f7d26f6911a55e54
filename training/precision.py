"""Mixed precision for the networks only: bf16 autocast around a forward pass, its output cast
back to fp32, so that the distillation targets (which divide by small numbers near t = 1) and
the losses are computed in fp32 (docs/design.md, "Precision")."""

from __future__ import annotations

import torch
from torch import nn

PRECISIONS = ("no", "bf16")


class Autocast(nn.Module):
    """`inner` run under bf16 autocast; its output returned as fp32."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs) -> torch.Tensor:
        device = next(self.inner.parameters()).device
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            out = self.inner(*args, **kwargs)
        return out.float()


def wrapper(precision: str):
    """The wrap a recipe's `mixed_precision` asks for (None: full precision)."""
    if precision not in PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {precision!r}")
    return Autocast if precision == "bf16" else None


def enable_gradient_checkpointing(model: nn.Module) -> bool:
    """Recompute the U-Net's activations in the backward pass (diffusers' checkpointing): less
    memory for more compute. Returns False for a network without it (the MLP)."""
    unet = getattr(getattr(model, "backbone", None), "unet", None)
    if unet is None or not hasattr(unet, "enable_gradient_checkpointing"):
        return False
    unet.enable_gradient_checkpointing()
    return True
