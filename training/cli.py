"""`python -m training run RECIPE --out DIR [--resume]` and `python -m training evaluate DIR`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.files import CheckpointError, atomic_write_text
from model.config_io import ConfigError

from .config import Recipe, apply_overrides
from .data.imagefolder import DataError
from .loop import Interrupted, StopSignals
from .recipes import RECIPES, get_recipe


def at_least(low: int):
    """An argparse type: an integer >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


positive = at_least(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description="Train a guided diffusion teacher and distill it into 1-8 step students.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every stage of a recipe (teacher, stage 1, stage 2 rounds, stochastic students, evaluation)")
    run.add_argument("recipe", help=f"one of: {', '.join(RECIPES)}")
    run.add_argument("--out", required=True, type=Path, help="output directory (the model family)")
    run.add_argument("--resume", action="store_true", help="continue a run in --out where it stopped")
    run.add_argument("--data-dir", type=Path, help="train on an imagefolder (images + metadata.jsonl) instead of the recipe's data")
    run.add_argument("--teacher", type=Path, help="distil this diffusers pipeline or U-Net folder instead of training a teacher")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field, e.g. --set teacher.steps=100 (repeatable)")
    run.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    run.add_argument("--dry-run", action="store_true", help="print the resolved recipe and exit")
    ev = sub.add_parser("evaluate", help="evaluate a model family; writes DIR/metrics.json")
    ev.add_argument("dir", type=Path)
    ev.add_argument("--samples", type=at_least(2), help="samples per row, at least 2 (default: the recipe's)")
    ev.add_argument("--repeats", type=positive, help="independent seed sets per row (default: the recipe's)")
    ev.add_argument("--fresh", action="store_true", help="start over instead of continuing a killed evaluation from its finished rows")
    ev.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when there is one)")
    ev.add_argument("--reuse-teacher-rows", action="store_true", help="take the teacher's rows from DIR/metrics.json of an earlier evaluation (same teacher, samples, repeats) and sample only the students")
    rs = sub.add_parser("response", help="print the gamma response of a family's students (a minute; evaluate records the same)")
    rs.add_argument("dir", type=Path)
    sm = sub.add_parser("sample", help="write a PNG grid of samples from a family's distilled students")
    sm.add_argument("dir", type=Path)
    sm.add_argument("--out", type=Path, default=Path("samples.png"))
    sm.add_argument("--steps", type=positive, default=4)
    sm.add_argument("--guidance", type=float, default=1.0, help="gamma (0: conditional, no guidance)")
    sm.add_argument("--stochastic", action="store_true")
    sm.add_argument("--prompt")
    sm.add_argument("--class", dest="class_name", help="class name or id")
    sm.add_argument("-n", type=positive, default=8)
    sm.add_argument("--seed", type=int, default=0)
    ex = sub.add_parser("export", help="write a servable copy of a family (fp16, students of <= 8 steps)")
    ex.add_argument("dir", type=Path)
    ex.add_argument("--to", required=True, type=Path, dest="dest")
    ex.add_argument("--dtype", default="float16")
    ex.add_argument("--data-root", default=None, help="name the training data's folder so in the copy (for example a relative path), instead of where it lay when the family was trained")
    ex.add_argument("--keep", default=None, help="comma-separated checkpoints to copy (e.g. distilled-4,distilled-1), for a smaller family; default: the teacher, stage 1 and every student")
    ex.add_argument("--max-steps", type=positive, default=8, help="copy the distilled students of at most this many steps (default 8)")
    ex.add_argument("--name", help="the family's name in the copy (default: the recipe's); two served families may not share one")
    ex.add_argument("--no-diffusers", action="store_true", help="do not also write the students' U-Nets in the diffusers layout (DEST/diffusers/)")
    rp = sub.add_parser("report", help="write a readable report (tables, plots, sample grid) of an evaluated family")
    rp.add_argument("dir", type=Path)
    rp.add_argument("--out", required=True, type=Path, help="directory for report.md and its figures")
    sub.add_parser("recipes", help="list the recipes")
    dt = sub.add_parser("data", help="build a dataset folder: `data emoji --out FOLDER` renders colour emoji with captions from their names")
    dt.add_argument("kind", choices=["emoji"])
    dt.add_argument("--out", required=True, type=Path)
    dt.add_argument("--size", type=int, default=64, help="image side in pixels")
    dt.add_argument("--font", type=Path, help="a colour emoji font (default: Debian's fonts-noto-color-emoji)")
    return parser


def resolve_recipe(args) -> Recipe:
    recipe = get_recipe(args.recipe)
    overrides = list(args.overrides)
    if args.data_dir is not None:
        overrides += ["data.kind=imagefolder", f"data.root={args.data_dir.resolve()}"]
    if args.teacher is not None:
        overrides.append(f"teacher_dir={args.teacher.resolve()}")
    return apply_overrides(recipe, overrides) if overrides else recipe


def cmd_run(args) -> int:
    from .distributed import init_distributed, shutdown

    out: Path = args.out
    recipe = resolve_recipe(args)
    if args.dry_run:  # the resolved recipe, and, for an imported teacher, a check that the chain fits it
        print(recipe.to_json(), end="")
        if recipe.teacher_dir or recipe.teacher_required:
            import torch

            from .chain import Chain
            from .distributed import DistEnv

            env = DistEnv(rank=0, world=1, device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
            for line in Chain(recipe, out, env).dry_run():
                print(f"[dry-run] {line}")
            print("[dry-run] ok: nothing was written")
        return 0
    saved = out / "recipe.json"
    if args.resume:
        if not saved.is_file():
            raise ConfigError(f"--resume: {out} holds no run to resume (no recipe.json)")
        previous = Recipe.from_json(saved.read_text())
        if previous != recipe:
            raise ConfigError(f"--resume: {out} was started with a different recipe; resume with the same recipe and --set/--data-dir options (see {saved})")
    elif out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the model family")
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; pass --resume to continue it, or choose another --out")
    env = init_distributed()
    try:
        from .chain import Chain

        with StopSignals() as stop:  # a SIGTERM from here on stops training at its next check, state saved
            chain = Chain(recipe, out, env)  # validates the data before anything is written
            if env.is_main:
                atomic_write_text(saved, recipe.to_json())
                print(f"[fewstep] {recipe.name}: training on {env.world} process(es), device {env.device}", flush=True)
            env.barrier()
            chain.run()
            if stop.signal is not None:  # it landed after the last check: every stage is done, do not go on
                raise Interrupted(f"stopped by signal {stop.signal} after training; every stage is saved, evaluate with `python -m training evaluate {out}`")
        if env.is_main and not args.no_eval:
            from .evaluate import evaluate

            evaluate(out, device=str(env.device))  # on the training device, never silently elsewhere
    finally:
        shutdown()
    if env.is_main:
        print(f"[fewstep] done: {out}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate

    evaluate(args.dir, samples=args.samples, repeats=args.repeats, resume=not args.fresh, device=args.device, reuse_teacher_rows=args.reuse_teacher_rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "recipes":
            for name, fn in RECIPES.items():
                print(f"{name:12s} {fn.__doc__.splitlines()[0]}")
            return 0
        if args.command == "run":
            return cmd_run(args)
        if args.command == "sample":
            from .sample import sample

            if not args.out.parent.is_dir():  # before sampling, not after
                raise ConfigError(f"--out {args.out}: no folder {args.out.parent} to write it in")

            path = sample(args.dir, args.out, steps=args.steps, guidance=args.guidance, stochastic=args.stochastic, prompt=args.prompt, class_name=args.class_name, n=args.n, seed=args.seed)
            print(f"wrote {path}")
            return 0
        if args.command == "export":
            from .export import export_family

            only = args.keep.split(",") if args.keep else None
            written = export_family(args.dir, args.dest, dtype=args.dtype, max_steps=args.max_steps, name=args.name, diffusers=not args.no_diffusers, only=only, data_root=args.data_root)
            print(f"wrote {written}")
            return 0
        if args.command == "response":
            from .evaluate import responses

            for name, r in responses(args.dir).items():
                print(f"{name:14s} " + " ".join(f"{k} {v:.3f}" for k, v in r.items()))
            return 0
        if args.command == "data":
            from .data.emoji import build

            counts = build(args.out, size=args.size, font_path=args.font)
            print(f"wrote {counts['train']} training and {counts['held_out']} held-out emoji to {args.out}/train and {args.out}/held_out")
            return 0
        if args.command == "report":
            from .report import write_report

            print(f"wrote {write_report(args.dir, args.out)}")
            return 0
        return cmd_evaluate(args)
    except (ConfigError, DataError, CheckpointError, ValueError, KeyError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
