"""Teachers people already have: a diffusers folder read as a frozen fewstep teacher.

    python -m training run RECIPE --teacher DIR --out OUT [--set teacher_null_class=K]

DIR is a diffusers pipeline folder (`model_index.json`, `unet/`, `scheduler/`) or a bare U-Net
folder (`config.json` of a UNet2DModel or UNet2DConditionModel and its safetensors weights)
with its scheduler config beside it (`DIR/scheduler/` or `DIR/scheduler_config.json`). The
U-Net is used as it is, in its own parametrisation and on its own discrete schedule
(model/diffusers_backbone.py). Supported here: pixel-space teachers, class-conditional (with a
null class for the unconditional branch of guidance: the U-Net config's `null_class`, or
`--set teacher_null_class=K`). Latent teachers (`vae/`) and text teachers (`text_encoder/`)
are refused with a message saying so. Weights are read from safetensors only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from model.config_io import ConfigError
from model.denoiser import Denoiser
from model.diffusers_backbone import UNET_CLASSES
from model.discrete_schedule import PREDICTION_TYPES, from_scheduler_config

WEIGHTS = "diffusion_pytorch_model.safetensors"


class TeacherError(ConfigError):
    """A folder fewstep cannot distil, with what is wrong and what to do."""


@dataclass
class ImportedTeacher:
    denoiser: Denoiser
    unet_dir: Path
    resolution: int
    channels: int
    num_classes: int  # classes a user may ask for (the null class excluded)
    prediction_type: str


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TeacherError(f"{what} {path} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TeacherError(f"{what} {path} is not a JSON object")
    return data


def locate(directory: Path) -> tuple[Path, Path]:
    """(the U-Net folder, the scheduler config file) of a pipeline or bare U-Net folder."""
    d = Path(directory)
    if not d.is_dir():
        raise TeacherError(f"--teacher {d}: no such directory")
    if (d / "model_index.json").is_file():
        index = _read_json(d / "model_index.json", "pipeline index")
        for part in ("vae", "text_encoder"):
            if part in index or (d / part).is_dir():
                kind = "latent (it has a vae/)" if part == "vae" else "text-conditional (it has a text_encoder/)"
                raise TeacherError(f"--teacher {d}: a {kind} pipeline; this version of fewstep distils pixel-space, class-conditional diffusers teachers only")
        if "tokenizer" in index and "text_encoder" not in index:
            raise TeacherError(f"--teacher {d}: a tokenizer without a text encoder")
        unet = d / "unet"
        if not (unet / "config.json").is_file():
            raise TeacherError(f"--teacher {d}: the pipeline has no unet/ folder with a config.json")
        scheduler = d / "scheduler" / "scheduler_config.json"
    elif (d / "config.json").is_file():
        unet = d
        scheduler = next((p for p in (d / "scheduler" / "scheduler_config.json", d / "scheduler_config.json", d.parent / "scheduler" / "scheduler_config.json") if p.is_file()), d / "scheduler" / "scheduler_config.json")
    else:
        raise TeacherError(f"--teacher {d}: not a diffusers pipeline (no model_index.json) or U-Net folder (no config.json)")
    if not scheduler.is_file():
        raise TeacherError(f"--teacher {d}: no scheduler config (looked for {scheduler}); fewstep needs the teacher's noise schedule")
    return unet, scheduler


def import_teacher(directory: Path, null_class: int | None = None) -> ImportedTeacher:
    """The frozen teacher of a diffusers folder; TeacherError says what is wrong."""
    unet_dir, scheduler_path = locate(directory)
    unet_cfg = _read_json(unet_dir / "config.json", "U-Net config")
    unet_class = unet_cfg.get("_class_name")
    if unet_class not in UNET_CLASSES:
        raise TeacherError(f"--teacher {directory}: the U-Net is a {unet_class!r}; fewstep reads {', '.join(UNET_CLASSES)}")
    if unet_class == "UNet2DConditionModel" and any("CrossAttn" in b for b in unet_cfg.get("down_block_types", [])):
        raise TeacherError(f"--teacher {directory}: the U-Net has cross-attention (a text teacher); this version of fewstep distils class-conditional teachers only")
    weights = unet_dir / WEIGHTS
    if not weights.is_file():
        pickled = unet_dir / "diffusion_pytorch_model.bin"
        hint = " (it has a pickled .bin: convert it with save_pretrained(..., safe_serialization=True))" if pickled.is_file() else ""
        raise TeacherError(f"--teacher {directory}: no {WEIGHTS} in {unet_dir}{hint}; fewstep loads safetensors only")
    sched = _read_json(scheduler_path, "scheduler config")
    prediction = sched.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise TeacherError(f"--teacher {directory}: prediction_type {prediction!r} is not supported; fewstep reads {', '.join(PREDICTION_TYPES)}")
    try:
        from_scheduler_config(sched)
    except ConfigError as exc:
        raise TeacherError(f"--teacher {directory}: {exc}") from None
    classes = unet_cfg.get("num_class_embeds")
    if unet_cfg.get("class_embed_type") is not None and not classes:
        raise TeacherError(f"--teacher {directory}: class_embed_type {unet_cfg.get('class_embed_type')!r} is not supported; fewstep reads num_class_embeds")
    null = null_class if null_class is not None else unet_cfg.get("null_class")
    if classes and null is None:
        raise TeacherError(f"--teacher {directory}: a class-conditional teacher ({classes} class embeddings) without a null class cannot be guided; give the id its unconditional branch was trained with: --set teacher_null_class=K")
    if not classes:
        raise TeacherError(f"--teacher {directory}: an unconditional teacher (no num_class_embeds) has no conditional branch to guide")
    keys = {k: v for k, v in sched.items() if not k.startswith("_")}
    network = {
        "kind": "diffusers",
        "unet_class": unet_class,
        "unet": {k: v for k, v in unet_cfg.items() if not k.startswith("_")},
        "scheduler": keys,
        "prediction_type": prediction,
        "null_class": int(null),
        "channels": int(unet_cfg.get("in_channels", 3)),
        "resolution": int(unet_cfg.get("sample_size", 0)) or None,
    }
    if network["channels"] != 3:
        raise TeacherError(f"--teacher {directory}: the U-Net takes {network['channels']} channels; a pixel-space teacher takes 3 (a latent one needs its vae/, not supported yet)")
    try:
        teacher = Denoiser(network)
    except ConfigError as exc:
        raise TeacherError(f"--teacher {directory}: {exc}") from None
    from safetensors.torch import load_file

    state = load_file(str(weights))
    missing, unexpected = teacher.backbone.unet.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TeacherError(f"--teacher {directory}: the weights do not fit the U-Net config (missing {len(missing)}, unexpected {len(unexpected)} tensors, e.g. {(missing or unexpected)[:3]})")
    return ImportedTeacher(
        denoiser=teacher.eval().requires_grad_(False),
        unet_dir=unet_dir,
        resolution=network["resolution"],
        channels=network["channels"],
        num_classes=teacher.net_cfg.num_classes,
        prediction_type=prediction,
    )
