"""Bring your own teacher, latent and text-to-image: a tiny, randomly initialised pipeline of the
Stable Diffusion layout (AutoencoderKL, CLIPTextModel, CLIPTokenizer, UNet2DConditionModel with
cross-attention, an SD-style scheduler) saved with save_pretrained, imported, distilled (stage 1
and one round of stage 2), exported, and served by `python -m service`."""

from __future__ import annotations

import io
import json
import shutil
import string

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from model.family import Family
from service.testing import RedisServer, Service
from tests.training.test_diffusers_teacher import cli

pytestmark = pytest.mark.slow
SIDE = 16  # pixels; the latent is 8x8x4


def tiny_sd_pipeline(out, prediction_type: str = "epsilon"):
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    chars = string.ascii_lowercase + string.digits + ",.-'"
    vocab = ["<|startoftext|>", "<|endoftext|>"] + list(chars) + [c + "</w>" for c in chars]
    out.mkdir(parents=True)
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per character
    tokenizer = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                                                max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=SIDE)
    unet = UNet2DConditionModel(sample_size=SIDE // 2, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    scheduler = PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1, prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out / "pipeline", safe_serialization=True)
    return out / "pipeline"


@pytest.fixture(scope="module")
def sd_family(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    teacher = tiny_sd_pipeline(root / "teacher")
    run = root / "run"
    cli("run", "quick", "--teacher", teacher, "--out", run, "--no-eval", "--set", f"data.resolution={SIDE}", "--set", "data.classes=false",
        "--set", "distill_start_steps=2", "--set", "stochastic_steps=[]", "--set", "stage1.steps=6", "--set", "distill.steps=6",
        "--set", "stage1.batch_size=8", "--set", "distill.batch_size=8")
    family = root / "families" / "tiny-sd"
    cli("export", run, "--to", family, "--name", "tiny-sd")
    return teacher, run, family


def test_the_family_keeps_the_teachers_autoencoder_and_text_encoder(sd_family):
    teacher, run, family = sd_family
    fam = Family(family)
    info = fam.info
    assert info.family == "tiny-sd" and info.resolution == SIDE and info.text_encoder == "clip" and info.text_len == 32
    assert info.class_names == [] and info.inpainting and info.autoencoder["kind"] == "diffusers"
    assert sorted(info.checkpoints) == ["distilled-1", "stage1", "teacher"]
    # the family's autoencoder is the teacher's: the same latents, scaling_factor applied
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(teacher / "vae").eval()
    images = torch.rand(2, 3, SIDE, SIDE) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
        got = fam.autoencoder.encode(images)
    assert got.shape == (2, 4, SIDE // 2, SIDE // 2)
    assert torch.allclose(got, expected, atol=2e-2 * expected.abs().max().item())  # fp16 export
    # the unconditional branch is the teacher's own encoding of the empty prompt
    from model.clip_text_encoder import ClipTextEncoder

    null = fam.model("teacher").backbone.null_text[0]
    assert torch.allclose(null.float(), ClipTextEncoder(teacher, max_length=32).encode_all([""])[0], atol=1e-2)


def test_the_imported_teacher_is_the_diffusers_unet_on_its_own_schedule(sd_family):
    """The teacher's x_hat equals what diffusers computes from the U-Net's epsilon at the same
    (integer) timestep with the pipeline's own encoder_hidden_states."""
    from diffusers import UNet2DConditionModel

    from model.clip_text_encoder import ClipTextEncoder
    from model.conditioning import Cond
    from model import discrete_schedule as ds

    teacher, run, _ = sd_family
    unet = UNet2DConditionModel.from_pretrained(teacher / "unet").eval()
    fam = Family(run)
    model = fam.model("teacher")
    sched = ds.from_scheduler_config(json.loads((teacher / "scheduler" / "scheduler_config.json").read_text()))
    encoder = ClipTextEncoder(teacher, max_length=32)
    states, mask = encoder(["a red circle", ""])
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    t = ds.time_of_logsnr(sched.logsnr[[500, 500]]).float()  # fewstep's time of the teacher's timestep 500
    tau = ds.timestep(sched, t)
    assert torch.allclose(tau, torch.full_like(tau, 500.0), atol=1e-2)
    alpha, sigma = (v.float() for v in ds.signal_scales(sched, tau))
    with torch.no_grad():
        x_hat = model(z, t, Cond(text=states, text_mask=mask))
        hidden = encoder.encode_all(["a red circle", ""])
        eps = unet(z, tau.float(), encoder_hidden_states=hidden).sample
    expected = (z - sigma.view(-1, 1, 1, 1) * eps) / alpha.view(-1, 1, 1, 1)
    assert torch.allclose(x_hat, expected, atol=1e-3 * expected.abs().max().item())


def test_the_service_serves_txt2img_img2img_and_inpaint_at_the_familys_resolution(sd_family, tmp_path):
    _, _, family = sd_family
    redis = RedisServer()
    service = Service(redis.url, log_dir=tmp_path, models_dir=str(family.parent), default_model="tiny-sd")
    try:
        models = httpx.get(service.url + "/v1/models").json()["data"]
        tiny = next(m for m in models if m["id"] == "tiny-sd")
        assert set(tiny["conditioning"]) == {"text", "img2img", "inpaint"} and tiny["steps"] == [1]

        def post(path, **body):
            r = httpx.post(service.url + path, json={"model": "tiny-sd", "steps": 1, "seed": 7, **body}, timeout=120)
            assert r.status_code == 200, r.text
            return [np.asarray(Image.open(io.BytesIO(__import__("base64").b64decode(im)))) for im in r.json()["images"]]

        a = post("/v1/txt2img", prompt="a red circle", guidance=2.0)[0]
        assert a.shape == (SIDE, SIDE, 3)
        assert np.array_equal(a, post("/v1/txt2img", prompt="a red circle", guidance=2.0)[0])  # same seed, same pixels
        assert not np.array_equal(a, post("/v1/txt2img", prompt="a blue square", guidance=2.0)[0])  # the prompt reaches the U-Net
        source = np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        png = io.BytesIO()
        Image.fromarray(source).save(png, format="PNG")
        image = __import__("base64").b64encode(png.getvalue()).decode()
        edited = post("/v1/img2img", prompt="a red circle", image=image, strength=0.5)[0]
        assert edited.shape == (SIDE, SIDE, 3)
        mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
        mask[4:12, 4:12] = 255
        mpng = io.BytesIO()
        Image.fromarray(mask).save(mpng, format="PNG")
        painted = post("/v1/inpaint", prompt="a red circle", image=image, mask=__import__("base64").b64encode(mpng.getvalue()).decode())[0]
        keep = mask == 0
        assert np.array_equal(painted[keep], source[keep])  # the unmasked pixels come back exactly
        assert not np.array_equal(painted[~keep], source[~keep])
        r = httpx.post(service.url + "/v1/txt2img", json={"model": "tiny-sd", "class_label": 0, "steps": 1}, timeout=30)
        assert r.status_code == 422 and "class" in r.text
        # prompts are counted in the teacher's own tokenizer (one token per character here), not cut
        r = httpx.post(service.url + "/v1/txt2img", json={"model": "tiny-sd", "prompt": "a red circle on a grey ground", "steps": 1}, timeout=30)
        assert r.status_code == 200, r.text
        r = httpx.post(service.url + "/v1/txt2img", json={"model": "tiny-sd", "prompt": "a red circle on a grey background at the top", "steps": 1}, timeout=30)
        assert r.status_code == 422 and "37 tokens long" in r.text and "at most 32" in r.text, r.text
    finally:
        service.stop()
        redis.stop()


def test_a_text_teacher_without_its_tokenizer_exits_2_and_writes_nothing(sd_family, tmp_path):
    teacher, _, _ = sd_family
    broken = tmp_path / "no-tokenizer"
    shutil.copytree(teacher, broken)
    shutil.rmtree(broken / "tokenizer")
    index = json.loads((broken / "model_index.json").read_text())
    index.pop("tokenizer")
    (broken / "model_index.json").write_text(json.dumps(index))
    out = tmp_path / "out"
    proc = cli("run", "quick", "--teacher", broken, "--out", out, "--no-eval", "--set", f"data.resolution={SIDE}", check=False)
    assert proc.returncode == 2 and "without its tokenizer" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not out.exists() or not any(out.iterdir())


def test_export_writes_the_students_unets_in_the_diffusers_layout(sd_family):
    """`UNet2DConditionModel.from_pretrained` loads the exported student; driven as its README
    says (gamma through added_cond_kwargs, the grid of fewstep.json), it predicts what the
    family's student predicts."""
    from diffusers import UNet2DConditionModel

    from model.clip_text_encoder import ClipTextEncoder
    from model.conditioning import Cond

    teacher, _, family = sd_family
    folder = family / "diffusers" / "distilled-1"
    unet = UNet2DConditionModel.from_pretrained(folder).float().eval()
    info = json.loads((folder / "fewstep.json").read_text())
    assert info["steps"] == 1 and info["prediction_type"] == "v_prediction" and "gamma" in (folder / "README.md").read_text()
    student = Family(family).student(1)
    encoder = ClipTextEncoder(teacher, max_length=32)
    hidden = encoder.encode_all(["a red circle", "a blue square"])
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    gamma = torch.tensor([0.0, 3.0])
    top = info["grid"][-1]
    with torch.no_grad():
        states, mask = encoder(["a red circle", "a blue square"])
        ours = student(z, torch.ones(2), Cond(text=states, text_mask=mask), gamma)
        out = unet(z, torch.full((2,), top["timestep"]), encoder_hidden_states=hidden,
                   added_cond_kwargs={"text_embeds": z.new_zeros(2, 0), "time_ids": gamma[:, None] * info["gamma_scale"]}).sample
    theirs = top["unet_alpha"] * z - top["unet_sigma"] * out
    assert torch.allclose(ours, theirs, atol=1e-3 * ours.abs().max().item() + 1e-4), (ours - theirs).abs().max()
    assert not torch.allclose(theirs[0], theirs[1])


def test_the_exported_gamma_input_is_the_students_own(sd_family, tmp_path):
    """With a gamma MLP far from zero (a briefly trained student's is nearly zero), the exported
    U-Net follows gamma exactly as the student does."""
    from diffusers import UNet2DConditionModel

    from model.conditioning import Cond
    from training.diffusers_export import write_diffusers_unet

    _, run, _ = sd_family
    student = Family(run).student(1)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in student.backbone.gamma_branch().parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    assert write_diffusers_unet(student, tmp_path / "u", steps=1, guidance_range=(0.0, 4.0)) is None
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "u").float().eval()
    info = json.loads((tmp_path / "u" / "fewstep.json").read_text())
    top = info["grid"][-1]
    z = torch.randn(3, 4, 8, 8, generator=g)
    hidden = torch.randn(3, 32, 32, generator=g)
    gamma = torch.tensor([0.0, 1.5, 4.0])
    with torch.no_grad():
        ours = student(z, torch.ones(3), Cond(text=hidden, text_mask=torch.ones(3, 32, dtype=torch.bool)), gamma)
        out = unet(z, torch.full((3,), top["timestep"]), encoder_hidden_states=hidden,
                   added_cond_kwargs={"text_embeds": z.new_zeros(3, 0), "time_ids": gamma[:, None] * info["gamma_scale"]}).sample
    theirs = top["unet_alpha"] * z - top["unet_sigma"] * out
    assert torch.allclose(ours, theirs, atol=1e-4 * ours.abs().max().item() + 1e-5), (ours - theirs).abs().max()
    with torch.no_grad():
        same = student(z, torch.ones(3), Cond(text=hidden, text_mask=torch.ones(3, 32, dtype=torch.bool)), torch.zeros(3))
    assert (ours - same)[1:].abs().max() > 1e-2  # gamma moves the prediction, and the export follows it


def test_the_sd_recipe_dry_runs_against_a_tiny_pipeline_of_the_same_layout(sd_family, tmp_path):
    """The GPU recipe cannot train here; --dry-run imports the teacher, runs one stage-1 loss with
    its backward pass and one stage-2 loss under the recipe's bf16 autocast and gradient
    checkpointing, prints the plan, and writes nothing."""
    from tests.training.test_cli_errors import make_folder

    teacher, _, _ = sd_family
    data = make_folder(tmp_path / "captioned", n=6)
    out = tmp_path / "out"
    proc = cli("run", "sd", "--teacher", teacher, "--data-dir", data, "--out", out, "--dry-run", "--set", f"data.resolution={SIDE}", "--set", "data.prefetch=0")
    recipe = json.loads(proc.stdout[: proc.stdout.index("[dry-run]")])
    assert recipe["mixed_precision"] == "bf16" and recipe["gradient_checkpointing"] and recipe["guidance_range"] == [2.0, 14.0]
    assert "[dry-run] stage1: 3000 steps x batch 512" in proc.stdout and "[dry-run] distilled-1: 20000 steps" in proc.stdout
    assert "[dry-run] ok: nothing was written" in proc.stdout and not out.exists()
    proc = cli("run", "sd", "--data-dir", data, "--out", out, "--dry-run", check=False)
    assert proc.returncode == 2 and "--teacher" in proc.stderr and "Traceback" not in proc.stderr


def test_the_imported_text_family_is_evaluated_by_prompt(sd_family, tmp_path):
    _, run, _ = sd_family
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cli("evaluate", copy, "--samples", "16", "--repeats", "2")
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["conditioning"] == "text"  # short prompts (its data can write them), not class labels
    samplers = {(r["sampler"], r["steps"]) for r in metrics["rows"]}
    assert {("teacher-ddim", 256), ("stage1", 16), ("distilled", 1)} <= samplers
    assert all(r["fid"] is not None and r["adherence"] is not None for r in metrics["rows"])
    assert metrics["edits"]["inpaint"][0]["kept_max_abs_diff"] == 0.0
    # students only, the teacher's rows taken from that evaluation (the teacher is unchanged)
    cli("evaluate", copy, "--samples", "16", "--repeats", "2", "--fresh", "--reuse-teacher-rows")
    again = json.loads((copy / "metrics.json").read_text())
    teacher_rows = [r for r in metrics["rows"] if r["sampler"].startswith("teacher")]
    assert [r for r in again["rows"] if r["sampler"].startswith("teacher")] == teacher_rows and again["teacher_rows_from"]
    students = [r for r in again["rows"] if not r["sampler"].startswith("teacher")]
    assert students and all(r["fid"] is not None and r["rmse_to_reference"] is None for r in students)
    first = {(r["sampler"], r["steps"], r["guidance"]): r["fid"] for r in metrics["rows"]}
    assert all(abs(r["fid"] - first[(r["sampler"], r["steps"], r["guidance"])]) < 1e-6 for r in students)  # same seeds, same samples
    proc = cli("evaluate", copy, "--samples", "8", "--repeats", "2", "--fresh", "--reuse-teacher-rows", check=False)
    assert proc.returncode == 2 and "16 samples" in proc.stderr and "Traceback" not in proc.stderr
