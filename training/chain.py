"""The whole recipe as a chain of resumable stages: teacher -> stage 1 -> stage 2 rounds -> stochastic.

Each stage writes its checkpoint atomically when it finishes and is skipped on --resume
once its checkpoint exists; a stage that was killed resumes from its training state in
OUT/.state/<stage>. family.json lists the finished checkpoints after every stage.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path

import torch

from model.autoencoder import AutoencoderConfig, build_autoencoder
from model.checkpoint import CheckpointError, load_checkpoint, load_tensors, save_checkpoint
from model.config_io import ConfigError, from_dict, to_dict
from model.denoiser import Denoiser, gamma_student_from_teacher
from model.manifest import FamilyInfo, write_family
from model.checkpoint import save_tensors
from model.text_encoder import CLIP_ENCODER, ENCODER_NAME

from .autoencoder_stage import autoencoder_loss, latent_statistics, scaled_config
from .config import Recipe, StageConfig
from .data import build_dataset, step_generator
from .distributed import DistEnv
from .loop import train
from .losses import device_generator, distill_loss, stage1_loss, teacher_loss
from .precision import enable_gradient_checkpointing, wrapper
from .prefetch import Prefetcher, batch_seed
from .prepare import Preparer
from .response import gamma_response, response_times

TEXT_LEN = 16


def resolve_network(recipe: Recipe, dataset, preparer: Preparer) -> dict:
    """The recipe's backbone fields plus what the data decides (channels, classes, text, inpainting)."""
    net = dict(recipe.network)
    kind = net.get("kind", "unet")
    net["kind"] = kind
    net["num_classes"] = dataset.num_classes
    if kind == "mlp":
        net["channels"] = dataset.channels
        return net
    ae = recipe.autoencoder
    net["channels"] = ae.latent_channels
    net["resolution"] = dataset.resolution // ae.downsample
    net["context_channels"] = ae.latent_channels + 1 if dataset.has_inpainting else 0
    net["text_dim"] = preparer.text_dim
    net["text_len"] = TEXT_LEN
    return net


def family_info(recipe: Recipe, dataset, checkpoints: dict, imported=None) -> FamilyInfo:
    """The manifest; an imported teacher (training/teachers.py) decides the conditioning: its
    classes or its own text encoder, and inpainting by replacement (it has no context channels)."""
    if imported is not None:
        classes = list(dataset.class_names) if imported.num_classes else []
        text, text_len = (CLIP_ENCODER, imported.text_len) if imported.text_dir else (None, TEXT_LEN)
        inpainting = bool(dataset.resolution)
    else:
        classes = list(dataset.class_names) if dataset.num_classes else []
        text, text_len = (ENCODER_NAME if dataset.has_text else None), TEXT_LEN
        inpainting = bool(dataset.has_inpainting and dataset.resolution)
    return FamilyInfo(
        family=recipe.name,
        resolution=dataset.resolution,
        channels=dataset.channels,
        class_names=classes,
        text_encoder=text,
        text_len=text_len,
        inpainting=inpainting,
        guidance_range=tuple(recipe.guidance_range),
        autoencoder=to_dict(recipe.autoencoder),
        checkpoints=checkpoints,
        data=to_dict(recipe.data),
    )


class Chain:
    def __init__(self, recipe: Recipe, out: Path, env: DistEnv):
        self.recipe, self.out, self.env = recipe, Path(out), env
        if recipe.teacher_required and not recipe.teacher_dir:
            raise ConfigError(f"recipe {recipe.name!r} distils an existing teacher and cannot train one: give it with --teacher DIR (a diffusers pipeline folder)")
        self.dataset = build_dataset(recipe.data)
        self.imported = self._import_teacher() if recipe.teacher_dir else None
        text_encoder = "builtin"
        if self.imported is not None:  # its own autoencoder and text encoder, or none
            if self.imported.autoencoder is not None:
                recipe = self.recipe = dataclasses.replace(recipe, autoencoder=self.imported.autoencoder)
            text_encoder = self._teacher_text_encoder()
        self.autoencoder = build_autoencoder(recipe.autoencoder)
        if self.imported is not None and self.imported.autoencoder is not None:
            from .teachers import load_vae_weights

            load_vae_weights(self.imported, self.autoencoder)
        if recipe.autoencoder.kind == "kl":  # trained here, as the first stage; a finished one is reused
            self._load_trained_autoencoder()
        self.autoencoder = self.autoencoder.to(env.device).eval().requires_grad_(False)
        self.preparer = Preparer(self.dataset, self.autoencoder, TEXT_LEN, env.device, recipe.data.inpaint_prob, text_encoder=text_encoder)
        self.network = self.imported.denoiser.network_config if self.imported else resolve_network(recipe, self.dataset, self.preparer)
        self.checkpoints: dict[str, dict] = {}
        self.clip = self.info({}).clip_x  # pixel space: x_hat clipped to [-1, 1]
        both = self.dataset.num_classes and self.dataset.has_text and not self.imported
        self.p_drop_distill = recipe.p_drop_each if both else 0.0
        self.precision = wrapper(recipe.mixed_precision)
        self._prefetch: Prefetcher | None = None
        self._step = 0
        for stage in ("teacher", "stage1", "distill", "stochastic"):  # batch_size is the global batch, sliced per rank
            size = getattr(recipe, stage).batch_size
            if size % env.world:
                raise ConfigError(f"{stage}.batch_size {size} is the global batch and must divide by the {env.world} processes")

    def _import_teacher(self):
        """The recipe's diffusers teacher, checked against the data it is distilled on."""
        from .teachers import TeacherError, import_teacher

        r, ds = self.recipe, self.dataset
        imported = import_teacher(Path(r.teacher_dir), r.teacher_null_class)
        side = imported.pixel_resolution
        if r.autoencoder.kind != "identity":
            raise TeacherError(f"--teacher {r.teacher_dir}: an imported teacher brings its own autoencoder (or none); leave the recipe's autoencoder.kind 'identity'")
        if ds.resolution != side or ds.channels != 3:
            raise TeacherError(f"--teacher {r.teacher_dir}: it draws {side}x{side} images, the recipe's data is {ds.resolution}x{ds.resolution}x{ds.channels}: "
                               f"set data.resolution={side}")
        if imported.num_classes and ds.num_classes != imported.num_classes:
            raise TeacherError(f"--teacher {r.teacher_dir}: it knows {imported.num_classes} classes besides its null class, the data has {ds.num_classes}")
        if imported.text_dir is not None and not ds.has_text:
            raise TeacherError(f"--teacher {r.teacher_dir}: a text-to-image teacher is distilled on captioned images; the recipe's data has no captions")
        return imported

    def _teacher_text_encoder(self):
        """The imported text teacher's own CLIP encoder (its captions cache on the device), or None."""
        if self.imported.text_dir is None:
            return None
        from model.clip_text_encoder import ClipTextEncoder

        from .prepare import CAPTION_CACHE, ENCODE_ROWS

        return ClipTextEncoder(self.imported.text_dir, max_length=self.imported.text_len, cache_size=CAPTION_CACHE, device=self.env.device, on_device=True, fixed_batch=ENCODE_ROWS)

    def info(self, checkpoints: dict) -> FamilyInfo:
        return family_info(self.recipe, self.dataset, checkpoints, self.imported)

    def frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """A teacher as the losses call it: under the recipe's mixed precision."""
        return self.precision(model) if self.precision is not None else model

    # -- plumbing -----------------------------------------------------------------
    def _stage(self, name: str, role: str, steps: int | None, model: torch.nn.Module, loss, cfg: StageConfig, stage_id: int, parent: str | None):
        ckpt_dir = self.out / name
        usable = 0
        if self.env.is_main and (ckpt_dir / "config.json").exists():  # rank 0 decides, for every rank
            try:
                load_checkpoint(ckpt_dir, "cpu")
                usable = 1
            except CheckpointError as exc:
                print(f"[fewstep] {name}: existing checkpoint unusable ({exc}); training it again")
        if self.env.broadcast([usable])[0]:
            loaded, _ = load_checkpoint(ckpt_dir, self.env.device)
            self._record(name, role, steps)
            return loaded
        model = model.to(self.env.device)
        if self.recipe.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        state_dir = self.out / ".state" / name
        self.preparer.warm_vocabulary(cfg.steps)  # encoded by the first stage of the process; later ones find it cached
        depth = self.recipe.data.prefetch
        self._prefetch = Prefetcher(self.dataset, cfg.batch_size // self.env.world, self.recipe.seed, stage_id, self.env.rank, depth, warm=self.preparer.warm) if depth else None

        def step_loss(m, step):
            self._step = step
            return loss(m, step_generator(self.recipe.seed, stage_id, step, self.env.rank))

        try:
            ema = train(name, model, step_loss, cfg, state_dir, self.env, wrap=self.precision)
        finally:
            if self._prefetch is not None:
                self._prefetch.close()
            self._prefetch = None
        if self.env.is_main:
            extra = {"parent": parent, "stage": to_dict(cfg), "recipe": to_dict(self.recipe)}  # the resolved config beside the weights
            save_checkpoint(ckpt_dir, ema, role=role, steps=steps, guidance_range=self.recipe.guidance_range if role != "teacher" else None, extra=extra)
            shutil.rmtree(state_dir, ignore_errors=True)
        self.env.barrier()
        self._record(name, role, steps)
        return ema.eval().requires_grad_(False)

    def _record(self, name: str, role: str, steps: int | None) -> None:
        self.checkpoints[name] = {"role": role, "steps": steps}
        if self.env.is_main:
            write_family(self.out, self.info(self.checkpoints))

    def _batch(self, size: int, g: torch.Generator):
        """This rank's slice of a global batch of `size` (each rank draws its own from its seed),
        from the prefetching thread when the recipe asks for one (data.prefetch)."""
        data_seed = batch_seed(g)
        if self._prefetch is not None and self._prefetch.size == size // self.env.world:
            return self._prefetch.get(self._step, data_seed)
        return self.dataset.batch(size // self.env.world, (data_seed, self.env.rank))

    # -- stages -------------------------------------------------------------------
    def _load_trained_autoencoder(self) -> bool:
        """Take OUT/autoencoder when an earlier run finished it (with its latent statistics)."""
        path = self.out / "autoencoder"
        if not (path / "config.json").exists():
            return False
        tensors, meta = load_tensors(path, f"autoencoder of {self.out}")
        cfg = from_dict(AutoencoderConfig, meta.get("autoencoder", {}), "autoencoder config")
        unscaled = dataclasses.replace(cfg, scaling_factor=self.recipe.autoencoder.scaling_factor, shift_factor=self.recipe.autoencoder.shift_factor)
        if unscaled != self.recipe.autoencoder:
            raise ConfigError(f"{path} was trained with another autoencoder config than the recipe's; remove it or choose another --out")
        ae = build_autoencoder(cfg)
        ae.load_state_dict({k: v.float() for k, v in tensors.items()})
        self.recipe = dataclasses.replace(self.recipe, autoencoder=cfg)
        self.autoencoder = ae
        return True

    def _autoencoder_stage(self) -> None:
        """autoencoder.kind "kl": train the AutoencoderKL first (resumable like every stage), set
        its shift and scale from its latents, and save it as OUT/autoencoder, which the family,
        the worker and every later stage decode with."""
        r, env = self.recipe, self.env
        if r.autoencoder.kind != "kl" or (self.out / "autoencoder" / "config.json").exists():
            return
        ae = build_autoencoder(r.autoencoder).to(env.device)
        size = r.autoencoder_train.batch_size

        def step(model, step):
            g = step_generator(r.seed, 0, step, env.rank)
            batch = self._batch(size, g)
            return autoencoder_loss(model, batch.x.to(env.device), kl_weight=r.kl_weight, g=device_generator(g, env.device))

        torch.manual_seed(r.seed)
        ema = train("autoencoder", ae, step, r.autoencoder_train, self.out / ".state" / "autoencoder", env).eval().requires_grad_(False)
        mean, std = latent_statistics(ema, self.dataset.batch(1024, (777_777, 0)).x.to(env.device))
        cfg = scaled_config(r.autoencoder, mean, std)
        if env.is_main:
            print(f"[fewstep] autoencoder: latents mean {mean:.4f}, std {std:.4f} -> shift_factor {cfg.shift_factor}, scaling_factor {cfg.scaling_factor}", flush=True)
            save_tensors(self.out / "autoencoder", {k: v.detach().cpu() for k, v in ema.state_dict().items()}, {"autoencoder": to_dict(cfg)})
            shutil.rmtree(self.out / ".state" / "autoencoder", ignore_errors=True)
        env.barrier()
        self._load_trained_autoencoder()
        self.autoencoder = self.autoencoder.to(env.device).eval().requires_grad_(False)
        self.preparer.autoencoder = self.autoencoder

    def run(self) -> None:
        self._autoencoder_stage()
        r = self.recipe
        p = self.preparer

        def teacher_step(model, g):
            batch = self._batch(r.teacher.batch_size, g)
            cond = p.cond(batch, g, p_uncond=r.p_uncond, p_drop_each=r.p_drop_each)
            return teacher_loss(model, p.x(batch), cond, weighting=r.weighting, g=g)

        torch.manual_seed(r.seed)  # the initial weights, identical on every rank and every rerun
        teacher = self._imported_stage() if self.imported else self._stage("teacher", "teacher", None, Denoiser(self.network), teacher_step, r.teacher, 1, None)

        def stage1_step(model, g):
            batch = self._batch(r.stage1.batch_size, g)
            cond = p.cond(batch, g, p_drop_each=self.p_drop_distill, drop_both=False)
            return stage1_loss(model, self.frozen(teacher), p.x(batch), cond, gamma_range=r.guidance_range, weighting=r.weighting, g=g, clip=self.clip)

        student = self._gamma_student(teacher)
        prev = self._stage("stage1", "stage1", r.distill_start_steps, student, stage1_step, r.stage1, 2, "teacher")
        self.report_response("stage1", prev, teacher)
        prev_name = "stage1"
        self.teacher = teacher
        distilled = {}
        for k, n in enumerate(r.student_steps):
            prev = self._distill(f"distilled-{n}", "distilled", n, prev, copy.deepcopy(prev), r.distill, 10 + k, prev_name, stochastic=False)
            distilled[n] = prev
            prev_name = f"distilled-{n}"
        for k, n in enumerate(r.stochastic_steps):
            # teacher: the N-step deterministic student; start: the N/2-step student (it already takes 2/N steps)
            self._distill(f"stochastic-{n}", "stochastic", n, distilled[n], copy.deepcopy(distilled[n // 2]), r.stochastic, 50 + k, f"distilled-{n}", stochastic=True)

    def _gamma_student(self, teacher: torch.nn.Module) -> torch.nn.Module:
        """The stage-1 student: the teacher's weights plus a zero-initialised gamma input."""
        r = self.recipe
        if self.imported:  # its students take gamma through the embedding pathway (model/diffusers_backbone.py)
            output = {} if r.student_prediction == "teacher" else {"prediction_type": r.student_prediction}
            if r.student_prediction == "bounded_epsilon":
                output["alpha_floor"] = r.student_alpha_floor
            return gamma_student_from_teacher(teacher, r.gamma_embed_dim, "embedding", r.gamma_scale, (), **output)
        return gamma_student_from_teacher(teacher, r.gamma_embed_dim, r.gamma_pathway, r.gamma_scale, r.gamma_extrapolate)

    def dry_run(self, rows: int = 2) -> list[str]:
        """Check the whole chain fits without training or writing anything: the teacher (imported,
        or freshly built), one stage-1 loss and its backward pass, and one stage-2 loss, each on
        `rows` samples of the recipe's data; returns the plan, a line per stage."""
        r, p = self.recipe, self.preparer
        teacher = (self.imported.denoiser if self.imported else Denoiser(self.network)).to(self.env.device).eval().requires_grad_(False)
        student = self._gamma_student(teacher).to(self.env.device).train()
        if r.gradient_checkpointing:
            enable_gradient_checkpointing(student)
        g = step_generator(r.seed, 0, 0, self.env.rank)
        batch = self.dataset.batch(rows, (0, self.env.rank))
        cond = p.cond(batch, g, p_drop_each=self.p_drop_distill, drop_both=False)
        x = p.x(batch)
        loss = stage1_loss(self.frozen(student), self.frozen(teacher), x, cond, gamma_range=r.guidance_range, weighting=r.weighting, g=g, clip=self.clip)
        loss.backward()
        with torch.no_grad():
            student.eval()
            loss2 = distill_loss(self.frozen(copy.deepcopy(student)), self.frozen(student), x, cond, steps=r.distill_start_steps // 2, stochastic=False, gamma_range=r.guidance_range, weighting=r.weighting, g=g, clip=self.clip)
        if not (torch.isfinite(loss) and torch.isfinite(loss2)):
            raise ConfigError(f"dry run: a non-finite loss (stage 1 {float(loss)}, stage 2 {float(loss2)})")
        params = sum(q.numel() for q in student.parameters())
        side = tuple(x.shape[1:])
        plan = [f"teacher: {'imported from ' + str(r.teacher_dir) if self.imported else f'{r.teacher.steps} steps x batch {r.teacher.batch_size}'}; z {side}; student {params / 1e6:.1f}M parameters",
                f"stage1: {r.stage1.steps} steps x batch {r.stage1.batch_size} (gamma in {list(r.guidance_range)}; loss on {rows} rows {float(loss):.4g})"]
        plan += [f"distilled-{n}: {self._round(r.distill, n).steps} steps x batch {r.distill.batch_size}" for n in r.student_steps]
        plan += [f"stochastic-{n}: {self._round(r.stochastic, n).steps} steps x batch {r.stochastic.batch_size}" for n in r.stochastic_steps]
        plan.append(f"stage-2 loss on {rows} rows {float(loss2):.4g}; {self.env.world} process(es) on {self.env.device}, mixed precision {r.mixed_precision}, gradient checkpointing {r.gradient_checkpointing}")
        return plan

    def _imported_stage(self) -> torch.nn.Module:
        """The imported teacher, saved as the family's teacher checkpoint (so evaluation, export
        and the service find it like any teacher)."""
        teacher = self.imported.denoiser.to(self.env.device)
        if self.env.is_main and not (self.out / "teacher" / "config.json").exists():
            if self.imported.autoencoder is not None:  # the family decodes with the teacher's vae
                save_tensors(self.out / "autoencoder", {k: v.detach().cpu() for k, v in self.autoencoder.state_dict().items()}, {"autoencoder": to_dict(self.imported.autoencoder)})
            if self.imported.text_dir is not None:  # and encodes prompts with its text encoder
                for part in ("text_encoder", "tokenizer"):
                    shutil.rmtree(self.out / part, ignore_errors=True)
                    shutil.copytree(self.imported.text_dir / part, self.out / part)
                if not (self.out / "tokenizer" / "tokenizer.json").is_file():  # the API counts prompt tokens with it, torch-free
                    from transformers import CLIPTokenizerFast

                    CLIPTokenizerFast.from_pretrained(str(self.out / "tokenizer"), local_files_only=True).save_pretrained(str(self.out / "tokenizer"))
            save_checkpoint(self.out / "teacher", teacher, role="teacher", steps=None, guidance_range=None, extra={"imported_from": str(self.imported.unet_dir), "recipe": to_dict(self.recipe)})
        self.env.barrier()
        self._record("teacher", "teacher", None)
        return teacher

    def report_response(self, name: str, student, teacher, steps: int | None = None) -> None:
        """Print the student's gamma response (training/response.py) on a fixed batch."""
        if not self.env.is_main or self.recipe.guidance_range[1] <= self.recipe.guidance_range[0]:
            return
        if self.imported is not None and not self.imported.num_classes and self.imported.text_dir is None:
            return  # an unconditional teacher: guidance moves nothing for a student to follow
        batch = self.dataset.batch(256, (424_242, 0))
        cond = self.preparer.cond(batch, None)
        r = gamma_response(student, teacher, self.preparer.x(batch), cond, gamma_range=self.recipe.guidance_range, times=response_times(steps), clip=self.clip)
        print(f"[fewstep] {name}: gamma response {r['mean']:.3f} (" + ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k != "mean") + ")", flush=True)

    def _round(self, cfg: StageConfig, n: int) -> StageConfig:
        """A round's settings: the rounds of N <= 4 steps train final_rounds_scale times longer."""
        if n <= 4 and self.recipe.final_rounds_scale != 1.0:
            return StageConfig(**{**to_dict(cfg), "steps": int(cfg.steps * self.recipe.final_rounds_scale)})
        return cfg

    def _distill(self, name, role, n, teacher, student, cfg: StageConfig, stage_id, parent, *, stochastic):
        r, p = self.recipe, self.preparer
        cfg = self._round(cfg, n)
        teacher = teacher.eval().requires_grad_(False)
        student = student.train().requires_grad_(True)

        def step(model, g):
            batch = self._batch(cfg.batch_size, g)
            cond = p.cond(batch, g, p_drop_each=self.p_drop_distill, drop_both=False)
            return distill_loss(model, self.frozen(teacher), p.x(batch), cond, steps=n, stochastic=stochastic, gamma_range=r.guidance_range, weighting=r.weighting, g=g, clip=self.clip)

        result = self._stage(name, role, n, student, step, cfg, stage_id, parent)
        if not stochastic:
            self.report_response(name, result, self.teacher, n)
        return result
