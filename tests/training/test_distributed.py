"""Two-process DDP training on CPU (gloo) through torchrun."""

import pytest
import json
import os
import subprocess
import sys

from safetensors.torch import load_file

from .conftest import ROOT

pytestmark = pytest.mark.slow  # trains with two processes


def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "family"
    small = ["--set", "teacher.steps=20", "--set", "stage1.steps=8", "--set", "distill.steps=4", "--set", "stochastic.steps=4",
             "--set", "distill_start_steps=8", "--set", "stochastic_steps=[4, 2]", "--set", "teacher.batch_size=64"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "training", "run", "toy2d", "--out", str(out), "--no-eval", *small]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    family = json.loads((out / "family.json").read_text())
    assert {"teacher", "stage1", "distilled-2", "distilled-1", "stochastic-4", "stochastic-2"} <= set(family["checkpoints"])
    weights = load_file(out / "distilled-1" / "model.safetensors")
    assert all(v.isfinite().all() for v in weights.values())
