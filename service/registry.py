"""The model families a service knows: the built-in ones plus those under FEWSTEP_MODELS_DIR."""

from __future__ import annotations

from pathlib import Path

from model.builtin import builtin_families
from model.files import CheckpointError
from model.manifest import FamilyInfo, read_family
from model.prompt_length import CLIP_ENCODER, register_tokenizer


# what discovering and reading the families may raise at start-up: a missing folder, an unreadable
# or corrupt family, two of one name, an unknown default; the service and the worker exit with its message
STARTUP_ERRORS = (OSError, ValueError, LookupError, CheckpointError)


class UnknownModel(LookupError):
    pass


def discover(models_dir: Path | None) -> dict[str, Path]:
    """Family name -> directory. models_dir may be one family or a folder of families."""
    found = dict(builtin_families())
    if models_dir is not None:
        models_dir = Path(models_dir)
        if not models_dir.is_dir():
            raise FileNotFoundError(f"FEWSTEP_MODELS_DIR {models_dir} is not a directory")
        dirs = [models_dir] if (models_dir / "family.json").is_file() else sorted(p for p in models_dir.iterdir() if (p / "family.json").is_file())
        for d in dirs:
            name = read_family(d).family
            if name in found:
                raise ValueError(f"two model families are named {name!r}: {found[name]} and {d}; "
                                 f"give one another name (python -m training export DIR --to DEST --name NEW_NAME)")
            found[name] = d
    return found


class Registry:
    def __init__(self, models_dir: Path | None, default: str, default_text: str | None = None):
        """`default`: the family of a request that names none; `default_text`: that of a
        request that names none and asks by prompt (when it is present; else `default`)."""
        self.paths = discover(models_dir)
        self.infos: dict[str, FamilyInfo] = {name: read_family(path) for name, path in self.paths.items()}
        for name, info in self.infos.items():
            if info.text_encoder == CLIP_ENCODER:  # prompts are counted in the family's own tokenizer
                register_tokenizer(name, self.paths[name] / "tokenizer" / "tokenizer.json")
        if default not in self.infos:
            raise UnknownModel(f"default model {default!r} not found; have {sorted(self.infos)}")
        self.default = default
        self.default_text = default_text if default_text in self.infos and self.infos[default_text].text_encoder else default

    def info(self, name: str | None, prompt: bool = False) -> FamilyInfo:
        """The named family, or the default one: for a prompt (and no class), the text default."""
        name = name or (self.default_text if prompt else self.default)
        if name not in self.infos:
            raise UnknownModel(f"model {name!r} not found; available: {sorted(self.infos)}")
        return self.infos[name]

    def describe(self) -> list[dict]:
        """What GET /v1/models lists (also in the shape the OpenAI client reads)."""
        out = []
        for name, info in self.infos.items():
            kinds = []
            if info.class_names:
                kinds.append("class")
            if info.text_encoder:
                kinds.append("text")
            if not info.class_names and not info.text_encoder:
                kinds.append("unconditional")  # neither class nor prompt: guidance changes nothing
            if info.resolution:
                kinds.append("img2img")
            if info.inpainting:
                kinds.append("inpaint")
            out.append(
                {
                    "id": name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "fewstep",
                    "default": name == self.default,
                    "default_for": [k for k, d in (("class", self.default), ("prompt", self.default_text)) if d == name],
                    "conditioning": kinds,
                    "class_names": info.class_names,
                    "steps": info.distilled_steps,
                    "stochastic_steps": info.stochastic_steps,
                    "guidance_range": list(info.guidance_range),
                    "resolution": info.resolution,
                }
            )
        return out
