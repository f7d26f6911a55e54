"""Load and fault test: `python -m service` plus a second worker process, with that worker
killed and restarted midway.

    python -m benchmarks.load [--requests 1000] [--concurrency 32] [--out docs/load-test.md]

A bounded asyncio load generator sends a mix of endpoints (class, text, img2img, inpaint,
OpenAI generations), step counts, samplers and gamma. Reports throughput, p50/p99 latency,
status counts and lost requests (no HTTP answer). Target: nothing lost, no 5xx.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import io
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

from benchmarks.hardware import describe
from service.testing import RedisServer, Service, WorkerProcess

GAMMAS = [0.0, 0.3, 1.0, 2.0, 4.0]
PROMPTS = ["a red circle", "a green square on a white background", "a blue cross", "a yellow triangle", "a big red square"]


def _png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


SOURCE = _png(Image.new("RGB", (32, 32), (200, 30, 30)))
MASK = _png(Image.frombytes("L", (32, 32), bytes([255 if x < 16 else 0 for _ in range(32) for x in range(32)])))


def make_request(k: int, rng: random.Random) -> tuple[str, dict]:
    steps = rng.choice([1, 2, 4, 8])
    stochastic = steps > 1 and rng.random() < 0.25
    common = {"steps": steps, "stochastic": stochastic, "guidance": rng.choice(GAMMAS), "seed": k}
    kind = k % 5
    if kind == 0:
        return "/v1/generate", {**common, "class_label": rng.randrange(14)}
    if kind == 1:
        return "/v1/txt2img", {**common, "prompt": rng.choice(PROMPTS)}
    if kind == 2:
        return "/v1/img2img", {**common, "prompt": rng.choice(PROMPTS), "image": SOURCE, "strength": rng.choice([0.3, 0.6, 1.0])}
    if kind == 3:
        return "/v1/inpaint", {**common, "prompt": rng.choice(PROMPTS), "image": SOURCE, "mask": MASK}
    return "/v1/images/generations", {"prompt": rng.choice(PROMPTS), "n": 1, "response_format": "b64_json", **common}


async def load(url: str, total: int, concurrency: int, on_half) -> dict:
    rng = random.Random(0)
    work = [make_request(k, rng) for k in range(total)]
    statuses: collections.Counter = collections.Counter()
    latencies: list[float] = []
    lost: list[str] = []
    done = 0
    half = asyncio.Event()
    queue: asyncio.Queue = asyncio.Queue()
    for item in work:
        queue.put_nowait(item)

    async def client_loop(client: httpx.AsyncClient):
        nonlocal done
        while not queue.empty():
            path, body = queue.get_nowait()
            start = time.perf_counter()
            try:
                r = await client.post(path, json=body)
                statuses[r.status_code] += 1
                latencies.append(time.perf_counter() - start)
            except httpx.HTTPError as exc:
                lost.append(f"{path}: {type(exc).__name__}")
            done += 1
            if done == total // 2:
                half.set()

    async with httpx.AsyncClient(base_url=url, timeout=180, limits=httpx.Limits(max_connections=concurrency)) as client:
        start = time.perf_counter()
        fault = asyncio.create_task(on_half(half))
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        fault_log = await fault
    latencies.sort()
    return {
        "requests": total,
        "concurrency": concurrency,
        "seconds": elapsed,
        "throughput": total / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "statuses": dict(sorted(statuses.items())),
        "lost": lost,
        "fault": fault_log,
    }


def report(r: dict) -> str:
    fives = sum(n for s, n in r["statuses"].items() if s >= 500)
    ok = not r["lost"] and fives == 0 and r["statuses"].get(200, 0) == r["requests"]
    return "\n".join(
        [
            f"- requests: {r['requests']} at concurrency {r['concurrency']}, in {r['seconds']:.1f} s",
            f"- throughput: {r['throughput']:.1f} requests/s",
            f"- latency: p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms",
            f"- HTTP statuses: {r['statuses']}",
            f"- lost (no HTTP answer): {len(r['lost'])}",
            f"- fault: {r['fault']}",
            f"- target (no request lost, no 5xx, every request 200): {'met' if ok else 'MISSED'}",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--claim-idle-ms", type=int, default=3000, help="how soon a dead worker's requests are taken over")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="fewstep-load-"))
    redis_server = RedisServer()
    settings = {"queue_prefix": "load", "claim_idle_ms": args.claim_idle_ms, "queue_capacity": 1024}
    svc = Service(redis_server.url, log_dir=logs, **settings)
    second = {"worker": WorkerProcess(redis_server.url, log_dir=logs, name="second-1", **settings)}

    async def kill_and_restart(half: asyncio.Event) -> str:
        await half.wait()
        t0 = time.perf_counter()
        second["worker"].kill()
        await asyncio.sleep(2)
        second["worker"] = await asyncio.to_thread(WorkerProcess, redis_server.url, log_dir=logs, name="second-2", **settings)
        return f"second worker SIGKILLed at request {args.requests // 2}, restarted and ready {time.perf_counter() - t0:.1f} s later"

    try:
        result = asyncio.run(load(svc.url, args.requests, args.concurrency, kill_and_restart))
    finally:
        second["worker"].kill()
        svc.stop()
        redis_server.stop()
    took_over = sum("took over" in p.read_text() for p in logs.glob("*.log"))
    text = report(result) + f"\n- processes that took over a dead worker's requests (XAUTOCLAIM): {took_over}"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            "# Load and fault test\n\n"
            f"`python -m benchmarks.load --requests {args.requests} --concurrency {args.concurrency}` on {time.strftime('%Y-%m-%d')}: "
            f"`python -m service` (API + one worker) and a second `python -m service.worker` process on {describe('cpu')}, "
            "the built-in `shapes` family, a real redis-server. Mixed endpoints (class, text, img2img, inpaint, OpenAI "
            "generations), steps 1/2/4/8, 25% stochastic, gamma in {0, 0.3, 1, 2, 4}.\n\n" + text + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
