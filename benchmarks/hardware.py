"""What a generated benchmark document states about the machine it measured."""

from __future__ import annotations

import os
import platform


def describe(device: str | None = None) -> str:
    """'Linux-...-x86_64, 16 cores, torch 2.x, device cpu' (the device: cuda when there is one)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name(0)})"
    return f"{platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, device {device}"
