"""Crash-safe training states: a kill mid-save, a damaged newest state, a half-done replacement."""

import os
import subprocess
import sys

import pytest
import torch

from model.files import atomic_dir
from training.state_store import CRASH_HOOK, StateStore

from .conftest import ROOT, cli, saved_step


def _save(store, step):
    store.save(step, {"w": torch.full((3,), float(step))}, {"step": step})


def test_the_newest_states_are_kept_and_a_damaged_one_falls_back(tmp_path, capsys):
    store = StateStore(tmp_path / "stage", keep=2)
    for step in (10, 20, 30):
        _save(store, step)
    assert [s for s, _ in store.steps()] == [30, 20]
    (tmp_path / "stage" / "step-000000030" / "model.safetensors").write_bytes(b"\0" * 10)  # torn by a crash
    tensors, meta = store.load_latest("stage1")
    assert meta["step"] == 20 and torch.equal(tensors["w"], torch.full((3,), 20.0))
    assert "damaged" in capsys.readouterr().out


def test_a_kill_between_writing_and_renaming_leaves_the_previous_state(tmp_path):
    root = tmp_path / "stage"
    _save(StateStore(root), 10)
    code = f"import torch; from training.state_store import StateStore; StateStore({str(root)!r}).save(20, {{'w': torch.ones(3)}}, {{'step': 20}})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), **{CRASH_HOOK: "1"}))
    assert proc.returncode == 9
    assert any(p.name.startswith(".step-000000020.tmp-") for p in root.iterdir())  # the torn write
    store = StateStore(root)
    store.clean()
    assert [p.name for p in root.iterdir()] == ["step-000000010"]
    assert store.load_latest("stage")[1]["step"] == 10


def test_a_replacement_killed_between_its_two_renames_is_undone(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "config.json").write_text("old")
    os.replace(target, tmp_path / ".ckpt.old-123")  # the first rename happened, the second did not
    with atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("new")
    assert (target / "config.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


@pytest.mark.slow  # runs the quick recipe
def test_a_run_killed_inside_a_save_resumes(tmp_path):
    out = tmp_path / "family"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", **{CRASH_HOOK: "2"})
    rest = ["--set", "stage1.steps=2", "--set", "distill_start_steps=2", "--set", "distill.steps=1", "--set", "stochastic_steps=[]"]  # the teacher is what is killed
    args = ["run", "quick", "--out", str(out), "--no-eval", "--set", "teacher.save_every_s=0", "--set", "teacher.steps=40", *rest]
    proc = subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr[-2000:]  # killed in its second save
    assert saved_step(out / ".state" / "teacher") == 10  # the first save is there, the second never landed
    resumed = cli(*args[:4], "--resume", *args[4:])
    assert "10/40" in resumed.stderr.replace("\r", "\n")
    assert (out / "distilled-1" / "model.safetensors").is_file()
