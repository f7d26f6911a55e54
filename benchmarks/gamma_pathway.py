"""Probe where and how gamma should enter a stage-1 student: short stage-1 runs from a
family's teacher, each printing the gamma response (training/response.py) it reaches.

    python -m benchmarks.gamma_pathway [--family model/builtin/shapes] [--steps 200] [--out FILE]
        [--option PATHWAY,SCALE,LR,GAMMA_LR ...] [--clip]

Options are (pathway, scale, lr, gamma_lr[, extrapolate]): gamma_lr "same" for one learning
rate; extrapolate "class", "text" or "class+text" pushes those conditions from the null one
by gamma (model/networks.py). Every run draws the
same batches, gammas and noise. Without --clip the targets are left unclipped (where gamma
enters does not depend on it); --clip trains and measures as the recipes do in pixel space.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.hardware import describe
from model.checkpoint import load_checkpoint
from model.denoiser import gamma_student_from_teacher
from training.config import DataConfig, Recipe, StageConfig
from training.data import build_dataset, step_generator
from training.distributed import DistEnv
from training.losses import stage1_loss
from training.loop import train
from training.prepare import Preparer
from training.response import gamma_response
from model.autoencoder import build_autoencoder

OPTIONS = [
    ("time_features", 100.0, 1e-4, None),  # the first recipes' settings
    ("time_features", 1.0, 1e-4, 3e-3),
    ("embedding", 100.0, 1e-4, 3e-3),
    ("embedding", 10.0, 1e-4, 3e-3),
    ("embedding", 1.0, 1e-4, 3e-3),
    ("embedding", 1.0, 1e-4, None),
]
OPTIONS = [(*o, ()) for o in OPTIONS]


def _parse(text: str):
    pathway, scale, lr, gamma_lr, *rest = text.split(",")
    extrapolate = tuple(rest[0].split("+")) if rest and rest[0] else ()
    return pathway, float(scale), float(lr), None if gamma_lr == "same" else float(gamma_lr), extrapolate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", type=Path, default=Path("model/builtin/shapes"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--option", action="append", default=[], help="pathway,scale,lr,gamma_lr (repeatable; default: the built-in list)")
    ap.add_argument("--clip", action="store_true")
    ap.add_argument("--schedule", choices=["constant", "linear"], default="constant", help="learning rate after warmup (the recipes: linear)")
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args(argv)
    options = [_parse(o) for o in args.option] or OPTIONS
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher, _ = load_checkpoint(args.family / "teacher", device)
    teacher.requires_grad_(False)
    recipe = Recipe.from_json((args.family / "recipe.json").read_text())
    data = DataConfig(**{**recipe.data.__dict__})
    dataset = build_dataset(data)
    preparer = Preparer(dataset, build_autoencoder(recipe.autoencoder).to(device), 16, device, 0.0)
    probe = dataset.batch(256, (424_242, 0))
    probe_x, probe_cond = preparer.x(probe), preparer.cond(probe, None)
    rows = []
    for pathway, scale, lr, gamma_lr, extrapolate in options:
        torch.manual_seed(0)
        student = gamma_student_from_teacher(teacher.cpu(), recipe.gamma_embed_dim, pathway, scale, extrapolate).to(device)
        teacher.to(device)
        cfg = StageConfig(steps=args.steps, batch_size=64, lr=lr, gamma_lr=gamma_lr, ema_decay=0.0, warmup=args.warmup, lr_schedule=args.schedule, save_every_s=1e9)

        def step(model, k):
            g = step_generator(7, k)
            batch = dataset.batch(cfg.batch_size, (int(torch.randint(0, 2**31 - 1, (1,), generator=g)), 0))
            cond = preparer.cond(batch, g, p_drop_each=0.3, drop_both=False)
            return stage1_loss(model, teacher, preparer.x(batch), cond, gamma_range=recipe.guidance_range, weighting=recipe.weighting, g=g, clip=args.clip)

        started = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            trained = train("probe", student, step, cfg, Path(tmp), DistEnv(device=device))
        r = gamma_response(trained.eval(), teacher, probe_x, probe_cond, gamma_range=recipe.guidance_range, clip=args.clip)
        row = {"pathway": pathway, "extrapolate": "+".join(extrapolate) or "-", "scale": scale, "lr": lr, "gamma_lr": gamma_lr, "steps": args.steps, "seconds": round(time.time() - started, 1), **r}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        lines = [f"# Gamma pathway probes ({args.steps} stage-1 steps, batch 64, {args.schedule} learning rate after {args.warmup} warmup steps, from {args.family})", "",
                 f"Measured on {describe(str(device))}, {torch.get_num_threads()} torch threads; "
                 + ("clipped targets and clipped response (as the recipes train)." if args.clip else "unclipped targets and response."), "",
                 "| pathway | extrapolate | scale | lr | gamma lr | response t=0.3 | t=0.5 | t=0.7 | mean | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['pathway']} | {r['extrapolate']} | {r['scale']:g} | {r['lr']:g} | {r['gamma_lr'] or 'same'} | {r['t=0.3']:.3f} | {r['t=0.5']:.3f} | {r['t=0.7']:.3f} | {r['mean']:.3f} | {r['seconds']:.0f} |")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
