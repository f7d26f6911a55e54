"""Typed recipe configs. The resolved recipe is saved as recipe.json in the output directory
and beside every checkpoint; `--set key=value` overrides any field from the command line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from model.autoencoder import AutoencoderConfig
from model.config_io import ConfigError, from_dict, to_dict
from model.networks import GAMMA_EXTRAPOLATE, GAMMA_PATHWAYS


@dataclass(frozen=True)
class DataConfig:
    kind: str = "shapes"  # toy2d | shapes | imagefolder
    resolution: int = 16
    root: str | None = None  # imagefolder directory
    seed: int = 0
    classes: bool = True  # condition on class labels when the data has them
    text: bool = True  # condition on captions when the data has them
    inpaint_prob: float = 0.3  # share of training samples with a random inpainting mask
    prefetch: int = 0  # batches drawn ahead by a background thread (0: none; GPU recipes use 2); exact either way


@dataclass(frozen=True)
class StageConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-4
    gamma_lr: float | None = None  # learning rate of the gamma branch (None: lr); it starts at zero and must grow fast
    lr_schedule: str = "constant"  # after warmup: "constant", or "linear" decay to zero at the last step
    ema_decay: float = 0.999  # 0: no EMA (the trained weights are the result)
    warmup: int = 100
    grad_clip: float = 1.0
    save_every_s: float = 60.0  # resumable state at most this often (and at the end)
    sync_every: int = 10  # steps between the ranks' collective checks (stop, non-finite loss, save, logged loss): one host sync each

    def __post_init__(self):
        if self.lr_schedule not in ("constant", "linear"):
            raise ConfigError(f"lr_schedule must be 'constant' or 'linear', got {self.lr_schedule!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.sync_every < 1:
            raise ConfigError(f"sync_every must be >= 1, got {self.sync_every}")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")

    def lr_at(self, step: int, base: float) -> float:
        """Learning rate at optimizer step `step` (0-based) for a group whose peak is `base`."""
        warm = min(1.0, (step + 1) / max(1, self.warmup))
        if self.lr_schedule == "linear" and step >= self.warmup:
            warm = max(0.0, (self.steps - step) / max(1, self.steps - self.warmup))
        return base * warm


@dataclass(frozen=True)
class EvalConfig:
    samples: int = 1024  # per row (sampler, steps, gamma) and seed set
    batch_size: int = 256
    guidance: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    teacher_steps: tuple[int, ...] = (1, 2, 4, 8, 16)
    dpm_steps: tuple[int, ...] = (4, 8)
    reference_steps: int = 128
    stage1_steps: int = 64  # the stage-1 student's own DDIM: the ceiling of the distilled students (0: no row)
    repeats: int = 3  # independent seed sets per row: the spread is their std (ddof = 1)
    students: tuple[int, ...] = ()  # step counts of the students evaluated, deterministic and stochastic (empty: every one)
    evaluator_steps: int = 600  # training steps of the feature/attribute network

    def __post_init__(self):
        if self.samples < 2 or self.batch_size < 1 or self.repeats < 1 or self.reference_steps < 1:
            raise ConfigError(f"evaluation needs samples >= 2, batch_size >= 1, repeats >= 1 and reference_steps >= 1, got {self.samples}, "
                              f"{self.batch_size}, {self.repeats} and {self.reference_steps}")
        if self.stage1_steps < 0 or self.evaluator_steps < 0 or any(n < 1 for n in (*self.teacher_steps, *self.dpm_steps, *self.students)):
            raise ConfigError("evaluation: step counts must be >= 1 (stage1_steps and evaluator_steps >= 0)")


@dataclass(frozen=True)
class Recipe:
    name: str
    data: DataConfig = field(default_factory=DataConfig)
    network: dict = field(default_factory=dict)  # backbone fields; data-dependent ones are filled in
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    autoencoder_train: StageConfig = field(default_factory=StageConfig)  # autoencoder.kind "kl": its first stage (training/autoencoder_stage.py)
    kl_weight: float = 1e-6  # that stage's KL term, against the reconstruction's MSE + L1
    guidance_range: tuple[float, float] = (0.0, 4.0)
    gamma_embed_dim: int = 32
    gamma_pathway: str = "embedding"  # where gamma enters the student (model/networks.py)
    gamma_scale: float = 1.0  # gamma's Fourier features are taken of gamma * gamma_scale
    gamma_extrapolate: tuple[str, ...] = ()  # "class", "text": conditions pushed from the null one by gamma (model/networks.py)
    weighting: str = "snr+1"  # x-MSE weighting: "snr+1" (= v-MSE) or "truncated-snr"
    p_uncond: float = 0.1  # teacher: drop the whole condition (the null branch of CFG)
    p_drop_each: float = 0.3  # teacher: drop class or caption alone, so either serves on its own
    teacher: StageConfig = field(default_factory=StageConfig)
    stage1: StageConfig = field(default_factory=StageConfig)
    distill: StageConfig = field(default_factory=StageConfig)
    distill_start_steps: int = 64  # N_0: the stage-1 student's DDIM steps, the first round's teacher
    final_rounds_scale: float = 1.0  # rounds with N <= 4 train this many times longer (the paper uses more)
    stochastic: StageConfig = field(default_factory=StageConfig)
    stochastic_steps: tuple[int, ...] = (8, 4, 2)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    mixed_precision: str = "no"  # "bf16": autocast around the networks only; targets and losses stay fp32 (training/precision.py)
    gradient_checkpointing: bool = False  # recompute U-Net activations in the backward pass (less memory)
    teacher_dir: str | None = None  # a diffusers folder to distil instead of training a teacher (training/teachers.py)
    teacher_required: bool = False  # the recipe distils an existing teacher only (it cannot train one): --teacher is needed
    teacher_null_class: int | None = None  # its class id of the unconditional branch, when its config does not say
    student_prediction: str = "v_prediction"  # how an imported teacher's students read their output ("teacher": as it does)
    student_alpha_floor: float = 0.05  # of the "bounded_epsilon" reading: exact epsilon where alpha >= this (model/discrete_schedule.py)
    seed: int = 0

    def __post_init__(self):
        n0 = self.distill_start_steps
        if n0 < 2 or n0 & (n0 - 1):
            raise ConfigError(f"distill_start_steps must be a power of two >= 2, got {n0}")
        for n in self.stochastic_steps:
            if n < 2 or n not in self.student_steps:
                raise ConfigError(f"stochastic_steps: {n} needs deterministic students for {n} and {n // 2} steps (have {self.student_steps})")
        lo, hi = self.guidance_range
        if not -1.0 <= lo <= hi:
            raise ConfigError(f"guidance_range must satisfy -1 <= min <= max, got {self.guidance_range}")
        if self.gamma_pathway not in GAMMA_PATHWAYS:
            raise ConfigError(f"gamma_pathway must be one of {GAMMA_PATHWAYS}, got {self.gamma_pathway!r}")
        if not self.gamma_scale > 0:
            raise ConfigError(f"gamma_scale must be > 0, got {self.gamma_scale}")
        if set(self.gamma_extrapolate) - set(GAMMA_EXTRAPOLATE):
            raise ConfigError(f"gamma_extrapolate may hold {GAMMA_EXTRAPOLATE}, got {list(self.gamma_extrapolate)}")
        if self.mixed_precision not in ("no", "bf16"):
            raise ConfigError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        if self.autoencoder.kind == "kl" and self.data.kind == "toy2d":
            raise ConfigError("autoencoder.kind 'kl' encodes images; the toy2d data are points (leave autoencoder.kind 'identity')")
        if not self.kl_weight >= 0:
            raise ConfigError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if self.student_prediction not in ("teacher", "epsilon", "v_prediction", "sample", "bounded_epsilon"):
            raise ConfigError(f"student_prediction must be 'teacher', 'epsilon', 'v_prediction', 'sample' or 'bounded_epsilon', got {self.student_prediction!r}")
        if self.weighting not in ("snr+1", "truncated-snr"):
            raise ConfigError(f"weighting must be 'snr+1' or 'truncated-snr', got {self.weighting!r}")

    @property
    def student_steps(self) -> tuple[int, ...]:
        """Step counts of the stage-2 students, N_0/2 down to 1."""
        out, n = [], self.distill_start_steps // 2
        while n >= 1:
            out.append(n)
            n //= 2
        return tuple(out)

    def to_json(self) -> str:
        return json.dumps(to_dict(self), indent=2) + "\n"

    @staticmethod
    def from_json(text: str) -> "Recipe":
        return from_dict(Recipe, json.loads(text), "recipe")


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """Apply `a.b.c=value` overrides (values parsed as JSON when they parse, else strings)."""
    data = to_dict(recipe)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        node, parts = data, key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section of the recipe")
            node = node[p]
        if parts[-1] not in node and not (isinstance(node, dict) and key.startswith("network.")):
            raise ConfigError(f"--set {key}: unknown field {parts[-1]!r}")
        parsed = parse_value(value)
        node[parts[-1]] = value if isinstance(node.get(parts[-1]), str) and not isinstance(parsed, str) else parsed  # --set name=2024: text
    return from_dict(Recipe, data, "recipe")

