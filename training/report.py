"""`python -m training report DIR --out DOCS`: a readable report of an evaluated family.

report.md holds a table shaped like Table 1 of Meng et al. (2023) (rows: sampler and steps
with evaluations per image; columns: gamma; cells: FID / adherence / RMSE to the reference,
with their seed-to-seed spread), the targets of the "quality table" issue as met or missed,
adherence on held-out prompts, and links to the figures written beside it: FID against
evaluations per image, FID against adherence as gamma varies, and sample grids.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from model.family import Family  # noqa: E402
from model.files import CheckpointError  # noqa: E402
from model.schedule import time_grid  # noqa: E402
from model.noise import SeededNoise  # noqa: E402

from .config import Recipe  # noqa: E402
from .data import build_dataset  # noqa: E402
from .evaluate import EvalSet, _z_shape, denoiser_for, evaluation_mode  # noqa: E402
from .prepare import Preparer  # noqa: E402

LABELS = {
    "teacher-ddim": "DDIM+CFG (teacher)", "teacher-dpmpp2m": "DPM-Solver++(2M)+CFG (teacher)", "stage1": "stage-1 student, DDIM",
    "distilled": "distilled", "distilled-stochastic": "distilled, stochastic",
}
ORDER = list(LABELS)
TARGET_GAMMAS = (0.0, 1.0, 4.0)
# how much worse (FID) the teacher must be at 8 evaluations than the 4-step student, per family (issues 9 and 16)
TEACHER_AT_8_FACTOR = {"emoji": 1.5}


def _rows(metrics: dict) -> dict:
    return {(r["sampler"], r["steps"], r["guidance"]): r for r in metrics["rows"]}


def _pm(value, std, spec: str) -> str:
    if value is None:
        return "–"
    return format(value, spec) + ("" if std is None else "±" + format(std, spec))


def _fmt(r: dict | None) -> str:
    if r is None:
        return "–"
    return f"{_pm(r['fid'], r.get('fid_std'), '.2f')} / {_pm(r.get('kid'), r.get('kid_std'), '.3g')} / {_pm(r.get('adherence'), None, '.3f')} / {_pm(r.get('rmse_to_reference'), None, '.3f')}"


def table(metrics: dict) -> str:
    rows = _rows(metrics)
    gammas = sorted({g for _, _, g in rows})
    configs = sorted({(s, n) for s, n, _ in rows}, key=lambda c: (ORDER.index(c[0]), c[1]))
    out = ["| sampler | steps | evals/image | " + " | ".join(f"γ = {g:g}" for g in gammas) + " |", "|---|---|---|" + "---|" * len(gammas)]
    for s, n in configs:
        evals = next(r["evals"] for (s2, n2, _), r in rows.items() if (s2, n2) == (s, n))
        out.append(f"| {LABELS[s]} | {n} | {evals} | " + " | ".join(_fmt(rows.get((s, n, g))) for g in gammas) + " |")
    return "\n".join(out)


def attribute_table(metrics: dict) -> str:
    """Distances (total variation) of the attributes that adherence ignores, at each gamma."""
    rows = [r for r in metrics["rows"] if r.get("attribute_tv")]
    if not rows:
        return ""
    names = list(rows[0]["attribute_tv"])
    floor = metrics.get("attribute_tv_real_vs_real", {})
    out = ["| sampler | steps | γ | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    cell = lambda v: _pm(*(v if isinstance(v, (list, tuple)) else (v, None)), ".3f") if v is not None else "–"  # noqa: E731
    out.append("| real vs real (floor) | | | " + " | ".join(cell(floor.get(n)) for n in names) + " |")
    for r in sorted(rows, key=lambda r: (r["guidance"], ORDER.index(r["sampler"]), r["steps"])):
        if r["sampler"] == "teacher-dpmpp2m" or (r["sampler"] == "teacher-ddim" and r["steps"] not in (4, metrics["reference"]["steps"])):
            continue
        out.append(f"| {LABELS[r['sampler']]} | {r['steps']} | {r['guidance']:g} | " + " | ".join(cell(r["attribute_tv"][n]) for n in names) + " |")
    return "\n".join(out)


def targets(metrics: dict) -> list[tuple[str, bool | None, str]]:
    """The targets of the built-in family, at each gamma of TARGET_GAMMAS that was evaluated,
    against the teacher's many-step DDIM+CFG reference."""
    rows = _rows(metrics)
    ref_steps = metrics["reference"]["steps"]
    out = []

    def check(name, a, b, ok, text, key="fid"):
        if a is None or b is None or a.get(key) is None or b.get(key) is None:
            out.append((name, None, "not measured"))
        else:
            out.append((name, bool(ok(a, b)), text(a, b)))

    trip = metrics.get("autoencoder_round_trip")
    if trip is not None:
        ref_fids = [r["fid"] for (s, n, _), r in rows.items() if (s, n) == ("teacher-ddim", ref_steps) and r.get("fid") is not None]
        if trip.get("fid") is None or not ref_fids:
            out.append(("autoencoder round trip FID <= 25% of the reference's", None, "not measured"))
        else:
            best = min(ref_fids)
            out.append(("autoencoder round trip FID <= 25% of the reference's (its best γ)", trip["fid"] <= 0.25 * best, f"{trip['fid']:.2f}±{trip.get('fid_std') or 0:.2f} vs 0.25 x {best:.2f} = {0.25 * best:.2f} (ratio {trip['fid'] / best:.2f})"))
    factor = TEACHER_AT_8_FACTOR.get(metrics.get("family"), 1.2)
    responses = metrics.get("gamma_response", {})
    for name, goal in (("stage1", 0.8), ("distilled-4", 0.7)):
        r = responses.get(name)
        ok = None if r is None or r.get("mean") is None else r["mean"] >= goal
        out.append((f"gamma response of {name} >= {goal}", ok, "not measured" if ok is None else f"{r['mean']:.3f} (" + ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k != "mean" and v is not None) + ")"))
    gammas = [g for g in TARGET_GAMMAS if any(k[2] == g for k in rows)]
    if len(gammas) > 1:
        lo, hi = min(gammas), max(gammas)
        d_lo, d_hi, t_lo, t_hi = rows.get(("distilled", 4, lo)), rows.get(("distilled", 4, hi)), rows.get(("teacher-ddim", ref_steps, lo)), rows.get(("teacher-ddim", ref_steps, hi))
        if None not in (d_lo, d_hi, t_lo, t_hi) and None not in (d_lo["adherence"], d_hi["adherence"], t_lo["adherence"], t_hi["adherence"]):
            gain_d, gain_t = d_hi["adherence"] - d_lo["adherence"], t_hi["adherence"] - t_lo["adherence"]
            out.append((f"distilled 4-step adherence rises with γ ({lo:g} -> {hi:g}) by >= half the reference's gain", gain_d >= 0.5 * gain_t, f"{d_lo['adherence']:.3f} -> {d_hi['adherence']:.3f} (+{gain_d:.3f}); reference {t_lo['adherence']:.3f} -> {t_hi['adherence']:.3f} (+{gain_t:.3f})"))
    ratio = lambda a, b, k: f"{a['fid']:.2f}±{a['fid_std'] or 0:.2f} vs {k:g} x {b['fid']:.2f} = {k * b['fid']:.2f} (ratio {a['fid'] / b['fid']:.2f})"  # noqa: E731
    for gamma in gammas:
        get = lambda s, n: rows.get((s, n, gamma))  # noqa: E731
        ref = get("teacher-ddim", ref_steps)
        g = f"γ={gamma:g}: "
        check(g + "distilled 4-step adherence >= 0.95 x reference", get("distilled", 4), ref, lambda a, b: a["adherence"] >= 0.95 * b["adherence"], lambda a, b: f"{a['adherence']:.3f} vs 0.95 x {b['adherence']:.3f} = {0.95 * b['adherence']:.3f}", key="adherence")
        check(g + "distilled 4-step FID <= 1.2 x reference", get("distilled", 4), ref, lambda a, b: a["fid"] <= 1.2 * b["fid"], lambda a, b: ratio(a, b, 1.2))
        check(g + "distilled 1-step FID <= 2.5 x reference", get("distilled", 1), ref, lambda a, b: a["fid"] <= 2.5 * b["fid"], lambda a, b: ratio(a, b, 2.5))
        spread = lambda a, b: (a["fid_std"] or 0) + (b["fid_std"] or 0)  # noqa: E731
        for s in ("teacher-ddim", "teacher-dpmpp2m"):
            check(g + f"{LABELS[s]} 4 steps (8 evals): FID >= {factor:g} x distilled 4-step, by more than the spread", get(s, 4), get("distilled", 4), lambda a, b: a["fid"] >= factor * b["fid"] and a["fid"] - b["fid"] > spread(a, b), lambda a, b: ratio(a, b, factor) + f", gap {a['fid'] - b['fid']:.2f} vs spread {spread(a, b):.2f}")
        if any(k[:2] == ("teacher-ddim", 1) for k in rows):
            check(g + "DDIM+CFG 1 step (2 evals): FID >= 3 x distilled 1-step", get("teacher-ddim", 1), get("distilled", 1), lambda a, b: a["fid"] >= 3 * b["fid"], lambda a, b: ratio(a, b, 3))
        check(g + "stochastic 4-step FID <= deterministic 4-step", get("distilled-stochastic", 4), get("distilled", 4), lambda a, b: a["fid"] <= b["fid"], lambda a, b: f"{a['fid']:.2f}±{a['fid_std'] or 0:.2f} vs {b['fid']:.2f}±{b['fid_std'] or 0:.2f}")
    return out


def plot_fid_vs_evals(metrics: dict, path: Path) -> None:
    rows = _rows(metrics)
    gammas = sorted({g for _, _, g in rows})
    fig, axes = plt.subplots(1, len(gammas), figsize=(4 * len(gammas), 3.6), squeeze=False)
    for ax, g in zip(axes[0], gammas):
        for s in ORDER:
            pts = sorted((r["evals"], r["fid"], r["fid_std"] or 0.0) for (s2, _, g2), r in rows.items() if s2 == s and g2 == g and r["fid"] is not None)
            if pts:
                e, f, sd = zip(*pts)
                ax.errorbar(e, f, yerr=sd, marker="o", label=LABELS[s], capsize=2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"γ = {g:g}")
        ax.set_xlabel("network evaluations per image")
    axes[0][0].set_ylabel("FID (ours)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_fid_vs_adherence(metrics: dict, path: Path) -> None:
    rows = _rows(metrics)
    configs = [("teacher-ddim", metrics["reference"]["steps"])] + [(s, n) for s, n in sorted({(s, n) for s, n, _ in rows}) if s.startswith("distilled") and n in (1, 4, 8)]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for s, n in configs:
        pts = sorted((g, r["adherence"], r["fid"]) for (s2, n2, g), r in rows.items() if (s2, n2) == (s, n) and r["adherence"] is not None and r["fid"] is not None)
        if not pts:
            continue
        _, adh, fid = zip(*pts)
        ax.plot(adh, fid, marker="o", label=f"{LABELS[s]}, {n} steps")
        for g, a, f in pts:
            ax.annotate(f"{g:g}", (a, f), fontsize=6, textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("adherence")
    ax.set_ylabel("FID (ours)")
    ax.set_title("quality/diversity trade-off as γ varies (labels: γ)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample_grid(directory: Path, path: Path, gamma: float, n: int = 8) -> None:
    """Rows: samplers and steps; columns: the same conditions and seeds for every row."""
    family = Family(directory)
    recipe = Recipe.from_json((directory / "recipe.json").read_text())
    dataset = build_dataset(recipe.data)
    preparer = Preparer.for_family(dataset, family, "cpu")
    ev = EvalSet(dataset, preparer, n, 424_242, evaluation_mode(family, dataset))
    shape = _z_shape(family)
    plan = [("teacher-ddim", recipe.evaluation.reference_steps), ("teacher-ddim", 4), ("teacher-dpmpp2m", 4)]
    plan += [("distilled", k) for k in sorted(family.info.distilled_steps, reverse=True)]
    plan += [("distilled-stochastic", k) for k in sorted(family.info.stochastic_steps, reverse=True)]
    fig, axes = plt.subplots(len(plan), n, figsize=(n * 0.9 + 1.6, len(plan) * 0.95), squeeze=False)
    for i, (s, k) in enumerate(plan):
        denoise, fn = denoiser_for(family, s, k, gamma)
        noise = SeededNoise(ev.seeds)
        with torch.no_grad():
            x = family.autoencoder.decode(fn(denoise, noise.randn(shape), ev.cond, grid=time_grid(k), noise=noise)).clamp(-1, 1)
        for j in range(n):
            ax = axes[i][j]
            ax.imshow(((x[j].permute(1, 2, 0) + 1) / 2).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"{s.replace('teacher-', '')}\n{k}", fontsize=6, rotation=0, ha="right", va="center")
            if i == 0 and family.info.class_names and ev.cond.labels is not None:
                ax.set_title(family.info.class_names[int(ev.cond.labels[j])], fontsize=6)
            elif i == 0 and ev.captions:
                ax.set_title(_short(ev.captions[j]), fontsize=5)
    fig.suptitle(f"γ = {gamma:g}; same {'classes' if family.info.class_names else 'prompts'} and seeds in every row", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _short(caption: str, width: int = 16) -> str:
    name = caption.removeprefix("an emoji of ")
    return name if len(name) <= width else name[: width - 1] + "…"


def guidance_strip(directory: Path, path: Path, n_prompts: int = 6, gammas=(0.0, 1.0, 2.0, 3.0, 4.0), seed: int = 7) -> None:
    """One seed per prompt at each gamma: the teacher's reference DDIM+CFG beside the 4-step
    student (a text family's prompts, drawn from its data)."""
    family = Family(directory)
    recipe = Recipe.from_json((directory / "recipe.json").read_text())
    dataset = build_dataset(recipe.data)
    preparer = Preparer.for_family(dataset, family, "cpu")
    ev = EvalSet(dataset, preparer, n_prompts, 515_151, evaluation_mode(family, dataset))
    shape = _z_shape(family)
    plan = [("teacher-ddim", recipe.evaluation.reference_steps)] + ([("distilled", 4)] if 4 in family.info.distilled_steps else [])
    fig, axes = plt.subplots(n_prompts, len(plan) * len(gammas), figsize=(len(plan) * len(gammas) * 0.9 + 1.8, n_prompts * 0.95), squeeze=False)
    for p, (s, k) in enumerate(plan):
        for q, gamma in enumerate(gammas):
            denoise, fn = denoiser_for(family, s, k, gamma)
            noise = SeededNoise([seed] * n_prompts)
            with torch.no_grad():
                x = family.autoencoder.decode(fn(denoise, noise.randn(shape), ev.cond, grid=time_grid(k), noise=noise)).clamp(-1, 1)
            for j in range(n_prompts):
                ax = axes[j][p * len(gammas) + q]
                ax.imshow(((x[j].permute(1, 2, 0) + 1) / 2).numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_title(f"{s.replace('teacher-', '')} {k}\nγ={gamma:g}", fontsize=5)
                if p == q == 0:
                    ax.set_ylabel(_short(ev.captions[j]) if ev.captions else "", fontsize=5, rotation=0, ha="right", va="center")
    fig.suptitle("one seed per prompt, γ from 0 to 4", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def retrieval_table(metrics: dict) -> str:
    rows = metrics.get("caption_retrieval") or []
    if not rows:
        return ""
    splits = [k[: -len("_top1")] for k in rows[0] if k.endswith("_top1")]
    out = ["| sampler | steps | γ | " + " | ".join(f"{sp.replace('_', '-')} top-1 | {sp.replace('_', '-')} top-5" for sp in splits) + " |", "|---|---|---|" + "---|---|" * len(splits)]
    for r in rows:
        label = "real images" if r["sampler"] == "real" else LABELS[r["sampler"]]
        cells = " | ".join(f"{_pm(r.get(sp + '_top1'), None, '.3f')} | {_pm(r.get(sp + '_top5'), None, '.3f')}" for sp in splits)
        out.append(f"| {label} | {r['steps'] or ''} | {'' if r['guidance'] is None else format(r['guidance'], 'g')} | {cells} |")
    return "\n".join(out)


def write_report(directory: Path, out: Path) -> Path:
    directory, out = Path(directory), Path(out)
    if not (directory / "metrics.json").is_file():
        raise CheckpointError(f"{directory} holds no metrics.json: evaluate it first (`python -m training evaluate {directory}`)")
    metrics = json.loads((directory / "metrics.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    name = metrics["family"]
    plot_fid_vs_evals(metrics, out / f"{name}-fid-vs-evals.png")
    plot_fid_vs_adherence(metrics, out / f"{name}-fid-vs-adherence.png")
    gammas = sorted({r["guidance"] for r in metrics["rows"]})
    grids = [g for g in gammas if g in (0.0, 1.0, 4.0)] or gammas[:1]
    for g in grids:
        sample_grid(directory, out / f"{name}-samples-gamma{g:g}.png", g)
    strip = bool(metrics.get("caption_retrieval"))
    if strip:
        guidance_strip(directory, out / f"{name}-guidance-strip.png")
    floor = f"FID {_pm(metrics['fid_real_vs_real'], metrics.get('fid_real_vs_real_std'), '.2f')}"
    if metrics.get("kid_real_vs_real") is not None:
        floor += f", KID {_pm(metrics['kid_real_vs_real'], metrics.get('kid_real_vs_real_std'), '.3g')}"
    lines = [
        f"# {name}: distilled samplers against the teacher",
        "",
        f"Generated by `python -m training report {directory} --out {out}` from `metrics.json`.",
        f"{metrics['samples_per_row']} samples per row and seed set, {metrics['repeats']} independent seed sets; "
        f"each cell is the mean ± the standard deviation across seed sets (ddof = 1). Features: {metrics.get('feature_dim', '?')}-d, from the family's own evaluator network. "
        f"Reference: the teacher's {metrics['reference']['steps']}-step DDIM+CFG. "
        f"The noise floor (independent real sets of the same size against each other): {floor}. "
        f"Adherence: {metrics.get('adherence_measure', 'asked attributes found by the evaluator')}"
        + (f" (real images: {metrics['adherence_real']:.3f})." if metrics.get("adherence_real") is not None else "."),
        "",
    ]
    trip = metrics.get("autoencoder_round_trip")
    if trip:
        lines += [f"Latent family: its autoencoder's own floor (independent real images encoded and decoded, against the real sets) is FID {_pm(trip.get('fid'), trip.get('fid_std'), '.2f')}, "
                  f"KID {_pm(trip.get('kid'), trip.get('kid_std'), '.3g')}: no latent sampler can score below it.", ""]
    lines += [
        "## Table (cells: FID / KID / adherence / RMSE to reference)",
        "",
        "RMSE to the reference is left empty for stochastic rows: their fresh noise makes a per-sample distance meaningless."
        + (f" The teacher's rows come from {metrics['teacher_rows_from']} of the same teacher with the same samples, seeds and settings "
           "(`evaluate --reuse-teacher-rows`); the students' RMSE is left empty where that run did not redraw the reference." if metrics.get("teacher_rows_from") else ""),
        "",
        table(metrics),
        "",
    ]
    if metrics.get("gamma_response"):
        lines += ["## Gamma response", "", "How far a student's prediction moves between γ_min and γ_max, over the guided teacher's move (same z_t, condition and t); 1 follows the teacher, 0 ignores γ. "
                  "The stage-1 student is measured at t = 0.3, 0.5, 0.7; an N-step student at the points of its own grid nearest to them.", "",
                  "| student | response at t | mean |", "|---|---|---|"]
        for n, r in metrics["gamma_response"].items():
            at = ", ".join(f"{k[2:]}: {v:.3f}" for k, v in r.items() if k != "mean" and v is not None)
            lines.append(f"| {n} | {at} | {_pm(r.get('mean'), None, '.3f')} |")
        lines.append("")
    attrs = attribute_table(metrics)
    if attrs:
        lines += ["## What adherence does not ask for", "", "Total variation distance between the distributions of each attribute in the samples and in real images (0: the same distribution).", "", attrs, ""]
    edits = metrics.get("edits") or {}
    if edits.get("img2img"):
        lines += ["## img2img and inpainting", "", "img2img starts at exactly t = strength (one stage-1 step to the student's grid when the strength falls between grid points). RMSE of the output to the input image:", "",
                  "| steps | strength | evaluations | RMSE to input |", "|---|---|---|---|"]
        lines += [f"| {r['steps']} | {r['strength']:g} | {r['evaluations']} | {r['rmse_to_input']:.4f} |" for r in edits["img2img"]]
        lines += ["", "Inpainting (the known region is replaced in x̂ at every step): kept pixels and the mean step across the mask border, against real images:", "",
                  "| steps | max abs diff, kept pixels | border step | real images' border step |", "|---|---|---|---|"]
        lines += [f"| {r['steps']} | {r['kept_max_abs_diff']:.1e} | {r['border_step']:.4f} | {r['border_step_real']:.4f} |" for r in edits.get("inpaint", [])]
        lines.append("")
    lines += [
        "## Targets",
        "",
        "| target | result | figures |",
        "|---|---|---|",
    ]
    for t, ok, text in targets(metrics):
        lines.append(f"| {t} | {'met' if ok else ('missed' if ok is False else '–')} | {text} |")
    retrieval = retrieval_table(metrics)
    if retrieval:
        lines += ["", "## Caption retrieval: seen vs held-out names", "", f"Top-1 and top-5 retrieval of the prompt's own caption among all {metrics.get('caption_names', {}).get('all', '?')} names "
                  f"({metrics.get('caption_names', {}).get('held_out', '?')} of them held out), by the evaluator's joint image-caption space; held-out names never appeared in training, but each of their words did.", "", retrieval]
    if metrics.get("text_adherence"):
        lines += ["", "## Prompt adherence: seen vs held-out shape/colour pairs", "", "| sampler | steps | γ | seen | held out |", "|---|---|---|---|---|"]
        for r in metrics["text_adherence"]:
            lines.append(f"| {LABELS[r['sampler']]} | {r['steps']} | {r['guidance']:g} | {r['seen']:.3f} | {r['held_out']:.3f} |")
    lines += ["", "## Figures", "", f"![FID against evaluations]({name}-fid-vs-evals.png)", "", f"![FID against adherence]({name}-fid-vs-adherence.png)", ""]
    lines += [f"![samples at gamma {g:g}]({name}-samples-gamma{g:g}.png)\n" for g in grids]
    if strip:
        lines.append(f"![guidance strip]({name}-guidance-strip.png)\n")
    path = out / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path
