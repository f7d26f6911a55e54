"""Resumable evaluation: finished parts of a `python -m training evaluate` run kept on disk.

A full table (1024 samples x 3 seed sets x every row x 4 guidance weights) takes hours on a
CPU; a killed run continues where it stopped. Each finished row (and the edits and text
parts) is appended to DIR/.eval/parts.jsonl, and the reference samples of each guidance weight
(needed for every later row's RMSE) are saved beside it as safetensors. Everything is keyed
by a fingerprint of what decides the numbers (the checkpoints' bytes, the evaluation settings,
the sample and repeat counts): a run with another fingerprint starts afresh. The folder is
removed once metrics.json is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.files import atomic_write_text


def _update(h, path: Path) -> None:
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def weights_sha256(directory: Path, name: str) -> str | None:
    """SHA-256 of checkpoint `name`'s weights in `directory`; None when it has none."""
    path = Path(directory) / name / "model.safetensors"
    if not path.is_file():
        return None
    h = hashlib.sha256()
    _update(h, path)
    return h.hexdigest()


def fingerprint(directory: Path, checkpoints, settings: dict) -> str:
    """SHA-256 over the weights of `checkpoints` (names of sub-directories) and `settings`."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name in sorted(checkpoints):
        path = Path(directory) / name / "model.safetensors"
        h.update(name.encode())
        if path.is_file():
            _update(h, path)
    return h.hexdigest()


class EvalProgress:
    """Parts of one evaluation, by key; `resume=False` (or another fingerprint) starts afresh."""

    def __init__(self, directory: Path, key: str, resume: bool = True):
        self.root = Path(directory) / ".eval"
        self.parts_path = self.root / "parts.jsonl"
        self.parts: dict[str, object] = {}
        meta = self.root / "fingerprint"
        if resume and meta.is_file() and meta.read_text().strip() == key:
            self.parts = _read_parts(self.parts_path)
        else:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root.mkdir(parents=True)
            atomic_write_text(meta, key + "\n")

    def __contains__(self, key: str) -> bool:
        return key in self.parts

    def get(self, key: str):
        return self.parts[key]

    def put(self, key: str, value) -> None:
        """Record a finished part (JSON-able); one appended, flushed line per part."""
        self.parts[key] = value
        with self.parts_path.open("a") as f:
            f.write(json.dumps({"key": key, "value": value}) + "\n")
            f.flush()

    def tensors(self, key: str) -> list[torch.Tensor] | None:
        """Saved tensors of `key` (a list), or None when there are none or they are damaged."""
        path = self.root / f"{key}.safetensors"
        if not path.is_file():
            return None
        try:
            loaded = load_file(str(path))
        except (SafetensorError, OSError, ValueError):
            return None
        return [loaded[str(i)] for i in range(len(loaded))]

    def save_tensors(self, key: str, values: list[torch.Tensor]) -> None:
        path = self.root / f"{key}.safetensors"
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({str(i): v.contiguous() for i, v in enumerate(values)}, str(tmp))
        tmp.replace(path)

    def finish(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _read_parts(path: Path) -> dict:
    """Parts from the JSON lines file; a torn last line (a kill mid-write) is ignored."""
    parts = {}
    if not path.is_file():
        return parts
    for line in path.read_text().splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        parts[item["key"]] = item["value"]
    return parts
