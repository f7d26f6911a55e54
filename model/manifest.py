"""A family's manifest, family.json: the checkpoints distilled from one teacher, each with its
role and step count, and how the family is conditioned (classes, text encoder, inpainting),
its resolution, autoencoder and guidance range, so that the pipeline and the service need
no other configuration. Torch-free: the API reads manifests without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config_io import ConfigError, from_dict, to_dict
from .files import VERSION, CheckpointError, read_json, write_json

FAMILY_FORMAT = "fewstep.family"


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
