"""`python -m training evaluate DIR`: FID, adherence and RMSE-to-reference for every sampler,
step count and gamma; writes DIR/metrics.json (schema in DESIGN.md section 2).

All samplers of a row group share the conditions and the per-sample noise seeds, so RMSE to
the reference (the teacher's 256-step DDIM+CFG) compares like with like. Each row is
repeated on `repeats` independent seed sets; the spread across them is reported.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import CheckpointError, write_json
from model.conditioning import Cond
from model.family import Family
from model.guidance import gamma_conditioned, guided
from model.noise import SeededNoise
from model.samplers import SAMPLERS, network_evaluations

from .config import Recipe
from .data import build_dataset
from .evaluator import adherence, frechet_distance, load_or_train_evaluator
from .prepare import Preparer

CLASS_ATTRIBUTES = {"shapes": [0, 1], "toy2d": [0], "imagefolder": [0]}


class EvalSet:
    """Conditions, real samples and asked attributes for one repeat."""

    def __init__(self, dataset, preparer: Preparer, n: int, repeat: int, mode: str, held_out: bool = False):
        self.seeds = [repeat * 1_000_003 + k for k in range(n)]
        batch = dataset.batch(n, (77_777, repeat, 1 if held_out else 0))
        g = torch.Generator().manual_seed(31 + repeat)
        if mode == "class":
            asked = torch.full_like(batch.attrs, -1) if batch.attrs is not None else None
            if asked is not None:
                cols = CLASS_ATTRIBUTES[dataset.kind]
                asked[:, cols] = batch.attrs[:, cols]
            self.cond = preparer.cond(batch, None, labels_only=True)
        else:  # "text": short prompts naming shape and colour; held-out combinations when asked for
            if held_out:
                _, attrs = dataset.random_attrs(n, g, [c for c in dataset.held_out_combos])
            else:
                attrs = batch.attrs
            captions, asked = dataset.captions_for(attrs, g, detail=0)
            batch.captions, batch.attrs, batch.labels = captions, attrs, None
            self.cond = preparer.cond(batch, None)
            if self.cond.labels is not None:
                self.cond = self.cond.drop(drop_labels=torch.ones(n, dtype=torch.bool))
        if self.cond.context is not None:
            self.cond = Cond(labels=self.cond.labels, text=self.cond.text, text_mask=self.cond.text_mask, context=preparer.plain_context(n))
        self.real = batch.x
        self.asked = asked


def generate(family: Family, sampler: str, steps: int, gamma: float, ev: EvalSet, batch_size: int, shape: tuple) -> torch.Tensor:
    if sampler == "teacher-ddim" or sampler == "teacher-dpmpp2m":
        denoise = guided(family.model("teacher"), gamma)
        fn = SAMPLERS["ddim" if sampler == "teacher-ddim" else "dpmpp2m"]
    else:
        stochastic = sampler == "distilled-stochastic"
        denoise = gamma_conditioned(family.student(steps, stochastic), gamma)
        fn = SAMPLERS["stochastic" if stochastic else "ddim"]
    out = []
    n = len(ev.seeds)
    with torch.no_grad():
        for lo in range(0, n, batch_size):
            idx = slice(lo, min(n, lo + batch_size))
            noise = SeededNoise(ev.seeds[idx])
            z = noise.randn(shape)
            z = fn(denoise, z, ev.cond.index(idx), steps=steps, noise=noise)
            out.append(family.autoencoder.decode(z).clamp(-1, 1) if family.info.resolution else z)
    return torch.cat(out)


def sampler_plan(recipe: Recipe, family: Family) -> list[tuple[str, int]]:
    e = recipe.evaluation
    plan = [("teacher-ddim", e.reference_steps)]
    plan += [("teacher-ddim", n) for n in e.teacher_steps if n != e.reference_steps]
    plan += [("teacher-dpmpp2m", n) for n in e.dpm_steps]
    plan += [("distilled", n) for n in sorted(family.info.distilled_steps, reverse=True)]
    plan += [("distilled-stochastic", n) for n in sorted(family.info.stochastic_steps, reverse=True)]
    return plan


def _summary(values: list[float]) -> tuple[float, float]:
    arr = np.array(values, dtype=float)
    return float(np.nanmean(arr)), float(np.nanstd(arr)) if len(arr) > 1 else 0.0


def evaluate(directory: Path, samples: int | None = None, repeats: int | None = None) -> dict:
    directory = Path(directory)
    recipe_path = directory / "recipe.json"
    if not recipe_path.is_file():
        raise CheckpointError(f"{directory} is not a fewstep run directory (no recipe.json)")
    recipe = Recipe.from_json(recipe_path.read_text())
    family = Family(directory)
    if "teacher" not in family.info.checkpoints:
        raise CheckpointError(f"{directory}: no teacher checkpoint yet; finish training first")
    e = recipe.evaluation
    samples, repeats = samples or e.samples, repeats or e.repeats
    if samples < 2 or repeats < 1:
        raise CheckpointError("evaluate: --samples must be >= 2 and --repeats >= 1")
    dataset = build_dataset(recipe.data)
    preparer = Preparer(dataset, family.autoencoder, family.info.text_len, "cpu", 0.0)
    evaluator = load_or_train_evaluator(directory, dataset, e.evaluator_steps)
    mode = "class" if dataset.num_classes else "text"
    if mode == "text" and not hasattr(dataset, "captions_for"):
        mode = "free-text"
    sets = [EvalSet(dataset, preparer, samples, r, mode) for r in range(repeats)]
    shape = _z_shape(family)
    started = time.time()

    real_feats = [evaluator.features(s.real) for s in sets]
    floor = EvalSet(dataset, preparer, samples, repeats + 1, mode)
    noise_floor = frechet_distance(evaluator.features(floor.real), real_feats[0])

    rows = []
    for gamma in e.guidance:
        references = [generate(family, "teacher-ddim", e.reference_steps, gamma, s, e.batch_size, shape) for s in sets]
        for sampler, steps in sampler_plan(recipe, family):
            fids, adhs, rmses = [], [], []
            for r, s in enumerate(sets):
                x = references[r] if (sampler, steps) == ("teacher-ddim", e.reference_steps) else generate(family, sampler, steps, gamma, s, e.batch_size, shape)
                fids.append(frechet_distance(evaluator.features(x), real_feats[r]))
                adhs.append(adherence(evaluator.classify(x), s.asked) if s.asked is not None else float("nan"))
                rmses.append(float((x - references[r]).flatten(1).pow(2).mean(1).sqrt().mean()))
            row = {"sampler": sampler, "steps": steps, "evals": network_evaluations(sampler, steps, sampler.startswith("teacher")), "guidance": gamma}
            for key, values in (("fid", fids), ("adherence", adhs), ("rmse_to_reference", rmses)):
                row[key], row[f"{key}_std"] = _summary(values)
            rows.append(row)
            print(f"[evaluate] gamma={gamma:<4} {sampler:22s} steps={steps:<4} fid={row['fid']:.4f}±{row['fid_std']:.4f} adherence={row['adherence']:.3f} rmse={row['rmse_to_reference']:.4f}")
    metrics = {
        "family": family.info.family,
        "reference": {"sampler": "teacher-ddim", "steps": e.reference_steps, "evals": 2 * e.reference_steps},
        "samples_per_row": samples,
        "repeats": repeats,
        "fid_real_vs_real": noise_floor,
        "conditioning": mode,
        "rows": rows,
    }
    if mode == "class" and dataset.has_text and hasattr(dataset, "held_out_combos"):
        metrics["text_adherence"] = _text_adherence(family, dataset, preparer, evaluator, recipe, samples, shape)
    metrics["seconds"] = round(time.time() - started, 1)
    write_json(directory / "metrics.json", metrics)
    print(f"[evaluate] wrote {directory / 'metrics.json'} ({metrics['seconds']} s)")
    return metrics


def _text_adherence(family, dataset, preparer, evaluator, recipe, samples, shape) -> list[dict]:
    """Adherence to short prompts ("a blue triangle") on seen vs held-out shape/colour pairs."""
    out = []
    e = recipe.evaluation
    plan = [("teacher-ddim", 64)] + [("distilled", n) for n in sorted(family.info.distilled_steps, reverse=True)]
    sets = {"seen": EvalSet(dataset, preparer, samples, 0, "text"), "held_out": EvalSet(dataset, preparer, samples, 0, "text", held_out=True)}
    for gamma in [g for g in e.guidance if g in (0.0, 1.0, 4.0)]:
        for sampler, steps in plan:
            row = {"sampler": sampler, "steps": steps, "guidance": gamma}
            for split, s in sets.items():
                x = generate(family, sampler, steps, gamma, s, e.batch_size, shape)
                row[split] = adherence(evaluator.classify(x), s.asked)
            out.append(row)
            print(f"[evaluate] text gamma={gamma:<4} {sampler:14s} steps={steps:<3} seen={row['seen']:.3f} held_out={row['held_out']:.3f}")
    return out


def _z_shape(family: Family) -> tuple:
    info = family.info
    teacher_net = json.loads((family.directory / "teacher" / "config.json").read_text())["network"]
    if info.resolution is None:
        return (teacher_net["channels"],)
    return (teacher_net["channels"], teacher_net["resolution"], teacher_net["resolution"])
