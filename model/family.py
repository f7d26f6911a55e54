"""A model family: the checkpoints distilled from one teacher, described by family.json.

family.json names every checkpoint with its role and step count, and says how the family
is conditioned (classes, text encoder, inpainting), its resolution, autoencoder and
guidance range, so that the pipeline and the service need no other configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .autoencoder import AutoencoderConfig, build_autoencoder
from .checkpoint import FAMILY_FORMAT, VERSION, CheckpointError, load_checkpoint, load_tensors, read_json, write_json
from .config_io import ConfigError, from_dict, to_dict


@dataclass
class FamilyInfo:
    family: str
    resolution: int | None  # pixels; None for non-image data
    channels: int  # of the data (3 for images)
    class_names: list[str]
    text_encoder: str | None
    text_len: int
    inpainting: bool
    guidance_range: tuple[float, float]
    autoencoder: dict
    checkpoints: dict = field(default_factory=dict)  # name -> {"role", "steps"}
    data: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"format": FAMILY_FORMAT, "version": VERSION, **to_dict(self)}

    def names(self, role: str) -> dict[int, str]:
        return {c["steps"]: name for name, c in self.checkpoints.items() if c["role"] == role}

    @property
    def clip_x(self) -> bool:
        """Pixel-space images: x_hat may be clipped to the data range [-1, 1] (not a latent)."""
        return self.resolution is not None and self.autoencoder.get("kind", "identity") == "identity"

    @property
    def distilled_steps(self) -> list[int]:
        return sorted(self.names("distilled"))

    @property
    def stochastic_steps(self) -> list[int]:
        return sorted(self.names("stochastic"))


def write_family(directory: Path, info: FamilyInfo) -> None:
    write_json(Path(directory) / "family.json", info.to_json())


def read_family(directory: Path) -> FamilyInfo:
    directory = Path(directory)
    data = read_json(directory / "family.json", f"model family {directory}")
    if data.pop("format", None) != FAMILY_FORMAT or data.pop("version", None) != VERSION:
        raise CheckpointError(f"model family {directory}: family.json is not a fewstep family manifest of version {VERSION}")
    try:
        info = from_dict(FamilyInfo, data, "family.json")
    except ConfigError as exc:
        raise CheckpointError(f"model family {directory}: {exc}") from exc
    for name in info.checkpoints:
        if not (directory / name).is_dir():
            raise CheckpointError(f"model family {directory}: checkpoint {name!r} listed in family.json is missing")
    return info


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
