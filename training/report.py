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
from model.guidance import gamma_conditioned, guided  # noqa: E402
from model.noise import SeededNoise  # noqa: E402
from model.samplers import SAMPLERS  # noqa: E402

from .config import Recipe  # noqa: E402
from .data import build_dataset  # noqa: E402
from .evaluate import EvalSet, _z_shape  # noqa: E402
from .prepare import Preparer  # noqa: E402

LABELS = {"teacher-ddim": "DDIM+CFG (teacher)", "teacher-dpmpp2m": "DPM-Solver++(2M)+CFG (teacher)", "distilled": "distilled", "distilled-stochastic": "distilled, stochastic"}
ORDER = list(LABELS)


def _rows(metrics: dict) -> dict:
    return {(r["sampler"], r["steps"], r["guidance"]): r for r in metrics["rows"]}


def _fmt(r: dict | None) -> str:
    if r is None:
        return "–"
    return f"{r['fid']:.2f}±{r['fid_std']:.2f} / {r['adherence']:.3f} / {r['rmse_to_reference']:.3f}"


def table(metrics: dict) -> str:
    rows = _rows(metrics)
    gammas = sorted({g for _, _, g in rows})
    configs = sorted({(s, n) for s, n, _ in rows}, key=lambda c: (ORDER.index(c[0]), c[1]))
    out = ["| sampler | steps | evals/image | " + " | ".join(f"γ = {g:g}" for g in gammas) + " |", "|---|---|---|" + "---|" * len(gammas)]
    for s, n in configs:
        evals = next(r["evals"] for (s2, n2, _), r in rows.items() if (s2, n2) == (s, n))
        out.append(f"| {LABELS[s]} | {n} | {evals} | " + " | ".join(_fmt(rows.get((s, n, g))) for g in gammas) + " |")
    return "\n".join(out)


def targets(metrics: dict, gamma: float = 1.0) -> list[tuple[str, bool | None, str]]:
    """The issue's targets at gamma = 1 against the 256-step DDIM+CFG reference."""
    rows = _rows(metrics)
    ref = rows.get(("teacher-ddim", metrics["reference"]["steps"], gamma))
    get = lambda s, n: rows.get((s, n, gamma))  # noqa: E731
    out = []

    def check(name, a, b, ok, text):
        if a is None or b is None:
            out.append((name, None, "not measured"))
        else:
            out.append((name, ok(a, b), text(a, b)))

    check("distilled 4-step FID <= 1.2 x reference FID", get("distilled", 4), ref, lambda a, b: a["fid"] <= 1.2 * b["fid"], lambda a, b: f"{a['fid']:.3f} vs 1.2 x {b['fid']:.3f} = {1.2 * b['fid']:.3f} (ratio {a['fid'] / b['fid']:.2f})")
    check("distilled 1-step FID <= 2.5 x reference FID", get("distilled", 1), ref, lambda a, b: a["fid"] <= 2.5 * b["fid"], lambda a, b: f"{a['fid']:.3f} vs 2.5 x {b['fid']:.3f} = {2.5 * b['fid']:.3f} (ratio {a['fid'] / b['fid']:.2f})")
    check("distilled 4-step adherence >= 0.95 x reference", get("distilled", 4), ref, lambda a, b: a["adherence"] >= 0.95 * b["adherence"], lambda a, b: f"{a['adherence']:.3f} vs 0.95 x {b['adherence']:.3f} = {0.95 * b['adherence']:.3f}")
    for s in ("teacher-ddim", "teacher-dpmpp2m"):
        check(f"{LABELS[s]} 4 steps (8 evals): FID >= 2 x distilled 4-step", get(s, 4), get("distilled", 4), lambda a, b: a["fid"] >= 2 * b["fid"], lambda a, b: f"{a['fid']:.3f} vs 2 x {b['fid']:.3f} = {2 * b['fid']:.3f} (ratio {a['fid'] / b['fid']:.2f})")
    check("stochastic 4-step FID <= deterministic 4-step FID", get("distilled-stochastic", 4), get("distilled", 4), lambda a, b: a["fid"] <= b["fid"], lambda a, b: f"{a['fid']:.3f}±{a['fid_std']:.3f} vs {b['fid']:.3f}±{b['fid_std']:.3f}")
    return out


def plot_fid_vs_evals(metrics: dict, path: Path) -> None:
    rows = _rows(metrics)
    gammas = sorted({g for _, _, g in rows})
    fig, axes = plt.subplots(1, len(gammas), figsize=(4 * len(gammas), 3.6), squeeze=False)
    for ax, g in zip(axes[0], gammas):
        for s in ORDER:
            pts = sorted((r["evals"], r["fid"], r["fid_std"]) for (s2, _, g2), r in rows.items() if s2 == s and g2 == g)
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
        pts = sorted((g, r["adherence"], r["fid"]) for (s2, n2, g), r in rows.items() if (s2, n2) == (s, n))
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
    preparer = Preparer(dataset, family.autoencoder, family.info.text_len, "cpu", 0.0)
    ev = EvalSet(dataset, preparer, n, 424_242, "class" if dataset.num_classes else "text")
    shape = _z_shape(family)
    plan = [("teacher-ddim", 256), ("teacher-ddim", 4), ("teacher-dpmpp2m", 4)]
    plan += [("distilled", k) for k in sorted(family.info.distilled_steps, reverse=True)]
    plan += [("distilled-stochastic", k) for k in sorted(family.info.stochastic_steps, reverse=True)]
    fig, axes = plt.subplots(len(plan), n, figsize=(n * 0.9 + 1.6, len(plan) * 0.95), squeeze=False)
    for i, (s, k) in enumerate(plan):
        if s.startswith("teacher"):
            denoise, fn = guided(family.model("teacher"), gamma), SAMPLERS["ddim" if s == "teacher-ddim" else "dpmpp2m"]
        else:
            denoise = gamma_conditioned(family.student(k, s == "distilled-stochastic"), gamma)
            fn = SAMPLERS["stochastic" if s == "distilled-stochastic" else "ddim"]
        noise = SeededNoise(ev.seeds)
        with torch.no_grad():
            x = family.autoencoder.decode(fn(denoise, noise.randn(shape), ev.cond, steps=k, noise=noise)).clamp(-1, 1)
        for j in range(n):
            ax = axes[i][j]
            ax.imshow(((x[j].permute(1, 2, 0) + 1) / 2).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"{s.replace('teacher-', '')}\n{k}", fontsize=6, rotation=0, ha="right", va="center")
            if i == 0 and family.info.class_names and ev.cond.labels is not None:
                ax.set_title(family.info.class_names[int(ev.cond.labels[j])], fontsize=6)
    fig.suptitle(f"γ = {gamma:g}; same classes and seeds in every row", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(directory: Path, out: Path) -> Path:
    directory, out = Path(directory), Path(out)
    metrics = json.loads((directory / "metrics.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    name = metrics["family"]
    plot_fid_vs_evals(metrics, out / f"{name}-fid-vs-evals.png")
    plot_fid_vs_adherence(metrics, out / f"{name}-fid-vs-adherence.png")
    gammas = sorted({r["guidance"] for r in metrics["rows"]})
    grids = [g for g in gammas if g in (0.0, 1.0, 4.0)] or gammas[:1]
    for g in grids:
        sample_grid(directory, out / f"{name}-samples-gamma{g:g}.png", g)
    lines = [
        f"# {name}: distilled samplers against the teacher",
        "",
        f"Generated by `python -m training report {directory} --out {out}` from `metrics.json`.",
        f"{metrics['samples_per_row']} samples per row and seed set, {metrics['repeats']} independent seed sets; "
        f"each cell is mean ± spread (std across seed sets). Reference: the teacher's {metrics['reference']['steps']}-step DDIM+CFG. "
        f"FID between two independent real sets of the same size (the noise floor): {metrics['fid_real_vs_real']:.3f}.",
        "",
        "## Table (cells: FID / adherence / RMSE to reference)",
        "",
        table(metrics),
        "",
        "## Targets at γ = 1",
        "",
        "| target | result | figures |",
        "|---|---|---|",
    ]
    for t, ok, text in targets(metrics):
        lines.append(f"| {t} | {'met' if ok else ('missed' if ok is False else '–')} | {text} |")
    if metrics.get("text_adherence"):
        lines += ["", "## Prompt adherence: seen vs held-out shape/colour pairs", "", "| sampler | steps | γ | seen | held out |", "|---|---|---|---|---|"]
        for r in metrics["text_adherence"]:
            lines.append(f"| {LABELS[r['sampler']]} | {r['steps']} | {r['guidance']:g} | {r['seen']:.3f} | {r['held_out']:.3f} |")
    lines += ["", "## Figures", "", f"![FID against evaluations]({name}-fid-vs-evals.png)", "", f"![FID against adherence]({name}-fid-vs-adherence.png)", ""]
    lines += [f"![samples at gamma {g:g}]({name}-samples-gamma{g:g}.png)\n" for g in grids]
    path = out / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path
