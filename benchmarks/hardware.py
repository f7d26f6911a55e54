"""What a generated benchmark document states about the machine it measured."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: str | None = None) -> str:
    """'Linux ..., <CPU model>, 16 cores, Python 3.x, torch 2.x, device cpu' (or the GPU's name)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name(0)})"
    return f"{platform.platform()}, {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, device {device}"
