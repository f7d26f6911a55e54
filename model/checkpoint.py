"""Checkpoints: one directory each (config.json + model.safetensors), a family.json manifest per family.

Writes are atomic (a temporary sibling, then a rename); loading validates the config, the
tensor names and shapes, and fails with a `CheckpointError` that says what is wrong.
Weights are safetensors only, never pickle.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config_io import ConfigError
from .denoiser import Denoiser

CHECKPOINT_FORMAT = "fewstep.checkpoint"
FAMILY_FORMAT = "fewstep.family"
VERSION = 1
ROLES = ("teacher", "stage1", "distilled", "stochastic", "autoencoder")


class CheckpointError(RuntimeError):
    """A checkpoint or family directory is missing, incomplete or corrupt."""


@contextmanager
def atomic_dir(target: Path):
    """Yield a temporary directory beside `target`; on success it replaces `target` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what}: {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{what}: {path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{what}: {path} must hold a JSON object")
    return data


def save_tensors(directory: Path, tensors: dict[str, torch.Tensor], config: dict, dtype: torch.dtype | None = None) -> None:
    """Write config.json and model.safetensors into `directory` atomically."""
    with atomic_dir(directory) as tmp:
        out = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(out, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")


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
