"""The whole chain on images (`quick` recipe), resume after a kill, and what a user can load."""

import pytest
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from model.family import Family
from model.pipeline import Pipeline, Request

from .conftest import ROOT, cli, read_metrics, saved_step

pytestmark = pytest.mark.slow  # runs the quick recipe end to end

STUDENTS = ["distilled-8", "distilled-4", "distilled-2", "distilled-1"]
STOCHASTIC = ["stochastic-8", "stochastic-4", "stochastic-2"]


def test_quick_chain_writes_every_checkpoint_and_metrics(quick_run):
    family = json.loads((quick_run / "family.json").read_text())
    assert set(family["checkpoints"]) == {"teacher", "stage1", *STUDENTS, *STOCHASTIC}
    for name in family["checkpoints"]:
        cfg = json.loads((quick_run / name / "config.json").read_text())
        assert cfg["format"] == "fewstep.checkpoint" and cfg["network"]["kind"] == "unet"
        assert cfg["recipe"]["name"] == "quick" and cfg["recipe"]["teacher"]["steps"] == 80  # the resolved recipe beside the weights
        assert (quick_run / name / "model.safetensors").stat().st_size > 0
    assert not (quick_run / ".state").exists() or not any((quick_run / ".state").iterdir())
    recipe = json.loads((quick_run / "recipe.json").read_text())
    assert recipe["name"] == "quick"
    metrics = read_metrics(quick_run)
    samplers = {(r["sampler"], r["steps"]) for r in metrics["rows"]}
    assert {("distilled", n) for n in (1, 2, 4, 8)} <= samplers
    assert {("distilled-stochastic", n) for n in (2, 4, 8)} <= samplers
    assert ("teacher-dpmpp2m", 4) in samplers and ("teacher-ddim", 256) in samplers
    assert {"seen", "held_out"} <= set(metrics["text_adherence"][0])
    assert ("stage1", 16) in samplers
    # the evaluation's schema: spreads over seed sets, KID, the floor, stochastic rows without RMSE
    assert metrics["repeats"] == 2 and metrics["feature_dim"] == 64
    assert metrics["fid_real_vs_real"] > 0 and metrics["fid_real_vs_real_std"] is not None
    for row in metrics["rows"]:
        assert row["fid_std"] is not None and row["kid"] is not None and row["kid_std"] is not None
        assert (row["rmse_to_reference"] is None) == (row["sampler"] == "distilled-stochastic")
        assert ("gamma_response" in row) == (row["sampler"] in ("stage1", "distilled"))
        assert set(row["attribute_tv"]) == {"size", "position", "background"}
    assert set(metrics["gamma_response"]) == {"stage1", *STUDENTS}
    edits = metrics["edits"]
    assert [r["evaluations"] for r in edits["img2img"] if r["steps"] == 4] == [1, 2, 2, 3, 4, 4]  # strengths 0.1, 0.3, 0.5, 0.7, 0.9, 1
    assert all(r["kept_max_abs_diff"] == 0.0 for r in edits["inpaint"])


def test_family_serves_class_text_img2img_and_inpainting(quick_run):
    pipe = Pipeline(Family(quick_run))
    side = pipe.family.info.resolution
    image = torch.rand(3, side, side) * 2 - 1
    mask = torch.zeros(side, side)
    mask[: side // 2] = 1
    requests = [
        Request(seed=1, guidance=1.0, class_label=0),
        Request(seed=2, guidance=0.0, prompt="a red circle"),
        Request(seed=3, guidance=2.0, prompt="a blue square", image=image, strength=0.5),
        Request(seed=4, guidance=4.0, prompt="a green cross", image=image, mask=mask),
    ]
    for stochastic in (False, True):
        out = pipe.generate(requests, steps=4, stochastic=stochastic)
        assert out.shape == (4, 3, side, side) and torch.isfinite(out).all()
        assert out.abs().max() <= 1
        # inpainting keeps the unmasked half exactly
        assert torch.equal(out[3][:, side // 2 :], image[:, side // 2 :])
        # a request's pixels do not depend on its batch mates
        alone = pipe.generate(requests[1:2], steps=4, stochastic=stochastic)
        assert torch.allclose(alone[0], out[1], atol=1e-4)


def test_killed_run_resumes_where_it_stopped(quick_run, tmp_path):
    """Kill the run mid-stage with SIGKILL (no chance to save), resume, and get the same
    weights as the uninterrupted run: the finished stages are kept, the killed stage restarts
    from its last saved state and redraws exactly the same data and noise. The run draws its
    batches ahead in a thread (data.prefetch), which must not change them either."""
    out = tmp_path / "family"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    extra = ["--set", "stage1.save_every_s=0", "--set", "data.prefetch=2"]  # save every step, so the kill lands mid-stage
    args = [sys.executable, "-m", "training", "run", "quick", "--out", str(out), "--no-eval", *extra]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    state = out / ".state" / "stage1"
    while time.time() < deadline and saved_step(state) < 10:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = saved_step(state)
    assert 10 <= step < 30, f"killed at saved step {step}"
    teacher_mtime = (out / "teacher" / "model.safetensors").stat().st_mtime_ns
    assert not (out / "distilled-1").exists()

    resumed = cli("run", "quick", "--out", out, "--no-eval", "--resume", *extra)
    assert f"{step}/30" in resumed.stderr.replace("\r", "\n")  # the progress bar restarts at the saved step
    assert (out / "teacher" / "model.safetensors").stat().st_mtime_ns == teacher_mtime
    for name in ["teacher", "stage1", *STUDENTS, *STOCHASTIC]:
        a, b = load_file(out / name / "model.safetensors"), load_file(quick_run / name / "model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-5), f"{name}:{key} differs after resume"


def test_interrupted_run_saves_state_on_sigterm(tmp_path):
    out = tmp_path / "family"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "training", "run", "quick", "--out", str(out), "--set", "teacher.save_every_s=1000"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "recipe.json").exists():
        time.sleep(0.1)
    time.sleep(4)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "rerun with --resume" in err
    assert saved_step(out / ".state" / "teacher") > 0


def test_killed_evaluation_resumes_from_its_finished_rows(quick_run, tmp_path):
    """SIGKILL an evaluation after a few rows; a second run says it resumes, redraws none of
    the finished rows, and writes the same table as the uninterrupted evaluation."""
    out = tmp_path / "family"
    shutil.copytree(quick_run, out)
    expected = read_metrics(out)  # the run's own evaluation, uninterrupted (the same table as `evaluate --fresh` writes)
    (out / "metrics.json").unlink()
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "training", "evaluate", str(out)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / ".eval" / "parts.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not parts.exists() or len(parts.read_text().splitlines()) < 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(parts.read_text().splitlines())
    assert 5 <= done < len(expected["rows"]), f"killed after {done} parts"
    resumed = cli("evaluate", out)
    assert f"resuming: {done} finished parts" in resumed.stdout
    assert resumed.stdout.count("[evaluate] gamma=") == len(expected["rows"]) - done  # only the rest is drawn
    assert read_metrics(out)["rows"] == expected["rows"]
    assert not (out / ".eval").exists()
