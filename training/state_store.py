"""Crash-safe training states: one directory per saved step, each put in place by one rename.

    STATE_DIR/step-000001200/   config.json + model.safetensors (model, EMA, optimizer, step)
    STATE_DIR/.step-000001200.tmp-XXXX/   a state being written (removed on the next start)

A state is written into a temporary sibling, every file and the directory are fsynced, then it
is renamed into place (one atomic rename) and the parent directory is fsynced; only then are
older states removed, the newest `keep` kept. Loading takes the newest state that reads, and
falls back to the one before it, with a message, when the newest is damaged (a disk that lied
about its fsync, a truncated copy). A state of the earlier layout (STATE_DIR/config.json) is
still found, below any stepped one.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from model.checkpoint import load_tensors, write_tensor_files
from model.files import CheckpointError, recover_replacement, fsync_dir

STEP_DIR = re.compile(r"^step-(\d{9})$")
CRASH_HOOK = "FEWSTEP_TEST_CRASH_IN_SAVE"  # tests: "N" exits at once in the N-th save, files written, not yet renamed


class StateStore:
    def __init__(self, root: Path, keep: int = 2):
        self.root, self.keep = Path(root), keep
        self.saves = 0

    def steps(self) -> list[tuple[int, Path]]:
        """(step, directory) of the saved states, newest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
        return sorted(found, reverse=True)

    def clean(self) -> None:
        """Remove what a killed save left behind (temporaries)."""
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith(".step-") and ".tmp-" in p.name:
                    shutil.rmtree(p, ignore_errors=True)

    def save(self, step: int, tensors: dict[str, torch.Tensor], config: dict) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"step-{step:09d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=self.root))
        try:
            write_tensor_files(tmp, tensors, config)
            self.saves += 1
            if os.environ.get(CRASH_HOOK) == str(self.saves):
                os._exit(9)  # test hook: a kill between writing the state and putting it in place
            if final.exists():  # the same step saved again (a signal right after a periodic save): same contents
                shutil.rmtree(tmp)
                return final
            os.replace(tmp, final)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for _, old in self.steps()[self.keep :]:
            shutil.rmtree(old, ignore_errors=True)
        legacy = self.root / "config.json"
        if legacy.exists():
            legacy.unlink()
            (self.root / "model.safetensors").unlink(missing_ok=True)
        return final

    def load_latest(self, what: str) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The newest state that reads, falling back over damaged ones; None when there is none."""
        if self.root.parent.is_dir():
            recover_replacement(self.root)  # an earlier layout's replacement killed between its two renames
        candidates = [p for _, p in self.steps()]
        if (self.root / "config.json").is_file():
            candidates.append(self.root)
        for k, path in enumerate(candidates):
            try:
                tensors, meta = load_tensors(path, f"{what} state {path.name}")
                if not isinstance(meta.get("step"), int):
                    raise CheckpointError("config.json lacks its step")
                if not all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point()):
                    raise CheckpointError("it holds non-finite values")
                return tensors, meta
            except CheckpointError as exc:
                rest = "falling back to the one before it" if k + 1 < len(candidates) else "no older state: the stage starts over"
                print(f"[fewstep] {what}: the saved state {path} is damaged ({exc}); {rest}", flush=True)
                if path != self.root:  # out of the way, so that it takes no slot of the states kept
                    os.replace(path, path.with_name(f".damaged-{path.name}"))
        return None
