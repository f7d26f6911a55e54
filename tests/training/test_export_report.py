"""Shipping a family (fp16, servable subset) and the human-readable report."""

import pytest
import json

import torch

from model.family import Family
from model.pipeline import Pipeline, Request

from .conftest import cli

pytestmark = pytest.mark.slow  # exports and reports a trained family


def test_export_fp16_subset_then_report(quick_run, tmp_path):
    dest = tmp_path / "shipped"
    proc = cli("export", quick_run, "--to", dest)
    # its students push the class and text embeddings by gamma: no diffusers layout for them, and export says why
    assert "distilled-4: not written in the diffusers layout: it pushes its class/text embedding by gamma" in proc.stdout
    assert not (dest / "diffusers").exists()
    family = json.loads((dest / "family.json").read_text())
    assert set(family["checkpoints"]) == {"teacher", "stage1", "distilled-8", "distilled-4", "distilled-2", "distilled-1", "stochastic-8", "stochastic-4", "stochastic-2"}
    cfg = json.loads((dest / "distilled-4" / "config.json").read_text())
    assert cfg["dtype"] == "float16"
    from safetensors.torch import load_file

    assert all(v.dtype == torch.float16 for v in load_file(dest / "distilled-4" / "model.safetensors").values())
    assert not (dest / ".state").exists()
    # the fp16 copy serves and stays close to the fp32 original
    req = [Request(seed=5, guidance=1.0, class_label=2)]
    a = Pipeline(Family(dest)).generate(req, steps=4)
    b = Pipeline(Family(quick_run)).generate(req, steps=4)
    assert (a - b).abs().max() < 0.05

    docs = tmp_path / "docs"
    cli("report", dest, "--out", docs)
    text = (docs / "quick.md").read_text()
    assert "| DDIM+CFG (teacher) | 256 | 512 |" in text and "| distilled | 1 | 1 |" in text
    assert "γ=1: distilled 4-step FID <= 1.2 x reference" in text and "held out" in text
    assert "gamma response of stage1 >= 0.8" in text and "## img2img and inpainting" in text
    for png in ("quick-fid-vs-evals.png", "quick-fid-vs-adherence.png", "quick-samples-gamma1.png"):
        assert (docs / png).stat().st_size > 5000


def test_export_refuses_a_directory_without_a_family(tmp_path):
    proc = cli("export", tmp_path, "--to", tmp_path / "x", check=False)
    assert proc.returncode == 2 and "family.json" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_export_names_the_family_and_the_service_refuses_two_of_one_name(quick_run, tmp_path):
    from service.registry import discover

    models = tmp_path / "models"
    cli("export", quick_run, "--to", models / "a", "--name", "quick-a")
    cli("export", quick_run, "--to", models / "b", "--name", "quick-b")
    assert json.loads((models / "a" / "family.json").read_text())["family"] == "quick-a"
    assert {"quick-a", "quick-b", "shapes"} <= set(discover(models))
    cli("export", quick_run, "--to", models / "c")  # the recipe's name again...
    cli("export", quick_run, "--to", models / "d")  # ...twice
    with pytest.raises(ValueError, match="two model families are named 'quick'"):
        discover(models)
    bad = cli("export", quick_run, "--to", tmp_path / "x", "--name", "../evil", check=False)
    assert bad.returncode == 2 and "--name" in bad.stderr and not (tmp_path / "x").exists()


def test_export_keeps_only_the_checkpoints_asked_for_and_the_copy_serves(quick_run, tmp_path):
    dest = tmp_path / "small"
    cli("export", quick_run, "--to", dest, "--keep", "distilled-4,distilled-1,stochastic-4", "--no-diffusers")
    info = json.loads((dest / "family.json").read_text())
    assert set(info["checkpoints"]) == {"distilled-4", "distilled-1", "stochastic-4"}
    assert not (dest / "teacher").exists() and not (dest / "stage1").exists() and not (dest / "evaluator").exists()
    pipe = Pipeline(Family(dest), fixed_batch=4)
    image = pipe.generate([Request(seed=0, guidance=1.0, class_label=0, image=torch.zeros(3, 8, 8), strength=0.7)], steps=4)  # img2img off the grid, without stage 1
    assert image.shape == (1, 3, 8, 8) and torch.isfinite(image).all()
    for keep, why in (("distilled-3", "no checkpoint distilled-3"), ("teacher,stage1", "at least one distilled student")):
        bad = cli("export", quick_run, "--to", tmp_path / "x", "--keep", keep, check=False)
        assert bad.returncode == 2 and why in bad.stderr and not (tmp_path / "x").exists()
