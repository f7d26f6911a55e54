"""Service benchmark: HTTP+queue overhead against the model's own time, and batching throughput.

    python -m benchmarks.service [--requests 30] [--duration 20] [--out docs/benchmarks/service.md]

Starts a real redis-server and `python -m service` (API + one worker, the built-in family),
then measures, all in one run:
  1. for steps 1, 2, 4, 8: end-to-end latency of one request at a time, against the model
     time the worker measured for the same request (`model_seconds` in the response);
  2. images/s at concurrency 1, 4 and 16 (closed loop, 4 steps, mixed prompts and classes).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.hardware import describe
from service.testing import RedisServer, Service

PROMPTS = ["a red circle", "a green square", "a blue cross", "a yellow triangle", "a red square on a black background"]


def body(k: int, steps: int) -> dict:
    if k % 2:
        return {"class_label": k % 14, "steps": steps, "seed": k, "guidance": 1.0}
    return {"prompt": PROMPTS[k % len(PROMPTS)], "steps": steps, "seed": k, "guidance": 1.0}


def path(k: int) -> str:
    return "/v1/generate" if k % 2 else "/v1/txt2img"


async def overhead(client: httpx.AsyncClient, steps: int, n: int) -> dict:
    e2e, model = [], []
    for k in range(n + 3):
        start = time.perf_counter()
        r = await client.post(path(k), json=body(k, steps))
        elapsed = time.perf_counter() - start
        r.raise_for_status()
        if k >= 3:  # the first few warm the caches (prompts, allocator)
            e2e.append(elapsed)
            model.append(r.json()["model_seconds"])
    e2e_ms, model_ms = statistics.median(e2e) * 1000, statistics.median(model) * 1000
    return {"steps": steps, "e2e_ms": e2e_ms, "model_ms": model_ms, "overhead": e2e_ms / model_ms - 1}


async def throughput(client: httpx.AsyncClient, concurrency: int, duration: float, steps: int = 4) -> dict:
    done, latencies = 0, []
    stop = time.perf_counter() + duration
    counter = iter(range(10**9))

    async def loop():
        nonlocal done
        while time.perf_counter() < stop:
            k = next(counter)
            start = time.perf_counter()
            r = await client.post(path(k), json=body(k, steps))
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {"concurrency": concurrency, "images_per_s": done / elapsed, "p50_ms": latencies[len(latencies) // 2] * 1000, "requests": done}


async def run(url: str, n: int, duration: float) -> tuple[list, list]:
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=64)) as client:
        over = [await overhead(client, steps, n) for steps in (1, 2, 4, 8)]
        thru = [await throughput(client, c, duration) for c in (1, 4, 16)]
    return over, thru


def padding_cost(steps: int = 4, repeats: int = 20) -> tuple[float, float]:
    """Model time of one request with the network called on 1 row, and on FEWSTEP_FIXED_BATCH=4 rows (ms)."""
    import os

    import torch

    from model.builtin import BUILTIN_DIR, DEFAULT_FAMILY
    from model.family import Family
    from model.pipeline import Pipeline, Request

    torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))  # as the service's in-process worker
    family = Family(BUILTIN_DIR / DEFAULT_FAMILY)
    out = []
    for fixed in (None, 4):
        pipe = Pipeline(family, fixed_batch=fixed)
        req = [Request(seed=0, guidance=1.0, prompt="a red circle")]
        pipe.generate(req, steps=steps)
        start = time.perf_counter()
        for _ in range(repeats):
            pipe.generate(req, steps=steps)
        out.append((time.perf_counter() - start) / repeats * 1000)
    return out[0], out[1]


def report(over: list, thru: list, padding: tuple[float, float]) -> str:
    lines = ["| steps | end-to-end (ms) | model (ms) | overhead |", "|---|---|---|---|"]
    lines += [f"| {o['steps']} | {o['e2e_ms']:.1f} | {o['model_ms']:.1f} | {100 * o['overhead']:.1f}% |" for o in over]
    lines += ["", "| concurrency | images/s | p50 latency (ms) | requests | vs concurrency 1 |", "|---|---|---|---|---|"]
    base = thru[0]["images_per_s"]
    lines += [f"| {t['concurrency']} | {t['images_per_s']:.1f} | {t['p50_ms']:.0f} | {t['requests']} | {t['images_per_s'] / base:.2f}x |" for t in thru]
    four = next(o for o in over if o["steps"] == 4)
    ratio = thru[-1]["images_per_s"] / base
    lines += [
        "",
        f"Target: overhead <= 15% at 4 steps: {'met' if four['overhead'] <= 0.15 else 'MISSED'} ({100 * four['overhead']:.1f}%).",
        f"Target: >= 2x images/s from concurrency 1 to 16: {'met' if ratio >= 2 else 'MISSED'} ({ratio:.2f}x).",
        "",
        (
            f"Cost of bit-identical seeds (FEWSTEP_FIXED_BATCH=4): one 4-step request takes {padding[1]:.1f} ms of model time "
            f"with the network called on 4 rows, {padding[0]:.1f} ms on 1 row ({padding[1] / padding[0]:.2f}x); "
            "the overhead above is measured against the 4-row model time the service really spends."
        ),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.service", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=30, help="sequential requests per step count")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per concurrency level")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a service setting (FEWSTEP_KEY), e.g. --set torch_threads=1")
    args = parser.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    padding = padding_cost()
    redis_server = RedisServer()
    logs = Path(tempfile.mkdtemp(prefix="fewstep-bench-"))
    svc = Service(redis_server.url, log_dir=logs, threads=None, **{"queue_prefix": "bench", **overrides})
    try:
        over, thru = asyncio.run(run(svc.url, args.requests, args.duration))
    finally:
        svc.stop()
        redis_server.stop()
    text = report(over, thru, padding)
    if overrides:
        text = f"Settings: {overrides}\n\n{text}"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# Service benchmark\n\n`python -m benchmarks.service` on {time.strftime('%Y-%m-%d')}: {describe('cpu')}, the built-in `shapes` family.\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
