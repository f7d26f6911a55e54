"""Bring your own teacher: a class-conditional U-Net trained the diffusers way (DDPMScheduler,
epsilon prediction, linear betas, 1000 timesteps, label dropout), saved with save_pretrained,
then imported and distilled by `python -m training run quick --teacher DIR`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.conditioning import Cond
from model.family import Family
from model.guidance import clipped, gamma_conditioned, guided
from model.noise import SeededNoise
from model.samplers import sample_ddim
from model.schedule import time_grid
from training.data import build_dataset
from training.recipes import quick

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def cli(*args, check=True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "training", *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"training {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def train_diffusers_teacher(out: Path, steps: int = 700) -> Path:
    """A pipeline-style folder (unet/, scheduler/) trained with diffusers' own noising."""
    from diffusers import DDPMScheduler, UNet2DModel

    data = build_dataset(quick().data)
    k = data.num_classes
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=data.resolution, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8, num_class_embeds=k + 1)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        batch = data.batch(64, (5, step))
        labels = torch.where(torch.rand(64, generator=g) < 0.15, torch.full((64,), k), batch.labels)  # the null class k
        noise = torch.randn(batch.x.shape, generator=g)
        t = torch.randint(0, 1000, (64,), generator=g)
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(batch.x, noise, t), t, class_labels=labels).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    unet.register_to_config(null_class=k)
    unet.save_pretrained(out / "unet")
    scheduler.save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"]}))
    return out


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    root = tmp_path_factory.mktemp("byot")
    teacher = train_diffusers_teacher(root / "teacher")
    out = root / "family"
    cli("run", "quick", "--teacher", teacher, "--out", out, "--no-eval", "--set", "distill_start_steps=8", "--set", "stochastic_steps=[]",
        "--set", "stage1.steps=1500", "--set", "stage1.batch_size=32", "--set", "distill.steps=300", "--set", "distill.batch_size=32")
    return out


def _samples(denoise, steps: int, seeds: list[int], cond: Cond) -> torch.Tensor:
    noise = SeededNoise(seeds, "cpu")
    with torch.no_grad():
        return sample_ddim(clipped(denoise), noise.randn((3, 8, 8)), cond, grid=time_grid(steps), noise=noise)  # as the service samples pixels


_REFERENCES: dict = {}


def _reference(family: Family, gamma: float, seeds: list[int], cond: Cond) -> torch.Tensor:
    """The imported teacher's 256-step guided DDIM at gamma (computed once per gamma)."""
    if gamma not in _REFERENCES:
        _REFERENCES[gamma] = _samples(guided(family.model("teacher"), gamma), 256, seeds, cond)
    return _REFERENCES[gamma]


STAGE1_CEILING = pytest.mark.xfail(strict=True, reason="known gap: read as v, the stage-1 student of the imported epsilon teacher stays at RMSE "
                                   "~0.19 from the teacher's reference (its v output is relearned from the teacher's weights in 1500 steps); "
                                   "read as bounded epsilon it reaches 0.094, but rounds of 300 updates then add the error back; either way "
                                   "above the teacher's DDIM-4 and DDIM-8; docs/benchmarks/imported-teacher.md")


@pytest.mark.parametrize("n", [1, pytest.param(2, marks=STAGE1_CEILING), pytest.param(4, marks=STAGE1_CEILING)])
@pytest.mark.parametrize("gamma", [0.0, 1.0, 4.0])
def test_distilled_students_beat_the_teachers_ddim_at_twice_the_steps(distilled, gamma, n):
    family = Family(distilled, device="cpu")
    info = family.info
    # class labels only; inpainting by replacing the known region (an imported teacher has no context channels)
    assert info.text_encoder is None and info.inpainting and len(info.class_names) == build_dataset(quick().data).num_classes
    seeds = list(range(256))
    cond = Cond(labels=torch.tensor([s % len(info.class_names) for s in seeds]))
    reference = _reference(family, gamma, seeds, cond)
    student = _samples(gamma_conditioned(family.student(n), gamma), n, seeds, cond)
    ddim = _samples(guided(family.model("teacher"), gamma), 2 * n, seeds, cond)
    rmse_student = (student - reference).pow(2).mean().sqrt().item()
    rmse_ddim = (ddim - reference).pow(2).mean().sqrt().item()
    print(f"gamma={gamma} N={n}: distilled {rmse_student:.4f}, teacher DDIM-{2 * n} {rmse_ddim:.4f}")
    assert rmse_student < rmse_ddim, f"N={n} gamma={gamma}: distilled {rmse_student:.4f} vs teacher DDIM-{2 * n} {rmse_ddim:.4f}"


def _bad(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    return d


def _unet_folder(tmp_path: Path, name: str, **config) -> Path:
    from diffusers import DDPMScheduler, UNet2DModel

    d = _bad(tmp_path, name)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), **config)
    unet.save_pretrained(d / "unet")
    DDPMScheduler().save_pretrained(d / "scheduler")
    (d / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    return d


def test_bad_teachers_exit_2_with_a_clear_message_and_write_nothing(tmp_path):
    cases = []
    cases.append((_bad(tmp_path, "empty"), "not a diffusers pipeline"))
    no_unet = _bad(tmp_path, "no-unet")
    (no_unet / "model_index.json").write_text("{}")
    cases.append((no_unet, "no unet/"))
    cases.append((_unet_folder(tmp_path, "no-null", num_class_embeds=4), "without a null class cannot be guided"))
    unknown_pred = _unet_folder(tmp_path, "pred", num_class_embeds=4)
    (unknown_pred / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler", "prediction_type": "flow"}))
    cases.append((unknown_pred, "prediction_type 'flow'"))
    unknown_betas = _unet_folder(tmp_path, "betas", num_class_embeds=4)
    (unknown_betas / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler", "beta_schedule": "sigmoid"}))
    cases.append((unknown_betas, "beta_schedule 'sigmoid'"))
    text = _unet_folder(tmp_path, "text", num_class_embeds=4)
    index = json.loads((text / "model_index.json").read_text())
    (text / "model_index.json").write_text(json.dumps({**index, "tokenizer": ["transformers", "CLIPTokenizer"]}))
    cases.append((text, "tokenizer without a text encoder"))
    latent = _unet_folder(tmp_path, "latent", num_class_embeds=4)
    (latent / "vae").mkdir()
    cases.append((latent, "no vae/config.json"))
    for folder, needle in cases:
        out = tmp_path / f"out-{folder.name}"
        proc = cli("run", "quick", "--teacher", folder, "--out", out, "--no-eval", check=False)
        assert proc.returncode == 2, (folder.name, proc.stderr[-2000:])
        assert needle in proc.stderr and "Traceback" not in proc.stderr, (folder.name, proc.stderr[-2000:])
        assert not out.exists() or not any(out.iterdir()), f"{folder.name}: wrote {list(out.iterdir())}"
    shutil.rmtree(tmp_path / "empty")
