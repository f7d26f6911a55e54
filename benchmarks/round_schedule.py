"""Learning rate and EMA of a distillation round: train the same round twice from a family's
N-step student, once with the learning rate annealed linearly to zero and no EMA (Salimans &
Ho's released setup) and once with a constant rate and an EMA, then compare the two students.

    python -m benchmarks.round_schedule FAMILY [--steps 4] [--train-steps 800] [--samples 1024] [--repeats 3] [--out FILE]

Both runs draw the same batches, gammas and noise; both students are evaluated on the same
conditions and seeds (FID and KID against real images, mean ± std over seed sets; gamma response).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.hardware import describe
from model.checkpoint import load_checkpoint, save_checkpoint
from model.family import Family
from training.chain import TEXT_LEN
from training.config import Recipe
from training.data import build_dataset, step_generator
from training.distributed import DistEnv
from training.evaluate import EvalSet, _z_shape, generate, summary
from training.evaluator import frechet_distance, kernel_inception_distance, load_or_train_evaluator
from training.losses import distill_loss
from training.loop import train
from training.prepare import Preparer
from training.response import gamma_response, response_times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family", type=Path)
    ap.add_argument("--steps", type=int, default=4, help="the round's student step count N (its teacher: the 2N-step student)")
    ap.add_argument("--train-steps", type=int, default=800)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0, 4.0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    recipe = Recipe.from_json((args.family / "recipe.json").read_text())
    fam = Family(args.family)
    n = args.steps
    names = fam.info.names("distilled")
    if n not in names:
        raise SystemExit(f"{args.family} has no {n}-step student")
    start = names.get(2 * n, "stage1")  # the first round's teacher is the stage-1 student
    teacher, _ = load_checkpoint(args.family / start, device)
    teacher.requires_grad_(False)
    dataset = build_dataset(recipe.data)
    preparer = Preparer(dataset, fam.autoencoder.to(device), TEXT_LEN, device, recipe.data.inpaint_prob)
    clip = fam.info.clip_x
    both = dataset.num_classes and dataset.has_text
    base = replace(recipe.distill, steps=args.train_steps, save_every_s=1e9)
    variants = {
        "linear, no EMA": replace(base, lr_schedule="linear", ema_decay=0.0),
        "constant, EMA 0.999": replace(base, lr_schedule="constant", ema_decay=0.999),
    }
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, cfg in variants.items():
            student, _ = load_checkpoint(args.family / start, device)
            student.requires_grad_(True)

            def step(model, k):
                g = step_generator(recipe.seed, 777, k)
                batch = dataset.batch(cfg.batch_size, (int(torch.randint(0, 2**31 - 1, (1,), generator=g)), 0))
                cond = preparer.cond(batch, g, p_drop_each=recipe.p_drop_each if both else 0.0, drop_both=False)
                return distill_loss(model, teacher, preparer.x(batch), cond, steps=n, stochastic=False, gamma_range=recipe.guidance_range, weighting=recipe.weighting, g=g, clip=clip)

            started = time.time()
            trained = train(f"round-{n} ({label})", student, step, cfg, Path(tmp) / "state", DistEnv(device=device))
            seconds = time.time() - started
            # evaluate through a copy of the family whose N-step student is this one
            copy = Path(tmp) / "family"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(args.family, copy, ignore=shutil.ignore_patterns("metrics.json"))
            name = fam.info.names("distilled")[n]
            shutil.rmtree(copy / name)
            save_checkpoint(copy / name, trained.cpu(), role="distilled", steps=n, guidance_range=recipe.guidance_range)
            results.append({"variant": label, "train_seconds": round(seconds, 1), **_measure(copy, recipe, n, args, device)})
            print(json.dumps(results[-1]), flush=True)
    if args.out:
        lines = [f"# Distillation round {2 * n} -> {n} steps: learning-rate schedule and EMA", "",
                 f"`python -m benchmarks.round_schedule {args.family} --steps {n} --train-steps {args.train_steps}`; measured on {describe(str(device))}.",
                 f"{args.samples} samples × {args.repeats} seed sets per cell (mean ± std, ddof = 1); same training batches and evaluation seeds for both.", "",
                 "| variant | " + " | ".join(f"FID γ={g:g}" for g in args.guidance) + " | " + " | ".join(f"KID γ={g:g}" for g in args.guidance) + " | gamma response |",
                 "|---|" + "---|" * (2 * len(args.guidance) + 1)]
        for r in results:
            lines.append(f"| {r['variant']} | " + " | ".join(f"{r['fid'][str(g)][0]:.2f}±{r['fid'][str(g)][1] or 0:.2f}" for g in args.guidance) + " | "
                         + " | ".join(f"{r['kid'][str(g)][0]:.3g}±{r['kid'][str(g)][1] or 0:.2g}" for g in args.guidance) + f" | {r['gamma_response']:.3f} |")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


def _measure(directory: Path, recipe: Recipe, n: int, args, device) -> dict:
    family = Family(directory, device=device)
    dataset = build_dataset(recipe.data)
    preparer = Preparer(dataset, family.autoencoder, family.info.text_len, device, 0.0)
    evaluator = load_or_train_evaluator(directory, dataset, recipe.evaluation.evaluator_steps)
    mode = "class" if dataset.num_classes else "text"
    sets = [EvalSet(dataset, preparer, args.samples, r, mode) for r in range(args.repeats)]
    real = [evaluator.features(s.real) for s in sets]
    shape = _z_shape(family)
    fid, kid = {}, {}
    for g in args.guidance:
        feats = [evaluator.features(generate(family, "distilled", n, g, s, recipe.evaluation.batch_size, shape)) for s in sets]
        fid[str(g)] = summary([frechet_distance(f, r) for f, r in zip(feats, real)])
        kid[str(g)] = summary([kernel_inception_distance(f, r) for f, r in zip(feats, real)])
    k = min(256, args.samples)
    x = family.autoencoder.encode(sets[0].real[:k].to(device))
    resp = gamma_response(family.student(n), family.model("teacher"), x, sets[0].cond.index(slice(0, k)).to(device), gamma_range=recipe.guidance_range, times=response_times(n), clip=family.info.clip_x)
    return {"fid": fid, "kid": kid, "gamma_response": resp["mean"]}


if __name__ == "__main__":
    raise SystemExit(main())
