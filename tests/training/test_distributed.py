"""Two-process DDP training on CPU (gloo) through torchrun."""

import pytest
import json
import os
import re
import signal
import subprocess
import sys
import time

from safetensors.torch import load_file

from .conftest import ROOT, cli, saved_step

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


SMALL = ["--set", "stage1.steps=8", "--set", "distill.steps=4", "--set", "stochastic.steps=4", "--set", "distill_start_steps=8",
         "--set", "stochastic_steps=[4, 2]", "--set", "teacher.batch_size=64", "--set", "teacher.save_every_s=1000"]


def _torchrun(out, *extra, env_extra=None, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **(env_extra or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "training", "run", "toy2d", "--out", str(out), "--no-eval", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _rank_pid(out, rank: int) -> int | None:
    """The pid of the training process of `rank` for run directory `out` (read from /proc)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if str(out).encode() in cmdline and b"torch.distributed.run" not in cmdline and f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


def test_sigterm_to_one_rank_stops_both_after_the_same_step_and_resume_continues(tmp_path):
    out = tmp_path / "family"
    proc = _torchrun(out, "--set", "teacher.steps=4000", *SMALL)
    deadline = time.time() + 120
    pid = None
    while time.time() < deadline and pid is None:
        pid = _rank_pid(out, 1) if (out / "recipe.json").exists() else None
        time.sleep(0.2)
    assert pid, "rank 1 not found"
    time.sleep(3.0)  # mid-teacher
    os.kill(pid, signal.SIGTERM)  # one rank only, as a scheduler that reaches one node first
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    stopped = re.findall(r"teacher: stopped by a signal at step (\d+) \(on every rank\)", err)
    assert len(stopped) == 2 and stopped[0] == stopped[1], err[-3000:]  # both ranks, the same step
    assert saved_step(out / ".state" / "teacher") == int(stopped[0])
    resumed = _torchrun(out, "--resume", "--set", "teacher.steps=4000", *SMALL)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert f"{stopped[0]}/4000" in err.replace("\r", "\n")  # it went on from the saved step
    assert {"teacher", "distilled-1", "stochastic-2"} <= set(json.loads((out / "family.json").read_text())["checkpoints"])


def test_a_non_finite_loss_on_one_rank_stops_both_with_a_clear_message(tmp_path):
    out = tmp_path / "family"
    proc = _torchrun(out, "--set", "teacher.steps=200", *SMALL, env_extra={"FEWSTEP_TEST_NAN_AT": "1:15"})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert err.count("the loss or its gradient became non-finite at step 16 on rank(s) [1]; stopped on every rank after step 20") == 2, err[-3000:]


def test_a_state_saved_by_two_processes_is_not_resumed_by_one(tmp_path):
    out = tmp_path / "family"
    proc = _torchrun(out, "--set", "teacher.steps=4000", *SMALL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "recipe.json").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    os.kill(_rank_pid(out, 0), signal.SIGTERM)
    proc.communicate(timeout=300)
    assert saved_step(out / ".state" / "teacher") > 0
    single = cli("run", "toy2d", "--out", out, "--no-eval", "--resume", "--set", "teacher.steps=4000", *SMALL, check=False)
    assert single.returncode == 2
    assert "trained by 2 process(es), this run has 1" in single.stderr and "--nproc_per_node=2" in single.stderr
