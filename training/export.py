"""`python -m training export DIR --to DEST`: a servable copy of a family, in fp16 by default.

Keeps the teacher, the stage-1 student, the deterministic students of at most `max_steps`
steps and every stochastic student (the intermediate rounds are only teachers of teachers),
plus recipe.json, the evaluator and metrics.json when present, and what an imported teacher
brought: its autoencoder (in `dtype`), text encoder and tokenizer. No training state is copied.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from model.checkpoint import load_tensors, save_tensors
from model.files import atomic_dir
from model.manifest import read_family, write_family

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def export_family(src: Path, dest: Path, *, dtype: str = "float16", max_steps: int = 8, name: str | None = None, diffusers: bool = True, only: list[str] | None = None, data_root: str | None = None, note=print) -> Path:
    """`name`: the family's name in the copy (default: the recipe's), as the service and its
    requests' `model` field know it. `diffusers`: also write each student's U-Net in the
    diffusers layout under DEST/diffusers/ (training/diffusers_export.py); `note` hears which
    students could not be. `only`: the checkpoints to copy (a servable family needs at least one
    deterministic student; without stage 1, img2img between grid points opens with the student
    itself, and without the teacher the copy cannot be evaluated again). `data_root`: the
    training data's folder as the copy names it (a path on the machine that trained it means
    nothing on another one), in family.json, recipe.json, metrics.json and every checkpoint."""
    src, dest = Path(src), Path(dest)
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}")
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise ValueError(f"--name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    info = read_family(src)
    if name is not None:
        info = replace(info, family=name)
    keep = {
        name: c for name, c in info.checkpoints.items()
        if c["role"] in ("teacher", "stage1", "stochastic") or (c["role"] == "distilled" and c["steps"] <= max_steps)
    }
    if only is not None:
        unknown = sorted(set(only) - set(info.checkpoints))
        if unknown:
            raise ValueError(f"--keep: {src} has no checkpoint {', '.join(unknown)}; it has {', '.join(sorted(info.checkpoints))}")
        keep = {k: c for k, c in info.checkpoints.items() if k in only}
        if not any(c["role"] == "distilled" for c in keep.values()):
            raise ValueError("--keep: a servable family needs at least one distilled student (distilled-N)")
    old_root = (info.data or {}).get("root")
    rename = (lambda v: _renamed(v, old_root, data_root)) if data_root is not None and old_root else (lambda v: v)  # noqa: E731
    if data_root is not None:
        info = replace(info, data=rename(info.data))
    with atomic_dir(dest) as tmp:
        for name in keep:
            tensors, config = load_tensors(src / name, f"checkpoint {src / name}")
            save_tensors(tmp / name, tensors, rename(dict(config, dtype=dtype)), DTYPES[dtype])
        for extra in ("recipe.json", "metrics.json"):
            if (src / extra).is_file():
                (tmp / extra).write_text(json.dumps(rename(json.loads((src / extra).read_text())), indent=2) + "\n")
        if (src / "autoencoder").is_dir():
            tensors, config = load_tensors(src / "autoencoder", f"autoencoder of {src}")
            save_tensors(tmp / "autoencoder", tensors, config, DTYPES[dtype])
        for part in ("evaluator", "text_encoder", "tokenizer"):
            if part == "evaluator" and "teacher" not in keep:
                continue  # it serves evaluation only, which needs the teacher
            if (src / part).is_dir():
                shutil.copytree(src / part, tmp / part)
        if diffusers:
            _diffusers_students(tmp, keep, info.guidance_range, DTYPES[dtype], note)
        write_family(tmp, replace(info, checkpoints=keep))
    return dest


def _renamed(value, old: str, new: str):
    """`value` (JSON data) with every string equal to `old` replaced by `new`."""
    if isinstance(value, dict):
        return {k: _renamed(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, old, new) for v in value]
    return new if value == old else value


def _diffusers_students(family: Path, keep: dict, guidance_range, dtype: torch.dtype, note) -> None:
    from model.checkpoint import load_checkpoint

    from .diffusers_export import write_diffusers_unet

    for name, c in keep.items():
        if c["role"] == "teacher":
            continue
        student, _ = load_checkpoint(family / name, "cpu")
        why = write_diffusers_unet(student, family / "diffusers" / name, steps=c["steps"], guidance_range=guidance_range, dtype=dtype, role=c["role"])
        if why is not None:
            note(f"{name}: not written in the diffusers layout: {why}")
