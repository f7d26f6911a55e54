"""CPU cost of a training step's inputs (data batch, conditions, t and noise), before and after
the GPU-fed pipeline, measured in one run.

    python -m benchmarks.input_pipeline [--recipe shapes-gpu] [--batch 256] [--steps 30] [--step-ms 60] [--out FILE]

"before": the step renders its batch, encodes its captions through the CPU-side cache and
copies them, and draws t and noise on the CPU (the pipeline before the change).
"after": the batch is drawn ahead by the prefetch thread (data.prefetch = 2), which also encodes
its captions into the cache on the training device, so the step only gathers them; t and noise
are drawn on the device.

Between steps the network's work is stood in for by `--step-ms` of idle time (a GPU step runs
asynchronously, so the CPU is free meanwhile): that is when the prefetch thread renders. Reported
per step: the training thread's wall time in input preparation (what the accelerator waits for),
its CPU time, and the whole process's CPU time (all threads).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.hardware import describe, publish
from model.autoencoder import build_autoencoder
from model.text_encoder import TextEncoder
from training.chain import TEXT_LEN
from training.data import build_dataset, step_generator
from training.losses import device_generator
from training.prefetch import Prefetcher, batch_seed
from training.prepare import Preparer
from training.recipes import RECIPES


def _before(dataset, preparer, batch: int, steps: int, step_s: float) -> list[tuple[float, float, float]]:
    cpu_encoder = TextEncoder(max_length=TEXT_LEN)  # CPU cache, outputs copied to the device
    preparer.text_encoder = _Copying(cpu_encoder, preparer.device)
    out = []
    for k in range(steps):
        w, c, p = time.perf_counter(), time.thread_time(), time.process_time()
        g = step_generator(0, 2, k, 0)
        b = dataset.batch(batch, (batch_seed(g), 0))
        cond = preparer.cond(b, g, p_drop_each=0.3, drop_both=False)
        x = preparer.x(b)
        t = torch.rand(batch, generator=g).to(preparer.device)
        eps = torch.randn(x.shape, generator=g).to(preparer.device)
        out.append((time.perf_counter() - w, time.thread_time() - c, time.process_time() - p))
        time.sleep(step_s)
        del cond, t, eps
    return out


def _after(dataset, preparer, batch: int, steps: int, step_s: float) -> list[tuple[float, float, float]]:
    prefetch = Prefetcher(dataset, batch, 0, 2, 0, depth=2, warm=preparer.warm)
    out = []
    try:
        for k in range(steps):
            w, c, p = time.perf_counter(), time.thread_time(), time.process_time()
            g = step_generator(0, 2, k, 0)
            b = prefetch.get(k, batch_seed(g))
            cond = preparer.cond(b, g, p_drop_each=0.3, drop_both=False)
            x = preparer.x(b)
            dg = device_generator(g, x.device)
            t = torch.rand(batch, generator=dg, device=x.device)
            eps = torch.randn(x.shape, generator=dg, device=x.device)
            out.append((time.perf_counter() - w, time.thread_time() - c, time.process_time() - p))
            time.sleep(step_s)  # the prefetch thread renders the next batches meanwhile
            del cond, t, eps
    finally:
        prefetch.close()
    return out


class _Copying:
    """The CPU-side text encoder of the old pipeline: outputs copied to the device."""

    def __init__(self, encoder: TextEncoder, device):
        self.encoder, self.device = encoder, device

    def __call__(self, captions):
        text, mask = self.encoder(captions)
        return text.to(self.device), mask.to(self.device)


def _row(name: str, times: list[tuple[float, float, float]], warmup: int) -> str:
    kept = times[warmup:]
    wall, thread, proc = (1e3 * sum(t[i] for t in kept) / len(kept) for i in range(3))
    return f"| {name} | {wall:.1f} | {thread:.1f} | {proc:.1f} |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="shapes-gpu", choices=sorted(RECIPES))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--step-ms", type=float, default=60.0, help="idle time standing in for the network's step")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    recipe = RECIPES[args.recipe]()
    device = torch.device(args.device)
    dataset = build_dataset(recipe.data)
    autoencoder = build_autoencoder(recipe.autoencoder).to(device).eval()
    warmup = min(5, args.steps // 3)  # the first steps fill the caption caches and the prefetch queue
    rows = []
    for name, fn in (("before", _before), ("after", _after)):
        preparer = Preparer(dataset, autoencoder, TEXT_LEN, device, recipe.data.inpaint_prob)
        rows.append(_row(name, fn(dataset, preparer, args.batch, args.steps, args.step_ms / 1e3), warmup))
    res = recipe.data.resolution
    lines = [
        f"# Input preparation per training step: {args.recipe}, batch {args.batch}, {res}x{res}, on {device}",
        "",
        f"Machine: {describe()}. {args.steps} steps each ({warmup} warm-up steps not counted), {args.step_ms:.0f} ms of network time stood in by idle time.",
        "",
        "| pipeline | training thread, wall ms | training thread, CPU ms | process CPU ms (all threads) |",
        "|---|---|---|---|",
        *rows,
    ]
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
