"""`python -m training export DIR --to DEST`: a servable copy of a family, in fp16 by default.

Keeps the teacher, the stage-1 student, the deterministic students of at most `max_steps`
steps and every stochastic student (the intermediate rounds are only teachers of teachers),
plus recipe.json, the evaluator and metrics.json when present, and what an imported teacher
brought: its autoencoder (in `dtype`), text encoder and tokenizer. No training state is copied.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from model.checkpoint import load_tensors, save_tensors
from model.files import atomic_dir
from model.manifest import read_family, write_family

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def export_family(src: Path, dest: Path, *, dtype: str = "float16", max_steps: int = 8, name: str | None = None, diffusers: bool = True, note=print) -> Path:
    """`name`: the family's name in the copy (default: the recipe's), as the service and its
    requests' `model` field know it. `diffusers`: also write each student's U-Net in the
    diffusers layout under DEST/diffusers/ (training/diffusers_export.py); `note` hears which
    students could not be."""
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
    with atomic_dir(dest) as tmp:
        for name in keep:
            tensors, config = load_tensors(src / name, f"checkpoint {src / name}")
            save_tensors(tmp / name, tensors, dict(config, dtype=dtype), DTYPES[dtype])
        for extra in ("recipe.json", "metrics.json"):
            if (src / extra).is_file():
                shutil.copy2(src / extra, tmp / extra)
        if (src / "autoencoder").is_dir():
            tensors, config = load_tensors(src / "autoencoder", f"autoencoder of {src}")
            save_tensors(tmp / "autoencoder", tensors, config, DTYPES[dtype])
        for part in ("evaluator", "text_encoder", "tokenizer"):
            if (src / part).is_dir():
                shutil.copytree(src / part, tmp / part)
        if diffusers:
            _diffusers_students(tmp, keep, info.guidance_range, DTYPES[dtype], note)
        write_family(tmp, replace(info, checkpoints=keep))
    return dest


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
