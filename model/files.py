"""Files without torch: atomic writes, JSON reading with clear errors, the format version.

Torch-free, so that the API process can read family manifests (model/manifest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

VERSION = 1  # of checkpoint configs and family manifests


class CheckpointError(RuntimeError):
    """A checkpoint or family directory is missing, incomplete or corrupt."""


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_replacement(target: Path) -> None:
    """Undo what a kill between the two renames of a replacement left: a target moved aside
    (`.NAME.old-PID`) and none in place comes back; stale temporaries and old copies go."""
    leftovers = sorted(target.parent.glob(f".{target.name}.old-*"))
    if leftovers and not target.exists():
        os.replace(leftovers.pop(), target)
    for p in leftovers + list(target.parent.glob(f".{target.name}.tmp-*")):
        shutil.rmtree(p, ignore_errors=True)


@contextmanager
def atomic_dir(target: Path):
    """Yield a temporary directory beside `target`; on success it takes `target`'s place. A new
    target is one rename; replacing one moves the old aside first (a kill between the two is
    undone by the next write, see recover_replacement). Renames are fsynced."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_replacement(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_dir(target.parent)
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
