"""A loaded model family: its manifest (model/manifest.py), autoencoder and checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch

from .autoencoder import AutoencoderConfig, build_autoencoder
from .checkpoint import load_checkpoint, load_tensors
from .config_io import ConfigError, from_dict
from .files import CheckpointError
from .manifest import read_family


class Family:
    """A loaded family: its manifest, autoencoder and checkpoints (loaded on first use)."""

    def __init__(self, directory: Path, device="cpu", dtype: torch.dtype = torch.float32):
        self.directory = Path(directory)
        self.info = read_family(self.directory)
        self.device, self.dtype = device, dtype
        self._models: dict[str, torch.nn.Module] = {}
        self.autoencoder = self._load_autoencoder()

    def _load_autoencoder(self):
        try:
            cfg = from_dict(AutoencoderConfig, self.info.autoencoder, "family.json autoencoder")
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from exc
        ae = build_autoencoder(cfg)
        if cfg.kind != "identity":
            tensors, _ = load_tensors(self.directory / "autoencoder", f"autoencoder of {self.directory}")
            try:
                ae.load_state_dict({k: v.float() for k, v in tensors.items()})
            except RuntimeError as exc:
                raise CheckpointError(f"autoencoder of {self.directory}: weights do not match its config ({exc})") from exc
        return ae.to(device=self.device, dtype=self.dtype).eval()

    def model(self, name: str) -> torch.nn.Module:
        if name not in self.info.checkpoints:
            raise KeyError(f"family {self.info.family!r} has no checkpoint {name!r}; it has {sorted(self.info.checkpoints)}")
        if name not in self._models:
            self._models[name], _ = load_checkpoint(self.directory / name, self.device, self.dtype)
        return self._models[name]

    def student(self, steps: int, stochastic: bool = False) -> torch.nn.Module:
        names = self.info.names("stochastic" if stochastic else "distilled")
        if steps not in names:
            kind = "stochastic" if stochastic else "deterministic"
            raise KeyError(f"family {self.info.family!r} has no {kind} student for {steps} steps; available: {sorted(names)}")
        return self.model(names[steps])
