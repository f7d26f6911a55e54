"""A latent text-to-image family trained here end to end, as the built-in emoji family is: the
AutoencoderKL first (resumable, its scale set from its latents), then the whole chain in its
latent space; evaluation with the autoencoder's own floor and caption retrieval among all
names, seen and held out; the report; and the service decoding with the family's autoencoder."""

from __future__ import annotations

import json

import pytest
import torch

from model.family import Family
from tests.training.conftest import cli, read_metrics, saved_step

pytestmark = pytest.mark.slow  # trains a latent recipe end to end

TINY = [
    "--set", "data.resolution=16",
    "--set", 'autoencoder={"kind": "kl", "latent_channels": 4, "downsample": 2, "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4}',
    "--set", "autoencoder_train.steps=40", "--set", "autoencoder_train.batch_size=16", "--set", "autoencoder_train.save_every_s=0",
    "--set", "teacher.steps=40", "--set", "teacher.batch_size=16",
    "--set", "stage1.steps=10", "--set", "distill.steps=6", "--set", "stochastic.steps=4",
    "--set", "distill_start_steps=8", "--set", "stochastic_steps=[4, 2]",
    "--set", 'evaluation={"samples": 24, "batch_size": 64, "guidance": [0.0, 4.0], "teacher_steps": [4], "dpm_steps": [4], "reference_steps": 16, "stage1_steps": 8, "repeats": 2, "evaluator_steps": 200}',
]


@pytest.fixture(scope="module")
def emoji_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("emoji") / "data"
    cli("data", "emoji", "--out", out, "--size", "16")
    return out


def test_a_latent_recipe_trains_its_autoencoder_first_and_resumes_it(emoji_folder, tmp_path, monkeypatch):
    out = tmp_path / "family"
    args = ["run", "emoji", "--data-dir", emoji_folder / "train", "--out", out, *TINY]
    monkeypatch.setenv("FEWSTEP_TEST_NAN_AT", "0:25")  # stop the autoencoder stage mid-way; the last saved state stays
    proc = cli(*args, check=False)
    assert proc.returncode != 0 and "non-finite" in proc.stderr
    assert not (out / "autoencoder" / "config.json").exists()
    assert saved_step(out / ".state" / "autoencoder") == 20  # saved at its checks (every 10 steps) before the bad one
    monkeypatch.delenv("FEWSTEP_TEST_NAN_AT")
    cli(*args, "--resume")
    family = Family(out)
    ae = family.info.autoencoder
    assert ae["kind"] == "kl" and ae["scaling_factor"] != 1.0
    # the latents the diffusion saw have unit scale: the scale came from the data
    from training.config import DataConfig
    from training.data.imagefolder import ImageFolderDataset

    data = ImageFolderDataset(DataConfig(kind="imagefolder", root=str(emoji_folder / "train"), resolution=16, classes=False))
    with torch.no_grad():
        z = family.autoencoder.encode(data.images[:512])
    assert abs(float(z.mean())) < 0.1 and 0.9 < float(z.std()) < 1.1
    assert set(family.info.checkpoints) >= {"teacher", "stage1", "distilled-1", "distilled-4", "stochastic-4"}

    metrics = read_metrics(out)  # the run evaluated it
    assert metrics["conditioning"] == "free-text" and "top-5 retrieval" in metrics["adherence_measure"]
    trip = metrics["autoencoder_round_trip"]
    assert trip["fid"] is not None and trip["fid"] >= 0
    names = metrics["caption_names"]
    assert names["all"] > 1000 and 100 < names["held_out"] < names["all"] // 5
    rows = metrics["caption_retrieval"]
    real = next(r for r in rows if r["sampler"] == "real")
    # the evaluator finds the real images' own names far above chance (5 in ~1350)
    assert real["seen_top5"] > 0.05 and real["seen_top1"] <= real["seen_top5"]
    assert {r["sampler"] for r in rows} >= {"teacher-ddim", "distilled"} and all("held_out_top5" in r for r in rows)
    row = next(r for r in metrics["rows"] if r["sampler"] == "distilled" and r["steps"] == 4)
    assert row["adherence_top1"] is not None and row["adherence_top1"] <= row["adherence"]

    docs = tmp_path / "docs"
    cli("report", out, "--out", docs)
    text = (docs / "emoji.md").read_text()
    assert "autoencoder's own floor" in text and "seen vs held-out names" in text and "held-out top-5" in text
    assert "autoencoder round trip FID <= 25%" in text
    assert (docs / "emoji-guidance-strip.png").stat().st_size > 1000

    # shipped: a servable subset that names its data folder relatively, nowhere the absolute path it trained from
    shipped = tmp_path / "shipped"
    cli("export", out, "--to", shipped, "--keep", "distilled-4,distilled-1,stochastic-4", "--no-diffusers", "--data-root", "emoji/train")
    texts = [p.read_text() for p in shipped.rglob("*.json")]
    assert len(texts) >= 5 and not any(str(emoji_folder) in t for t in texts)
    assert json.loads((shipped / "family.json").read_text())["data"]["root"] == "emoji/train"
    assert (shipped / "autoencoder" / "model.safetensors").is_file()


def test_a_kl_autoencoder_from_another_config_is_not_reused(emoji_folder, tmp_path):
    out = tmp_path / "family"
    args = ["run", "emoji", "--data-dir", emoji_folder / "train", "--out", out, "--no-eval", *TINY, "--set", "teacher.steps=2", "--set", "stage1.steps=1", "--set", "distill.steps=1", "--set", "stochastic.steps=1", "--set", "autoencoder_train.steps=2"]
    cli(*args)
    meta = json.loads((out / "autoencoder" / "config.json").read_text())
    assert meta["autoencoder"]["block_out_channels"] == [8, 16]
    recipe = json.loads((out / "recipe.json").read_text())
    recipe["autoencoder"]["block_out_channels"] = [8, 8]
    (out / "recipe.json").write_text(json.dumps(recipe))  # as if the run had been started with another autoencoder
    other = [a.replace("[8, 16]", "[8, 8]") if isinstance(a, str) else a for a in args]
    proc = cli(*other, "--resume", check=False)
    assert proc.returncode == 2 and "another autoencoder config" in proc.stderr
