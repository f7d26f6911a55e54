"""Checkpoints: one directory each (config.json + model.safetensors), a family.json manifest per family.

Writes are atomic (a temporary sibling, then a rename); loading validates the config, the
tensor names and shapes, and fails with a `CheckpointError` that says what is wrong.
Weights are safetensors only, never pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config_io import ConfigError
from .denoiser import Denoiser
from .files import VERSION, CheckpointError, atomic_dir, fsync_dir, fsync_file, read_json

CHECKPOINT_FORMAT = "fewstep.checkpoint"
ROLES = ("teacher", "stage1", "distilled", "stochastic")


def write_tensor_files(directory: Path, tensors: dict[str, torch.Tensor], config: dict, dtype: torch.dtype | None = None) -> None:
    """model.safetensors and config.json in an existing (temporary) directory, fsynced with it."""
    directory = Path(directory)
    out = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(out, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in ("model.safetensors", "config.json"):
        fsync_file(directory / name)
    fsync_dir(directory)


def save_tensors(directory: Path, tensors: dict[str, torch.Tensor], config: dict, dtype: torch.dtype | None = None) -> None:
    """Write config.json and model.safetensors into `directory` atomically (and durably)."""
    with atomic_dir(directory) as tmp:
        write_tensor_files(tmp, tensors, config, dtype)


def load_tensors(directory: Path, what: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict]:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{what}: directory {directory} does not exist")
    config = read_json(directory / "config.json", what)
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{what}: {weights} does not exist")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{what}: {weights} is not a readable safetensors file ({exc})") from exc
    return tensors, config


def save_checkpoint(directory: Path, model: Denoiser, *, role: str, steps: int | None, guidance_range, extra: dict | None = None, dtype: torch.dtype | None = None) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    config = {
        "format": CHECKPOINT_FORMAT,
        "version": VERSION,
        "role": role,
        "steps": steps,
        "guidance_range": list(guidance_range) if guidance_range is not None else None,
        "network": model.network_config,
        "dtype": str(dtype or torch.float32).replace("torch.", ""),
        **(extra or {}),
    }
    save_tensors(directory, model.state_dict(), config, dtype)


def load_checkpoint(directory: Path, device="cpu", dtype: torch.dtype = torch.float32) -> tuple[Denoiser, dict]:
    """Build the Denoiser a checkpoint describes and load its weights, validating both."""
    what = f"checkpoint {directory}"
    tensors, config = load_tensors(directory, what)
    if config.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{what}: config.json is not a fewstep checkpoint config (format {config.get('format')!r})")
    if config.get("version") != VERSION:
        raise CheckpointError(f"{what}: unsupported version {config.get('version')!r} (this fewstep reads {VERSION})")
    try:
        model = Denoiser(config.get("network"))
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{what}: invalid network config: {exc}") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{what}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    for key, value in expected.items():
        if tuple(tensors[key].shape) != tuple(value.shape):
            raise CheckpointError(f"{what}: tensor {key} has shape {tuple(tensors[key].shape)}, config implies {tuple(value.shape)}")
        if tensors[key].is_floating_point() and not torch.isfinite(tensors[key]).all():
            raise CheckpointError(f"{what}: tensor {key} holds non-finite values")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    return model.to(device=device, dtype=dtype).eval(), config
