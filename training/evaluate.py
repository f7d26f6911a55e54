"""`python -m training evaluate DIR`: FID, KID, adherence, attribute distances and RMSE to the
reference for every sampler, step count and gamma; writes DIR/metrics.json (schema in
docs/design.md, "metrics.json").

All samplers of a row group share the conditions and the per-sample noise seeds, so RMSE to
the reference (the teacher's many-step DDIM+CFG) compares like with like; it is left empty
for stochastic rows, whose fresh noise makes a per-sample distance meaningless. Each row is
repeated on `repeats` independent seed sets; a cell is the mean and its spread the standard
deviation across them (ddof = 1). The floor is the same distance between independent real
sets of the same size, with its spread. Students also report their gamma response.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from model import schedule
from model.config_io import to_dict
from model.files import CheckpointError, write_json
from model.conditioning import Cond
from model.family import Family
from model.guidance import clipped, gamma_conditioned, guided
from model.noise import SeededNoise
from model.samplers import SAMPLERS, network_evaluations

from .config import Recipe
from .data import build_dataset, random_box_masks
from .edits import evaluate_edits
from .eval_progress import EvalProgress, fingerprint, weights_sha256
from .evaluator import adherence, attribute_distance, frechet_distance, kernel_inception_distance, load_or_train_evaluator, top_k
from .prepare import Preparer
from .response import gamma_response, response_times

CLASS_ATTRIBUTES = {"shapes": [0, 1], "toy2d": [0], "imagefolder": [0]}


class EvalSet:
    """Conditions, real samples and asked attributes for one repeat.

    mode "class": class labels only; "text": short prompts naming the asked attributes (the
    held-out combinations with `held_out`); "free-text": the data's own captions;
    "unconditional": no condition (a family that takes none)."""

    def __init__(self, dataset, preparer: Preparer, n: int, repeat: int, mode: str, held_out: bool = False):
        self.seeds = [repeat * 1_000_003 + k for k in range(n)]
        batch = dataset.batch(n, (77_777, repeat, 1 if held_out else 0))
        g = torch.Generator().manual_seed(31 + repeat)
        self.captions = None
        asked = None
        if mode == "class":
            if batch.attrs is not None:
                asked = torch.full_like(batch.attrs, -1)
                cols = CLASS_ATTRIBUTES[dataset.kind]
                asked[:, cols] = batch.attrs[:, cols]
            self.cond = preparer.cond(batch, None, labels_only=True)
        elif mode == "text":  # short prompts naming shape and colour
            if held_out:
                _, attrs = dataset.random_attrs(n, g, [c for c in dataset.held_out_combos])
            else:
                attrs = batch.attrs
            captions, asked = dataset.captions_for(attrs, g, detail=0)
            batch.captions, batch.attrs, batch.labels = captions, attrs, None
            self.captions = captions
            self.cond = self._text_only(preparer.cond(batch, None), n)
        elif mode == "free-text":
            batch.labels = None
            self.captions = list(batch.captions)
            self.cond = self._text_only(preparer.cond(batch, None), n)
        elif mode == "unconditional":  # nothing asked: only the distributions are compared
            self.cond = Cond(context=preparer.cond(batch, None, labels_only=True).context)
        else:
            raise ValueError(f"unknown evaluation mode {mode!r}")
        if self.cond.context is not None:
            self.cond = Cond(labels=self.cond.labels, text=self.cond.text, text_mask=self.cond.text_mask, context=preparer.plain_context(n))
        self.real = batch.x
        self.asked = asked
        self.mode = mode

    @staticmethod
    def _text_only(cond: Cond, n: int) -> Cond:
        return cond.drop(drop_labels=torch.ones(n, dtype=torch.bool)) if cond.labels is not None else cond


def denoiser_for(family: Family, sampler: str, steps: int, gamma: float):
    """(denoise, sampler function) for a row; pixel-space families clip x_hat to [-1, 1]."""
    if sampler in ("teacher-ddim", "teacher-dpmpp2m"):
        denoise = guided(family.model("teacher"), gamma)
        fn = SAMPLERS["ddim" if sampler == "teacher-ddim" else "dpmpp2m"]
    elif sampler == "stage1":
        denoise, fn = gamma_conditioned(family.model("stage1"), gamma), SAMPLERS["ddim"]
    else:
        stochastic = sampler == "distilled-stochastic"
        denoise = gamma_conditioned(family.student(steps, stochastic), gamma)
        fn = SAMPLERS["stochastic" if stochastic else "ddim"]
    return (clipped(denoise) if family.info.clip_x else denoise), fn


def generate(family: Family, sampler: str, steps: int, gamma: float, ev: EvalSet, batch_size: int, shape: tuple) -> torch.Tensor:
    denoise, fn = denoiser_for(family, sampler, steps, gamma)
    grid = schedule.time_grid(steps)
    out = []
    n = len(ev.seeds)
    cond = ev.cond.to(family.device)
    with torch.no_grad():
        for lo in range(0, n, batch_size):
            idx = slice(lo, min(n, lo + batch_size))
            noise = SeededNoise(ev.seeds[idx], family.device)
            z = noise.randn(shape)
            z = fn(denoise, z, cond.index(idx), grid=grid, noise=noise)
            out.append((family.autoencoder.decode(z).clamp(-1, 1) if family.info.resolution else z).float().cpu())
    return torch.cat(out)


def sampler_plan(recipe: Recipe, family: Family) -> list[tuple[str, int]]:
    e = recipe.evaluation
    plan = [("teacher-ddim", e.reference_steps)]
    plan += [("teacher-ddim", n) for n in e.teacher_steps if n != e.reference_steps]
    plan += [("teacher-dpmpp2m", n) for n in e.dpm_steps]
    if "stage1" in family.info.checkpoints and e.stage1_steps:
        plan.append(("stage1", e.stage1_steps))
    wanted = lambda n: not e.students or n in e.students  # noqa: E731
    plan += [("distilled", n) for n in sorted(family.info.distilled_steps, reverse=True) if wanted(n)]
    plan += [("distilled-stochastic", n) for n in sorted(family.info.stochastic_steps, reverse=True) if wanted(n)]
    return plan


def summary(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and standard deviation (ddof = 1) of the finite values; None where undefined."""
    arr = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(arr) == 0:
        return None, None
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def _attr_names(dataset, mode: str) -> list[int]:
    """Attributes that adherence does not ask for (background, size, position): compared as
    distributions; for an unconditional family, every attribute (nothing is asked)."""
    if mode not in ("class", "unconditional") or not getattr(dataset, "attributes", None):
        return []
    if mode == "unconditional":
        return list(range(len(dataset.attributes)))
    asked = set(CLASS_ATTRIBUTES[dataset.kind])
    return [a for a in range(len(dataset.attributes)) if a not in asked]


def evaluate(directory: Path, samples: int | None = None, repeats: int | None = None, device: str | None = None, resume: bool = True, reuse_teacher_rows: bool = False) -> dict:
    """Evaluate the family in `directory` and write metrics.json. A killed run continues from
    its finished rows (training/eval_progress.py) unless `resume` is False.

    `reuse_teacher_rows`: the teacher's rows (and its text-adherence rows) are taken from the
    metrics.json already in `directory`, which must come from an evaluation of the same teacher
    weights with the same samples, repeats and reference; only the students are sampled (the
    teacher's rows cost most of a table: its reference alone takes 2 x reference_steps
    evaluations per image). The students' RMSE to the reference is then left empty at a
    gamma whose reference samples a resumed run has not already drawn."""
    directory = Path(directory)
    recipe_path = directory / "recipe.json"
    if not recipe_path.is_file():
        raise CheckpointError(f"{directory} is not a fewstep run directory (no recipe.json)")
    recipe = Recipe.from_json(recipe_path.read_text())
    try:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise CheckpointError(f"evaluate: --device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"evaluate: device {device} asked for, but CUDA is not available")
    print(f"[evaluate] {directory} on {device}", flush=True)
    family = Family(directory, device=device)
    if "teacher" not in family.info.checkpoints:
        raise CheckpointError(f"{directory}: no teacher checkpoint yet; finish training first")
    e = recipe.evaluation
    samples, repeats = samples or e.samples, repeats or e.repeats
    if samples < 2 or repeats < 1:
        raise CheckpointError("evaluate: --samples must be >= 2 and --repeats >= 1")
    dataset = build_dataset(recipe.data)
    preparer = Preparer.for_family(dataset, family, device)
    mode = evaluation_mode(family, dataset)
    evaluator = load_or_train_evaluator(directory, dataset, e.evaluator_steps, preparer.text_encoder if mode == "free-text" else None)
    sets = [EvalSet(dataset, preparer, samples, r, mode) for r in range(repeats)]
    held = held_out_dataset(recipe) if mode == "free-text" else None
    names = CaptionIndex(dataset, held, preparer, evaluator) if mode == "free-text" and evaluator.has_text else None
    shape = _z_shape(family)
    started = time.time()
    settings = {"evaluation": to_dict(e), "samples": samples, "repeats": repeats, "data": to_dict(recipe.data), "version": 1}
    progress = EvalProgress(directory, fingerprint(directory, family.info.checkpoints, settings), resume=resume)
    if progress.parts:
        print(f"[evaluate] resuming: {len(progress.parts)} finished parts in {progress.root}", flush=True)

    real_feats = [evaluator.features(s.real) for s in sets]
    floor_sets = [EvalSet(dataset, preparer, samples, repeats + 1 + r, mode) for r in range(max(2, repeats))]
    floor_feats = [evaluator.features(s.real) for s in floor_sets]
    floor_fid = [frechet_distance(f, real_feats[r % repeats]) for r, f in enumerate(floor_feats)]
    floor_kid = [kernel_inception_distance(f, real_feats[r % repeats]) for r, f in enumerate(floor_feats)]
    # attribute distributions are compared as the evaluator sees them, in samples and real images alike
    other_attrs = _attr_names(dataset, mode)
    real_pred = [evaluator.classify(s.real) for s in sets] if mode != "free-text" else []
    floor_pred = [evaluator.classify(f.real) for f in floor_sets] if other_attrs else []
    floor_attr = {}
    for a in other_attrs:
        k = len(dataset.attributes[a].values)
        floor_attr[dataset.attributes[a].name] = summary([attribute_distance(f[:, a], real_pred[r % repeats][:, a], k) for r, f in enumerate(floor_pred)])
    responses = _responses(family, recipe, sets[0], preparer)
    if mode == "free-text":  # the evaluator's own ceiling: adherence of the real images
        adherence_real = names.top(sets[0].real, sets[0].captions)[1] if names is not None else None
    else:
        adherence_real = adherence(real_pred[0], sets[0].asked) if sets[0].asked is not None else None

    previous = _previous_teacher_rows(directory, family, samples, repeats, e) if reuse_teacher_rows else None
    rows = []
    plan = sampler_plan(recipe, family)
    for gamma in e.guidance:
        references = None
        for sampler, steps in plan:
            part = f"row/{gamma}/{sampler}/{steps}"
            if part in progress:
                rows.append(progress.get(part))
                continue
            if previous is not None and sampler.startswith("teacher"):
                key = (sampler, steps, float(gamma))
                if key not in previous["rows"]:
                    raise CheckpointError(f"evaluate --reuse-teacher-rows: the earlier metrics.json has no row {sampler} {steps} steps at gamma {gamma}")
                rows.append(previous["rows"][key])
                continue
            if references is None:
                saved = progress.tensors(f"reference-{gamma}") if previous is not None else None
                references = (saved if saved is not None and len(saved) == len(sets) else [None] * len(sets)) if previous is not None else _references(progress, family, e, gamma, sets, shape)
            cells: dict[str, list] = {"fid": [], "kid": [], "adherence": [], "rmse_to_reference": []}
            if names is not None:
                cells["adherence_top1"] = []
            attr_tv: dict[str, list] = {dataset.attributes[a].name: [] for a in other_attrs}
            for r, s in enumerate(sets):
                x = references[r] if (sampler, steps) == ("teacher-ddim", e.reference_steps) else generate(family, sampler, steps, gamma, s, e.batch_size, shape)
                feats = evaluator.features(x)
                cells["fid"].append(frechet_distance(feats, real_feats[r]))
                cells["kid"].append(kernel_inception_distance(feats, real_feats[r]))
                if mode == "free-text":
                    top1, top5 = names.top(x, s.captions) if names is not None else (None, None)
                    cells["adherence"].append(top5)
                    if names is not None:
                        cells["adherence_top1"].append(top1)
                else:
                    predicted = evaluator.classify(x)
                    cells["adherence"].append(adherence(predicted, s.asked) if s.asked is not None else None)
                    for a in other_attrs:
                        attr_tv[dataset.attributes[a].name].append(attribute_distance(predicted[:, a], real_pred[r][:, a], len(dataset.attributes[a].values)))
                stochastic = sampler == "distilled-stochastic"
                cells["rmse_to_reference"].append(None if stochastic or references[r] is None else float((x - references[r]).flatten(1).pow(2).mean(1).sqrt().mean()))
            row = {"sampler": sampler, "steps": steps, "evals": network_evaluations(steps, sampler.startswith("teacher")), "guidance": gamma}
            for cell, values in cells.items():
                row[cell], row[f"{cell}_std"] = summary(values)
            if attr_tv:
                row["attribute_tv"] = {k: summary(v) for k, v in attr_tv.items()}  # [mean, std]
            name = "stage1" if sampler == "stage1" else (f"distilled-{steps}" if sampler == "distilled" else None)
            if name in responses:
                row["gamma_response"] = responses[name]
            row = finite(row)
            progress.put(part, row)
            rows.append(row)
            print(f"[evaluate] gamma={gamma:<4} {sampler:22s} steps={steps:<4} " + _line(row), flush=True)
    fid_floor, fid_floor_std = summary(floor_fid)
    kid_floor, kid_floor_std = summary(floor_kid)
    metrics = {
        "family": family.info.family,
        "reference": {"sampler": "teacher-ddim", "steps": e.reference_steps, "evals": 2 * e.reference_steps},
        "samples_per_row": samples,
        "repeats": repeats,
        "feature_dim": int(real_feats[0].shape[1]),
        "fid_real_vs_real": fid_floor,
        "fid_real_vs_real_std": fid_floor_std,
        "kid_real_vs_real": kid_floor,
        "kid_real_vs_real_std": kid_floor_std,
        "attribute_tv_real_vs_real": floor_attr,
        "conditioning": mode,
        "adherence_measure": f"top-5 retrieval of the own caption among all {len(names.names)} names (adherence_top1: top-1)" if names is not None else "asked attributes found by the evaluator",
        "adherence_real": adherence_real,
        "gamma_response": responses,
        "device": str(device),
        "teacher_sha256": weights_sha256(directory, "teacher"),
        "rows": rows,
    }
    if previous is not None:
        metrics["teacher_rows_from"] = previous["note"]
    if family.info.resolution and family.info.distilled_steps:
        if "edits" not in progress:
            progress.put("edits", finite(_edits(family, dataset, sets[0], mode, min(256, samples))))
        metrics["edits"] = progress.get("edits")
    if family.info.autoencoder.get("kind", "identity") != "identity":  # the latent floor: real images through the autoencoder
        if "autoencoder_round_trip" not in progress:
            progress.put("autoencoder_round_trip", finite(_round_trip(family, evaluator, floor_sets, real_feats, e.batch_size)))
        metrics["autoencoder_round_trip"] = progress.get("autoencoder_round_trip")
    if names is not None:
        if "caption_retrieval" not in progress:
            progress.put("caption_retrieval", finite(_caption_retrieval(family, dataset, held, preparer, names, recipe, samples, shape)))
        metrics["caption_retrieval"] = progress.get("caption_retrieval")
        metrics["caption_names"] = {"all": len(names.names), "held_out": len(names.names) - names.seen}
    if mode == "class" and dataset.has_text and family.info.text_encoder and hasattr(dataset, "held_out_combos"):
        if "text_adherence" not in progress:
            reused = previous["text_adherence"] if previous is not None else None
            progress.put("text_adherence", finite(_text_adherence(family, dataset, preparer, evaluator, recipe, samples, shape, reused)))
        metrics["text_adherence"] = progress.get("text_adherence")
    metrics["seconds"] = round(time.time() - started, 1)
    metrics = finite(metrics)
    write_json(directory / "metrics.json", metrics)
    progress.finish()
    print(f"[evaluate] wrote {directory / 'metrics.json'} ({metrics['seconds']} s)")
    return metrics


def _previous_teacher_rows(directory: Path, family: Family, samples: int, repeats: int, e) -> dict:
    """The teacher's rows of the metrics.json in `directory`, checked to be comparable."""
    path = Path(directory) / "metrics.json"
    if not path.is_file():
        raise CheckpointError(f"evaluate --reuse-teacher-rows: {path} does not exist (no earlier evaluation to take the teacher's rows from)")
    old = json.loads(path.read_text())
    if old.get("teacher_rows_from"):  # a chain of reuse would hide where the rows came from
        note = old["teacher_rows_from"]
    else:
        note = f"an earlier evaluation on {old.get('device', '?')}"
    same = old.get("samples_per_row") == samples and old.get("repeats") == repeats and (old.get("reference") or {}).get("steps") == e.reference_steps
    if not same:
        raise CheckpointError(f"evaluate --reuse-teacher-rows: {path} was evaluated with {old.get('samples_per_row')} samples x {old.get('repeats')} repeats and a "
                              f"{(old.get('reference') or {}).get('steps')}-step reference; this evaluation asks for {samples} x {repeats} and {e.reference_steps}")
    if old.get("teacher_sha256") not in (None, weights_sha256(directory, "teacher")):
        raise CheckpointError(f"evaluate --reuse-teacher-rows: {path} evaluated another teacher (its weights changed since)")
    rows = {(r["sampler"], r["steps"], float(r["guidance"])): r for r in old.get("rows", []) if r["sampler"].startswith("teacher")}
    text = {(r["sampler"], r["steps"], float(r["guidance"])): r for r in old.get("text_adherence", []) if r["sampler"].startswith("teacher")}
    return {"rows": rows, "text_adherence": text, "note": note}


def _references(progress: EvalProgress, family: Family, e, gamma: float, sets: list, shape: tuple) -> list[torch.Tensor]:
    """The reference samples of every seed set at `gamma`: from the progress folder when a
    killed run already drew them, else drawn and saved there."""
    key = f"reference-{gamma}"
    saved = progress.tensors(key)
    if saved is not None and len(saved) == len(sets):
        return saved
    references = [generate(family, "teacher-ddim", e.reference_steps, gamma, s, e.batch_size, shape) for s in sets]
    progress.save_tensors(key, references)
    return references


def finite(value):
    """The same structure with every non-finite float (an undefined measure) as None: valid JSON."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _line(row: dict) -> str:
    def f(key, spec):
        v, sd = row.get(key), row.get(f"{key}_std")
        return "–" if v is None else (format(v, spec) + ("" if sd is None else "±" + format(sd, spec)))

    out = f"fid={f('fid', '.3f')} kid={f('kid', '.4f')} adherence={f('adherence', '.3f')} rmse={f('rmse_to_reference', '.4f')}"
    if "gamma_response" in row:
        out += f" response={row['gamma_response']['mean']:.3f}"
    return out


def responses(directory: Path, device: str | None = None) -> dict:
    """The gamma response of every stage-1 and distilled student of a family, on the same batch
    (the first seed set's conditions) and in the same way as `evaluate` records it: a check that
    takes a minute where the whole evaluation takes hours on a CPU."""
    directory = Path(directory)
    recipe = Recipe.from_json((directory / "recipe.json").read_text()) if (directory / "recipe.json").is_file() else None
    if recipe is None:
        raise CheckpointError(f"{directory} is not a fewstep run directory (no recipe.json)")
    family = Family(directory, device=torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    dataset = build_dataset(recipe.data)
    preparer = Preparer.for_family(dataset, family, family.device)
    mode = evaluation_mode(family, dataset)
    with torch.no_grad():
        return _responses(family, recipe, EvalSet(dataset, preparer, 256, 0, mode), preparer)


def evaluation_mode(family: Family, dataset) -> str:
    """How the family is asked: by class when it takes classes, else by short prompts naming the
    attributes (data that can write them), else by the data's own captions."""
    if not family.info.class_names and not family.info.text_encoder:
        return "unconditional"
    if family.info.class_names or dataset.resolution is None:
        return "class"
    return "text" if hasattr(dataset, "captions_for") else "free-text"


def _responses(family: Family, recipe: Recipe, ev: EvalSet, preparer: Preparer) -> dict:
    """Gamma response (training/response.py) of the stage-1 student and each distilled student."""
    lo, hi = recipe.guidance_range
    if hi <= lo or ev.mode == "unconditional":  # no condition: guidance moves nothing to follow
        return {}
    names = {name: c["steps"] if c["role"] == "distilled" else None for name, c in family.info.checkpoints.items() if c["role"] in ("stage1", "distilled")}
    n = min(256, len(ev.seeds))
    x = family.autoencoder.encode(ev.real[:n].to(family.device)) if family.info.resolution else ev.real[:n].to(family.device)
    cond = ev.cond.index(slice(0, n)).to(family.device)
    teacher = family.model("teacher")
    return {name: gamma_response(family.model(name), teacher, x, cond, gamma_range=(lo, hi), times=response_times(steps), clip=family.info.clip_x) for name, steps in names.items()}


def _edits(family: Family, dataset, ev: EvalSet, mode: str, n: int) -> dict:
    masks = random_box_masks(n, dataset.resolution, torch.Generator().manual_seed(4242))
    labels = ev.cond.labels[:n].tolist() if mode == "class" and ev.cond.labels is not None else None
    prompts = ev.captions[:n] if ev.captions else None
    if labels is None and prompts is None:
        return {}
    out = evaluate_edits(family, ev.real[:n], masks, prompts, labels)
    for r in out["img2img"]:
        print(f"[evaluate] img2img steps={r['steps']} strength={r['strength']:.1f} evaluations={r['evaluations']} rmse_to_input={r['rmse_to_input']:.4f}", flush=True)
    for r in out["inpaint"]:
        print(f"[evaluate] inpaint steps={r['steps']} kept_max_abs_diff={r['kept_max_abs_diff']:.2e} border_step={r['border_step']:.4f} (real {r['border_step_real']:.4f})", flush=True)
    return out


def _text_adherence(family, dataset, preparer, evaluator, recipe, samples, shape, reused: dict | None = None) -> list[dict]:
    """Adherence to short prompts ("a blue triangle") on seen vs held-out shape/colour pairs;
    the teacher's rows from `reused` ((sampler, steps, gamma) -> row) when given."""
    out = []
    e = recipe.evaluation
    plan = [("teacher-ddim", 16)] + [("distilled", n) for n in sorted(family.info.distilled_steps, reverse=True) if n in (4, 1)]
    n = min(samples, 512)
    sets = {"seen": EvalSet(dataset, preparer, n, 0, "text"), "held_out": EvalSet(dataset, preparer, n, 0, "text", held_out=True)}
    for gamma in [g for g in e.guidance if g in (0.0, 1.0, 4.0)]:
        for sampler, steps in plan:
            if reused is not None and sampler.startswith("teacher") and (sampler, steps, float(gamma)) in reused:
                out.append(reused[(sampler, steps, float(gamma))])
                continue
            row = {"sampler": sampler, "steps": steps, "guidance": gamma}
            for split, s in sets.items():
                x = generate(family, sampler, steps, gamma, s, e.batch_size, shape)
                row[split] = adherence(evaluator.classify(x), s.asked)
            out.append(row)
            print(f"[evaluate] text gamma={gamma:<4} {sampler:14s} steps={steps:<3} seen={row['seen']:.3f} held_out={row['held_out']:.3f}", flush=True)
    return out


class CaptionIndex:
    """Every caption the family is asked with (the training names, then the held-out ones) in
    the evaluator's joint space: adherence to free text is the retrieval of an image's own
    caption among all of them (top-1 and top-5), as a user who names an emoji expects it."""

    def __init__(self, dataset, held, preparer: Preparer, evaluator):
        seen = sorted(set(dataset.captions))
        self.seen = len(seen)
        self.names = seen + sorted(set(held.captions) - set(seen)) if held is not None else seen
        self.position = {c: k for k, c in enumerate(self.names)}
        text, mask = preparer.text_encoder(self.names)
        self.space = evaluator.caption_space(text, mask)
        self.evaluator = evaluator

    def top(self, x: torch.Tensor, captions: list[str]) -> tuple[float, float]:
        ranks = self.evaluator.ranks(x, self.space, torch.tensor([self.position[c] for c in captions]))
        return top_k(ranks, 1), top_k(ranks, 5)


def held_out_dataset(recipe: Recipe):
    """The names held out of training (`python -m training data emoji` writes them beside the
    training folder, as FOLDER/held_out), or None when the data has no such folder."""
    root = recipe.data.root
    if recipe.data.kind != "imagefolder" or not root:
        return None
    folder = Path(root).parent / "held_out"
    if Path(root).name != "train" or not (folder / "metadata.jsonl").is_file():
        return None
    return build_dataset(dataclasses.replace(recipe.data, root=str(folder)))


def _round_trip(family: Family, evaluator, floor_sets: list, real_feats: list, batch_size: int) -> dict:
    """The autoencoder's floor: independent real images encoded and decoded, against each seed
    set's real images, as the samplers' images are (a perfect latent generator's FID)."""
    fid, kid = [], []
    with torch.no_grad():
        for r, s in enumerate(floor_sets[: len(real_feats)]):
            x = torch.cat([family.autoencoder.decode(family.autoencoder.encode(c.to(family.device))).clamp(-1, 1).float().cpu() for c in s.real.split(batch_size)])
            feats = evaluator.features(x)
            fid.append(frechet_distance(feats, real_feats[r]))
            kid.append(kernel_inception_distance(feats, real_feats[r]))
    out = {}
    out["fid"], out["fid_std"] = summary(fid)
    out["kid"], out["kid_std"] = summary(kid)
    print(f"[evaluate] autoencoder round trip: fid={out['fid']:.3f} kid={out['kid']:.4f}", flush=True)
    return out


def _caption_retrieval(family, dataset, held, preparer, names: CaptionIndex, recipe, samples, shape) -> list[dict]:
    """Top-1 / top-5 retrieval among all names for prompts of seen and held-out names."""
    e = recipe.evaluation
    n = min(samples, 512)
    sets = {"seen": EvalSet(dataset, preparer, n, 0, "free-text")}
    if held is not None:
        sets["held_out"] = EvalSet(held, preparer, n, 0, "free-text")
    plan = [("real", 0), ("teacher-ddim", 16)] + [("distilled", k) for k in sorted(family.info.distilled_steps, reverse=True) if k in (4, 1)]
    out = []
    for gamma in [g for g in e.guidance if g in (0.0, 1.0, 4.0)]:
        for sampler, steps in plan:
            if sampler == "real" and gamma != e.guidance[0]:
                continue
            row = {"sampler": sampler, "steps": steps, "guidance": None if sampler == "real" else gamma}
            for split, s in sets.items():
                x = s.real if sampler == "real" else generate(family, sampler, steps, gamma, s, e.batch_size, shape)
                row[f"{split}_top1"], row[f"{split}_top5"] = names.top(x, s.captions)
            out.append(row)
            print(f"[evaluate] names gamma={row['guidance']} {sampler:14s} steps={steps:<3} " + " ".join(f"{k}={v:.3f}" for k, v in row.items() if k.endswith(("top1", "top5"))), flush=True)
    return out


def _z_shape(family: Family) -> tuple:
    info = family.info
    teacher_net = json.loads((family.directory / "teacher" / "config.json").read_text())["network"]
    if info.resolution is None:
        return (teacher_net["channels"],)
    return (teacher_net["channels"], teacher_net["resolution"], teacher_net["resolution"])
