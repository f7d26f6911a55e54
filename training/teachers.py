"""Teachers people already have: a diffusers folder read as a frozen fewstep teacher.

    python -m training run RECIPE --teacher DIR --out OUT [--set teacher_null_class=K]

DIR is a diffusers pipeline folder (`model_index.json`, `unet/`, `scheduler/`, optionally
`vae/`, `text_encoder/` + `tokenizer/`) or a bare U-Net folder (`config.json` of a
UNet2DModel or UNet2DConditionModel and its safetensors weights) with its scheduler config
beside it (`DIR/scheduler/` or `DIR/scheduler_config.json`). The U-Net is used as it is, in
its own parametrisation and on its own discrete schedule (model/diffusers_backbone.py).

- Conditioning: class labels (with a null class for the unconditional branch of guidance: the
  U-Net config's `null_class`, or `--set teacher_null_class=K`), or text through the
  pipeline's own CLIP text encoder and tokenizer (the unconditional branch is the empty
  prompt, as diffusers guides), or none: an unconditional teacher has nothing to guide (its
  guided prediction is its own at every gamma), so its students are plain progressive
  distillation and the family takes requests without a class or prompt.
- Latent teachers: the pipeline's `AutoencoderKL` (`vae/`) with its `scaling_factor` and
  `shift_factor`; the family keeps it, and the text encoder, so the service encodes and
  decodes with them.

Weights are read from safetensors only. Nothing is written for a folder that is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from model.autoencoder import AutoencoderConfig, diffusers_autoencoder_config
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
    pixel_resolution: int | None = None  # of the images (the latent's times the autoencoder's downsampling)
    autoencoder: AutoencoderConfig | None = None  # latent teachers: their vae/
    vae_dir: Path | None = None
    text_dir: Path | None = None  # text teachers: the pipeline folder holding text_encoder/ and tokenizer/
    text_len: int = 0


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TeacherError(f"{what} {path} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TeacherError(f"{what} {path} is not a JSON object")
    return data


@dataclass
class Located:
    unet: Path
    scheduler: Path
    vae: Path | None = None
    text: Path | None = None  # the folder with text_encoder/ and tokenizer/


def locate(directory: Path) -> Located:
    """Where the parts of a pipeline or bare U-Net folder are; TeacherError for what is missing."""
    d = Path(directory)
    if not d.is_dir():
        raise TeacherError(f"--teacher {d}: no such directory")
    vae = text = None
    if (d / "model_index.json").is_file():
        index = _read_json(d / "model_index.json", "pipeline index")
        unet = d / "unet"
        if not (unet / "config.json").is_file():
            raise TeacherError(f"--teacher {d}: the pipeline has no unet/ folder with a config.json")
        if "vae" in index or (d / "vae").is_dir():
            vae = d / "vae"
            if not (vae / "config.json").is_file():
                raise TeacherError(f"--teacher {d}: model_index.json names a vae but there is no vae/config.json")
        has_text = "text_encoder" in index or (d / "text_encoder").is_dir()
        has_tokenizer = "tokenizer" in index or (d / "tokenizer").is_dir()
        if has_tokenizer and not has_text:
            raise TeacherError(f"--teacher {d}: a tokenizer without a text encoder")
        if has_text:
            if not (d / "text_encoder" / "config.json").is_file():
                raise TeacherError(f"--teacher {d}: model_index.json names a text_encoder but there is no text_encoder/config.json")
            if not (d / "tokenizer").is_dir() or not any((d / "tokenizer").iterdir()):
                raise TeacherError(f"--teacher {d}: a text teacher without its tokenizer/ (fewstep encodes prompts with the teacher's own tokenizer)")
            text = d
        scheduler = d / "scheduler" / "scheduler_config.json"
    elif (d / "config.json").is_file():
        unet = d
        scheduler = next((p for p in (d / "scheduler" / "scheduler_config.json", d / "scheduler_config.json", d.parent / "scheduler" / "scheduler_config.json") if p.is_file()), d / "scheduler" / "scheduler_config.json")
    else:
        raise TeacherError(f"--teacher {d}: not a diffusers pipeline (no model_index.json) or U-Net folder (no config.json)")
    if not scheduler.is_file():
        raise TeacherError(f"--teacher {d}: no scheduler config (looked for {scheduler}); fewstep needs the teacher's noise schedule")
    return Located(unet, scheduler, vae, text)


def _autoencoder(directory: Path, vae: Path, latent_channels: int) -> AutoencoderConfig:
    cfg = _read_json(vae / "config.json", "autoencoder config")
    if cfg.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise TeacherError(f"--teacher {directory}: the vae is a {cfg.get('_class_name')!r}; fewstep reads AutoencoderKL")
    if not (vae / WEIGHTS).is_file():
        raise TeacherError(f"--teacher {directory}: no {WEIGHTS} in {vae}; fewstep loads safetensors only")
    ae = diffusers_autoencoder_config(cfg)
    if ae.latent_channels != latent_channels:
        raise TeacherError(f"--teacher {directory}: the vae makes {ae.latent_channels}-channel latents, the U-Net takes {latent_channels}")
    return ae


def _text(directory: Path, text: Path, unet_cfg: dict) -> tuple[int, int]:
    """(token length, width) of the teacher's text encoder, checked against its U-Net."""
    enc = _read_json(text / "text_encoder" / "config.json", "text encoder config")
    if not any("CLIPTextModel" == a for a in enc.get("architectures") or ["CLIPTextModel"]):
        raise TeacherError(f"--teacher {directory}: the text encoder is a {enc.get('architectures')}; fewstep reads CLIPTextModel")
    if not (text / "text_encoder" / "model.safetensors").is_file():
        raise TeacherError(f"--teacher {directory}: no model.safetensors in {text / 'text_encoder'}; fewstep loads safetensors only")
    tok = {}
    if (text / "tokenizer" / "tokenizer_config.json").is_file():
        tok = _read_json(text / "tokenizer" / "tokenizer_config.json", "tokenizer config")
    length = int(min(tok.get("model_max_length") or 77, enc.get("max_position_embeddings", 77)))
    width = int(enc.get("hidden_size", 0))
    cross = unet_cfg.get("cross_attention_dim")
    if isinstance(cross, (list, tuple)):
        cross = cross[0] if len(set(cross)) == 1 else None
    if cross != width:
        raise TeacherError(f"--teacher {directory}: the text encoder gives {width}-wide token states, the U-Net cross-attends to {cross}")
    return length, width


def import_teacher(directory: Path, null_class: int | None = None) -> ImportedTeacher:
    """The frozen teacher of a diffusers folder; TeacherError says what is wrong."""
    where = locate(directory)
    unet_dir = where.unet
    unet_cfg = _read_json(unet_dir / "config.json", "U-Net config")
    unet_class = unet_cfg.get("_class_name")
    if unet_class not in UNET_CLASSES:
        raise TeacherError(f"--teacher {directory}: the U-Net is a {unet_class!r}; fewstep reads {', '.join(UNET_CLASSES)}")
    cross = unet_class == "UNet2DConditionModel" and any("CrossAttn" in b for b in unet_cfg.get("down_block_types", []) + [unet_cfg.get("mid_block_type") or ""])
    if cross and where.text is None:
        raise TeacherError(f"--teacher {directory}: the U-Net has cross-attention (a text teacher) but the folder has no text_encoder/ and tokenizer/ to encode prompts with")
    if where.text is not None and not cross:
        raise TeacherError(f"--teacher {directory}: the pipeline has a text encoder but its U-Net has no cross-attention to read it")
    weights = unet_dir / WEIGHTS
    if not weights.is_file():
        pickled = unet_dir / "diffusion_pytorch_model.bin"
        hint = " (it has a pickled .bin: convert it with save_pretrained(..., safe_serialization=True))" if pickled.is_file() else ""
        raise TeacherError(f"--teacher {directory}: no {WEIGHTS} in {unet_dir}{hint}; fewstep loads safetensors only")
    sched = _read_json(where.scheduler, "scheduler config")
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
    if classes and cross:
        raise TeacherError(f"--teacher {directory}: a teacher conditioned on both classes and text is not supported; fewstep guides one condition")
    null = null_class if null_class is not None else unet_cfg.get("null_class")
    if classes and null is None:
        raise TeacherError(f"--teacher {directory}: a class-conditional teacher ({classes} class embeddings) without a null class cannot be guided; give the id its unconditional branch was trained with: --set teacher_null_class=K")
    if not classes and not cross:
        print(f"[teacher] {directory}: unconditional (no num_class_embeds, no text encoder): guidance changes nothing, "
              "the students are distilled to fewer steps only and take no class or prompt", flush=True)
    channels = int(unet_cfg.get("in_channels", 3))
    autoencoder = _autoencoder(directory, where.vae, channels) if where.vae is not None else None
    if autoencoder is None and channels != 3:
        raise TeacherError(f"--teacher {directory}: the U-Net takes {channels} channels; a pixel-space teacher takes 3 and a latent one comes with its vae/")
    text_len, text_dim = _text(directory, where.text, unet_cfg) if where.text is not None else (0, 0)
    keys = {k: v for k, v in sched.items() if not k.startswith("_")}
    network = {
        "kind": "diffusers",
        "unet_class": unet_class,
        "unet": {k: v for k, v in unet_cfg.items() if not k.startswith("_")},
        "scheduler": keys,
        "prediction_type": prediction,
        "null_class": int(null) if classes else None,
        "channels": channels,
        "resolution": int(unet_cfg.get("sample_size", 0)) or None,
        "text_dim": text_dim,
        "text_len": text_len,
    }
    try:
        teacher = Denoiser(network)
    except ConfigError as exc:
        raise TeacherError(f"--teacher {directory}: {exc}") from None
    from safetensors.torch import load_file

    state = load_file(str(weights))
    missing, unexpected = teacher.backbone.unet.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TeacherError(f"--teacher {directory}: the weights do not fit the U-Net config (missing {len(missing)}, unexpected {len(unexpected)} tensors, e.g. {(missing or unexpected)[:3]})")
    if text_dim:  # the unconditional branch: the teacher's own encoding of the empty prompt
        from model.clip_text_encoder import ClipTextEncoder
        from model.files import CheckpointError

        try:
            encoder = ClipTextEncoder(where.text, max_length=text_len)
        except CheckpointError as exc:
            raise TeacherError(f"--teacher {directory}: {exc}") from None
        teacher.backbone.null_text.copy_(encoder.encode_all([""]))
    side = network["resolution"]
    return ImportedTeacher(
        denoiser=teacher.eval().requires_grad_(False),
        unet_dir=unet_dir,
        resolution=side,
        channels=channels,
        num_classes=teacher.net_cfg.num_classes,
        prediction_type=prediction,
        pixel_resolution=side * autoencoder.downsample if (side and autoencoder) else side,
        autoencoder=autoencoder,
        vae_dir=where.vae,
        text_dir=where.text,
        text_len=text_len,
    )


def load_vae_weights(imported: ImportedTeacher, autoencoder) -> None:
    """The teacher's vae weights into a KLAutoencoder built from `imported.autoencoder`; the
    attention keys of older checkpoints (query/key/value/proj_attn) renamed as diffusers'
    from_pretrained does."""
    from safetensors.torch import load_file

    state = load_file(str(imported.vae_dir / WEIGHTS))
    fix = getattr(autoencoder.vae, "_fix_state_dict_keys_on_load", None)
    if fix is not None:
        fix(state)
    missing, unexpected = autoencoder.vae.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TeacherError(f"--teacher: the vae weights do not fit its config (missing {len(missing)}, unexpected {len(unexpected)} tensors, e.g. {(missing or unexpected)[:3]})")
