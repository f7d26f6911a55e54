"""Named recipes. Sizes come from step times measured on a 2-core CPU (README, "Sizing"):
a 1.2M-parameter U-Net at 16x16 trains at ~0.35 s per batch-64 step, a distillation step
(student update + two teacher passes) costs ~0.5 s."""

from __future__ import annotations

from model.autoencoder import AutoencoderConfig
from model.config_io import ConfigError

from .config import DataConfig, EvalConfig, Recipe, StageConfig


def toy2d() -> Recipe:
    """2-D Gaussian mixture, MLP denoiser: the whole chain and evaluation in ~2 minutes on 2 cores."""
    stage = StageConfig(steps=500, batch_size=512, lr=1e-3, ema_decay=0.995, warmup=50, save_every_s=30)
    return Recipe(
        name="toy2d",
        data=DataConfig(kind="toy2d", resolution=0),
        network={"kind": "mlp", "hidden": 128, "depth": 3},
        gamma_embed_dim=16,
        p_uncond=0.15,
        p_drop_each=0.0,
        teacher=StageConfig(steps=2000, batch_size=512, lr=2e-3, ema_decay=0.998, warmup=100, save_every_s=30),
        stage1=StageConfig(steps=800, batch_size=512, lr=5e-4, gamma_lr=3e-3, ema_decay=0.995, warmup=50, save_every_s=30),
        distill=stage,
        distill_start_steps=64,
        stochastic=stage,
        stochastic_steps=(8, 4, 2),
        evaluation=EvalConfig(samples=2000, batch_size=4000, guidance=(0.0, 1.0, 4.0), teacher_steps=(1, 2, 4, 8, 16, 64), dpm_steps=(4, 8, 16), reference_steps=256, repeats=2, evaluator_steps=0),
    )


def quick() -> Recipe:
    """Tiny images, tiny U-Net, a few dozen steps per stage: the whole chain (class, text and
    inpainting conditioning; every student) in a few minutes. Tests and service development use it."""
    stage = StageConfig(steps=30, batch_size=16, lr=5e-4, ema_decay=0.9, warmup=5, save_every_s=2)
    return Recipe(
        name="quick",
        data=DataConfig(kind="shapes", resolution=8),
        network={"kind": "unet", "block_out_channels": [16, 32], "attention_levels": [False, True], "layers_per_block": 1, "attention_head_dim": 8, "norm_num_groups": 8},
        gamma_embed_dim=16,
        teacher=StageConfig(steps=80, batch_size=32, lr=1e-3, ema_decay=0.9, warmup=5, save_every_s=2),
        stage1=StageConfig(steps=30, batch_size=16, lr=5e-4, gamma_lr=3e-3, ema_decay=0.9, warmup=5, save_every_s=2),
        gamma_extrapolate=("class", "text"),
        distill=stage,
        distill_start_steps=16,
        stochastic=stage,
        stochastic_steps=(8, 4, 2),
        evaluation=EvalConfig(samples=32, batch_size=64, guidance=(0.0, 1.0), teacher_steps=(1, 2, 4, 8), dpm_steps=(4,), reference_steps=256, stage1_steps=16, repeats=2, evaluator_steps=40),
    )


def shapes() -> Recipe:
    """The built-in family: 16x16 shapes, class + text + inpainting, N_0 = 16 down to 1 step.
    From a teacher of 5000 steps, the distillation is sized for about 2 hours on 2 cores at
    ~1.35 s per distillation step (two teacher passes and a student update, batch 64):
    stage 1 2000 steps, four rounds x 400, stochastic 3 x 250. Gamma enters through its own
    MLP (own learning rate) and pushes the class and text conditions from the null one
    (docs/design.md, "Where gamma enters"); the rounds anneal the learning rate linearly to
    zero without EMA, as Salimans & Ho's released setup."""
    distill = StageConfig(steps=400, batch_size=64, lr=1e-4, lr_schedule="linear", ema_decay=0.0, warmup=50, save_every_s=120)
    return Recipe(
        name="shapes",
        data=DataConfig(kind="shapes", resolution=16),
        network={"kind": "unet", "block_out_channels": [32, 64], "attention_levels": [False, True], "layers_per_block": 1, "attention_head_dim": 8, "norm_num_groups": 8},
        teacher=StageConfig(steps=5000, batch_size=64, lr=3e-4, ema_decay=0.9995, warmup=200, save_every_s=120),
        stage1=StageConfig(steps=2000, batch_size=64, lr=2e-4, gamma_lr=3e-3, lr_schedule="linear", ema_decay=0.0, warmup=50, save_every_s=120),
        gamma_extrapolate=("class", "text"),
        distill=distill,
        distill_start_steps=16,
        stochastic=StageConfig(steps=250, batch_size=64, lr=1e-4, lr_schedule="linear", ema_decay=0.0, warmup=50, save_every_s=120),
        # ~230 network evaluations per (sample, gamma): 1024 samples x 3 seed sets x 4 gammas in ~90 min on 2 cores
        evaluation=EvalConfig(samples=1024, batch_size=256, repeats=3, reference_steps=64, teacher_steps=(1, 2, 4, 8), dpm_steps=(4,), stage1_steps=32, evaluator_steps=600),
    )


def emoji() -> Recipe:
    """The built-in text-to-image family: 64x64 colour emoji (`python -m training data emoji`),
    in the 8x8x4 latent space of an AutoencoderKL trained first (downsampling 8, 0.98M
    parameters), a 4.6M-parameter text U-Net on the latents (MiniLM captions, inpainting
    context), N_0 = 16 down to 1 step. Measured on 2 CPU cores: autoencoder 600 steps at
    1.4 s, teacher 2400 at 0.64 s, stage 1 800 at 0.95 s, four rounds of 250 and three
    stochastic students of 120 at ~1 s: about 80 minutes in all.

        python -m training data emoji --out EMOJI
        python -m training run emoji --data-dir EMOJI/train --out OUT"""
    distill = StageConfig(steps=250, batch_size=64, lr=1e-4, lr_schedule="linear", ema_decay=0.0, warmup=25, save_every_s=120)
    return Recipe(
        name="emoji",
        data=DataConfig(kind="imagefolder", resolution=64, classes=False),
        autoencoder=AutoencoderConfig(kind="kl", latent_channels=4, downsample=8, block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=8),
        autoencoder_train=StageConfig(steps=600, batch_size=32, lr=1e-3, ema_decay=0.995, warmup=50, save_every_s=120),
        network={"kind": "unet", "block_out_channels": [32, 64, 128], "attention_levels": [False, True, True], "layers_per_block": 1, "attention_head_dim": 16, "norm_num_groups": 16},
        teacher=StageConfig(steps=2400, batch_size=64, lr=4e-4, ema_decay=0.999, warmup=100, save_every_s=120),
        stage1=StageConfig(steps=800, batch_size=64, lr=2e-4, gamma_lr=3e-3, lr_schedule="linear", ema_decay=0.0, warmup=50, save_every_s=120),
        gamma_extrapolate=("text",),
        distill=distill,
        distill_start_steps=16,
        stochastic=StageConfig(steps=120, batch_size=64, lr=1e-4, lr_schedule="linear", ema_decay=0.0, warmup=20, save_every_s=120),
        # ~85 network evaluations and 7 decodings per (sample, gamma): 1024 samples x 3 seed sets x 3 gammas in ~45 min on 2 cores
        evaluation=EvalConfig(samples=1024, batch_size=256, guidance=(0.0, 1.0, 4.0), repeats=3, reference_steps=16, teacher_steps=(4,), dpm_steps=(4,), stage1_steps=16, students=(4, 2, 1), evaluator_steps=600),
    )


def shapes_gpu() -> Recipe:
    """GPU-sized: 32x32 shapes, a wider U-Net, N_0 = 128; about 10 minutes on one H100."""
    distill = StageConfig(steps=3000, batch_size=256, lr=1e-4, lr_schedule="linear", ema_decay=0.0, warmup=100, save_every_s=120)
    return Recipe(
        name="shapes-gpu",
        data=DataConfig(kind="shapes", resolution=32, prefetch=2),
        network={"kind": "unet", "block_out_channels": [64, 128, 128], "attention_levels": [False, True, True], "layers_per_block": 2, "attention_head_dim": 16, "norm_num_groups": 16},
        teacher=StageConfig(steps=20000, batch_size=256, lr=3e-4, ema_decay=0.9999, warmup=500, save_every_s=120),
        stage1=StageConfig(steps=6000, batch_size=256, lr=2e-4, gamma_lr=3e-3, lr_schedule="linear", ema_decay=0.0, warmup=100, save_every_s=120),
        gamma_extrapolate=("class", "text"),
        distill=distill,
        distill_start_steps=128,
        final_rounds_scale=2.0,
        stochastic=distill,
        evaluation=EvalConfig(samples=2048, batch_size=1024, repeats=3, reference_steps=256, evaluator_steps=2000),
    )


def sd() -> Recipe:
    """Stable Diffusion 1.x/2.x-style pipelines (512 px, latent 64x64, CLIP text), distilled as
    Meng et al. 2023 did for text-to-image (section 4.2.2): gamma in [2, 14], a global batch of
    512, stage 1 3,000 updates, stage 2 2,000 updates a round and 20,000 for the 4-, 2- and
    1-step rounds, from N_0 = 256 steps; bf16 autocast, gradient checkpointing, DDP across
    the GPUs of `torchrun --nproc_per_node=K`, resumable with --resume.

        torchrun --nproc_per_node=8 -m training run sd --teacher PIPELINE --data-dir CAPTIONED_IMAGES --out OUT

    It needs the teacher (`--teacher`, a pipeline folder with safetensors weights) and a folder
    of captioned 512x512 images. Expected cost (estimated, not measured here): ~115,000 updates
    (73,000 for stage 1 and the deterministic rounds, 42,000 for the stochastic students), each
    about five U-Net passes per sample at 64x64 latents; at ~8 ms per pass and sample in bf16
    on an A100, some 2.5 s per update on 8 GPUs, about 3-4 days (~700 GPU-hours). Check
    a setup first with --dry-run (training/cli.py), which imports the teacher, runs one
    stage-1 and one stage-2 loss on two images, and prints the plan."""
    rounds = StageConfig(steps=2000, batch_size=512, lr=1e-5, lr_schedule="linear", ema_decay=0.0, warmup=100, save_every_s=600)
    return Recipe(
        name="sd",
        data=DataConfig(kind="imagefolder", resolution=512, classes=False, inpaint_prob=0.0, prefetch=2),
        teacher_required=True,
        student_prediction="v_prediction",
        guidance_range=(2.0, 14.0),
        gamma_embed_dim=256,
        stage1=StageConfig(steps=3000, batch_size=512, lr=1e-5, gamma_lr=1e-4, lr_schedule="linear", ema_decay=0.0, warmup=100, save_every_s=600),
        distill=rounds,
        distill_start_steps=256,
        final_rounds_scale=10.0,
        stochastic=rounds,
        stochastic_steps=(8, 4, 2),
        mixed_precision="bf16",
        gradient_checkpointing=True,
        evaluation=EvalConfig(samples=2048, batch_size=64, guidance=(2.0, 4.0, 8.0, 14.0), teacher_steps=(1, 2, 4, 8, 16), dpm_steps=(4, 8), reference_steps=256, stage1_steps=64, repeats=3, evaluator_steps=4000),
    )


RECIPES = {"toy2d": toy2d, "quick": quick, "shapes": shapes, "emoji": emoji, "shapes-gpu": shapes_gpu, "sd": sd}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; available: {', '.join(RECIPES)}")
    return RECIPES[name]()
