"""Load, fault and soak tests against real processes and a real redis-server.

    python -m benchmarks.load [--mode both|load|soak] [--requests 1000] [--concurrency 32]
        [--soak-requests 300] [--out docs/load-test.md]

load: `python -m service` plus a second worker process, with that worker killed and restarted
midway. A bounded asyncio load generator sends a mix of endpoints (class, text, img2img,
inpaint, OpenAI generations), step counts, samplers and gamma. Reports throughput, p50/p99
latency, status counts and lost requests (no HTTP answer). Target: nothing lost, no 5xx.

soak: the API alone plus two worker processes, one of them slow (its batches outlast the
takeover time), a poison request (a worker that draws it exits at once; the benchmark
restarts dead workers, as a supervisor would) and a Redis SIGKILLed and restarted from its
append-only file midway. Clients retry 503s after Retry-After, as well-behaved ones do.
Targets: every request ends exactly once (executions counted from the workers' own logs),
no 5xx except the poison request's clear failure, and Redis memory after the run within 10%
of before.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import io
import random
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import redis
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


POISON = "a poison pill"


def _memory(url: str) -> tuple[int, int]:
    """(used_memory, used_memory_dataset): all of Redis's memory, and its data alone."""
    info = redis.Redis.from_url(url).info("memory")
    return int(info["used_memory"]), int(info["used_memory_dataset"])


def _executed(logs: Path) -> collections.Counter:
    """Job id -> how many times a worker ran it, from the workers' debug logs."""
    return collections.Counter(job for p in logs.glob("worker-*.log") for line in p.read_text().splitlines()
                               if (m := re.search(r" ran ((?:[0-9a-f]{32} ?)+)$", line)) for job in m.group(1).split())


class _JobAnswer:
    """A polled job's outcome, shaped like a response for the report (status_code, json())."""

    def __init__(self, status_code: int, detail: str = ""):
        self.status_code, self.detail = status_code, detail

    def json(self) -> dict:
        return {"detail": self.detail}


async def _job_retrying(client: httpx.AsyncClient, path: str, body: dict, stats: collections.Counter):
    """POST /v1/jobs (with an Idempotency-Key, so a retried submit queues nothing twice), then
    poll until the job ends: 200 for a success, else the job's error status."""
    endpoint = path.rsplit("/", 1)[-1]
    if path.startswith("/v1/images"):
        endpoint, body = "txt2img", {"prompt": body["prompt"], "n": body.get("n", 1), **{k: body[k] for k in ("steps", "seed", "guidance") if k in body}}
    key = {"Idempotency-Key": f"soak-{uuid.uuid4().hex}"}
    deadline = time.monotonic() + 240
    created = None
    while created is None and time.monotonic() < deadline:
        try:
            r = await client.post("/v1/jobs", json={"endpoint": endpoint, "request": body}, headers=key)
            if r.status_code == 503:
                stats["retried 503"] += 1
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                continue
            if r.status_code != 202:
                return r
            created = r.json()["id"]
        except httpx.TransportError:
            stats["retried transport error"] += 1
            await asyncio.sleep(1.0)
    stats["asynchronous jobs"] += 1
    while time.monotonic() < deadline:
        try:
            r = await client.get(f"/v1/jobs/{created}")
            if r.status_code == 404:  # expired before it ran (its deadline is the job TTL)
                return _JobAnswer(404, r.json().get("detail", ""))
            if r.status_code == 200 and r.json()["status"] in ("succeeded", "failed", "cancelled"):
                job = r.json()
                return _JobAnswer(200) if job["status"] == "succeeded" else _JobAnswer(job.get("error", {}).get("status", 500), job.get("error", {}).get("detail", ""))
        except httpx.TransportError:
            stats["retried transport error"] += 1
        await asyncio.sleep(0.2)
    return None


async def _post_retrying(client: httpx.AsyncClient, path: str, body: dict, stats: collections.Counter) -> httpx.Response | None:
    """POST, retrying 503 (after Retry-After) and connection errors for up to two minutes."""
    deadline = time.monotonic() + 120
    while True:
        try:
            r = await client.post(path, json=body)
            if r.status_code != 503 or time.monotonic() > deadline:
                return r
            stats["retried 503"] += 1
            await asyncio.sleep(float(r.headers.get("retry-after", "1")))
        except httpx.TransportError:
            if time.monotonic() > deadline:
                return None
            stats["retried transport error"] += 1
            await asyncio.sleep(1.0)


JOB_TTL_S = 180  # the soak's jobs (and their stored results) expire this soon, so that memory can come back


def soak(total: int, concurrency: int, claim_idle_ms: int = 1500) -> dict:
    logs = Path(tempfile.mkdtemp(prefix="fewstep-soak-"))
    server = RedisServer(appendonly=True)
    settings = {"queue_prefix": "soak", "claim_idle_ms": claim_idle_ms, "max_deliveries": 3, "queue_capacity": 1024, "request_timeout_s": 180,
                "job_ttl_s": JOB_TTL_S, "torch_threads": 1, "test_crash_prompt": POISON, "log_level": "debug"}
    svc = Service(server.url, log_dir=logs, args=("--workers", "0"), **settings)
    kinds = {"normal": {}, "slow": {"test_batch_delay_s": claim_idle_ms / 1000 + 1.0}}  # the slow one's batches outlast the takeover time
    workers: dict[str, WorkerProcess] = {}
    restarts = collections.Counter()

    def start(kind: str) -> None:
        workers[kind] = WorkerProcess(server.url, log_dir=logs, name=f"{kind}-{restarts[kind]}", **settings, **kinds[kind])

    for kind in kinds:
        start(kind)
    memory_fresh = _memory(server.url)
    events: list[str] = []

    async def warm_up() -> None:  # fills the connection pools, so that the baseline is a running service's
        rng = random.Random(2)
        requests = [make_request(k, rng) for k in range(2 * concurrency)]
        async with httpx.AsyncClient(base_url=svc.url, timeout=240) as client:
            await asyncio.gather(*(client.post(path, json=body) for path, body in requests))

    asyncio.run(warm_up())
    time.sleep(1.0)
    memory_before = _memory(server.url)
    warm_up_runs = _executed(logs)

    async def supervise(stop: asyncio.Event) -> None:
        while not stop.is_set():
            for kind, w in list(workers.items()):
                if w.proc.poll() is not None:
                    restarts[kind] += 1
                    events.append(f"{kind} worker exited ({w.proc.returncode}); restarted")
                    print(f"[soak] {events[-1]}", flush=True)
                    try:
                        await asyncio.to_thread(start, kind)
                    except Exception as exc:  # noqa: BLE001 - e.g. it died again before it was ready: try again
                        print(f"[soak] restarting the {kind} worker failed ({exc}); trying again", flush=True)
            await asyncio.sleep(0.3)

    async def run() -> dict:
        rng = random.Random(1)
        work = [make_request(k, rng) for k in range(total)]
        work.insert(total // 4, ("/v1/txt2img", {"prompt": POISON, "steps": 2, "seed": 1}))
        answers: list = [None] * len(work)
        stats: collections.Counter = collections.Counter()
        next_item = iter(range(len(work)))
        stop = asyncio.Event()
        supervisor = asyncio.create_task(supervise(stop))
        started = time.perf_counter()

        async def client_loop(client):
            for k in next_item:
                path, body = work[k]
                if k % 10 == 5 and k != total // 4:  # every tenth request as an asynchronous job: stored, then polled
                    answers[k] = await _job_retrying(client, path, body, stats)
                else:
                    answers[k] = await _post_retrying(client, path, body, stats)
                if k == len(work) // 2:
                    server.proc.kill()  # SIGKILL; it comes back from its append-only file
                    server.proc.wait()
                    events.append(f"redis-server SIGKILLed at request {k}")
                    print(f"[soak] {events[-1]}", flush=True)
                    await asyncio.sleep(1.0)
                    await asyncio.to_thread(server.start)
                    events.append("redis-server restarted from its append-only file")

        async with httpx.AsyncClient(base_url=svc.url, timeout=240, limits=httpx.Limits(max_connections=concurrency)) as client:
            await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        stop.set()
        await supervisor
        return {"answers": answers, "work": work, "stats": stats, "seconds": elapsed}

    try:
        out = asyncio.run(run())
        time.sleep(JOB_TTL_S + 2.0)  # the last acknowledgements land, the stored job results expire
        client = redis.Redis.from_url(server.url)
        leftovers = {"stream entries": client.xlen("soak:requests"), "dead letters": client.xlen("soak:dead"),
                     "keys (bytes)": {k.decode(): client.memory_usage(k) for k in sorted(client.scan_iter(count=1000))}}
        memory_after = _memory(server.url)
    finally:
        for w in workers.values():
            w.kill()
        svc.stop()
        server.stop()
    ran = _executed(logs) - warm_up_runs
    statuses = collections.Counter(r.status_code if r is not None else "no answer" for r in out["answers"])
    poison = out["answers"][total // 4]
    return {
        "requests": len(out["work"]), "concurrency": concurrency, "seconds": out["seconds"], "statuses": dict(sorted(statuses.items(), key=str)),
        "retries": dict(out["stats"]), "executions": sum(ran.values()), "jobs_run": len(ran), "jobs_run_twice": sum(1 for n in ran.values() if n > 1),
        "poison": f"{poison.status_code} {poison.json().get('detail', '')}" if poison is not None else "no answer",
        "memory_fresh": memory_fresh, "memory_before": memory_before, "memory_after": memory_after, "leftovers": leftovers, "events": events, "restarts": dict(restarts),
    }


def soak_report(r: dict) -> str:
    ok_answers = r["statuses"].get(200, 0)
    others = {s: n for s, n in r["statuses"].items() if s != 200}
    once = r["jobs_run_twice"] == 0 and r["jobs_run"] == ok_answers == r["requests"] - 1
    poison_ok = r["poison"].startswith("500") and "delivered" in r["poison"]
    memory_ok = r["memory_after"][1] <= 1.1 * r["memory_before"][1]
    (fresh, fresh_data), (before, before_data), (after, after_data) = r["memory_fresh"], r["memory_before"], r["memory_after"]
    return "\n".join(
        [
            f"- requests: {r['requests']} (one of them the poison request) at concurrency {r['concurrency']}, in {r['seconds']:.1f} s",
            f"- HTTP statuses (after clients' retries of 503): {r['statuses']}; retries: {r['retries'] or 'none'}",
            f"- executions counted from the workers' logs: {r['executions']} runs of {r['jobs_run']} distinct requests; run more than once: {r['jobs_run_twice']}",
            f"- the poison request's answer: {r['poison']}",
            f"- events: {'; '.join(r['events'])}",
            f"- Redis data (used_memory_dataset, what requests leave behind): {before_data} bytes before the soak (after a warm-up "
            f"that fills the connection pools; {fresh_data} on the fresh server), {after_data} after ({after_data / before_data:.2f}x), "
            f"measured {JOB_TTL_S + 2} s after the last answer, once stored job results have expired; all of used_memory: {fresh} fresh, "
            f"{before} before, {after} after (the restarted process, so this one says little); left over: {r['leftovers']}",
            f"- target, every request ends exactly once (each 200 ran once, nothing ran twice): {'met' if once else 'MISSED'}",
            f"- target, no 5xx except the poison request's clear failure: {'met' if poison_ok and set(others) <= {500} and others.get(500, 0) == 1 else 'MISSED'}",
            f"- target, Redis data after within 10% of before: {'met' if memory_ok else 'MISSED'}",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["both", "load", "soak"], default="both")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--soak-requests", type=int, default=300)
    parser.add_argument("--claim-idle-ms", type=int, default=3000, help="load mode: how soon a dead worker's requests are taken over")
    parser.add_argument("--soak-claim-idle-ms", type=int, default=1500, help="soak mode: the takeover time (the slow worker's batches take 1 s longer)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sections = []
    if args.mode in ("both", "load"):
        sections.append(load_section(args))
    if args.mode in ("both", "soak"):
        text = soak_report(soak(args.soak_requests, 16, args.soak_claim_idle_ms))
        print(text)
        sections.append(
            f"## Soak: a slow worker, a poison request, a Redis restart\n\n`python -m benchmarks.load --mode soak --soak-requests {args.soak_requests}`: "
            f"the API alone and two `python -m service.worker` processes (one whose batches take {args.soak_claim_idle_ms / 1000 + 1:g} s longer than its model "
            f"needs, against a {args.soak_claim_idle_ms / 1000:g} s takeover time), `FEWSTEP_MAX_DELIVERIES=3`, a redis-server with an append-only file "
            f"SIGKILLed and restarted midway; every tenth request goes through `/v1/jobs` (stored results, `FEWSTEP_JOB_TTL_S={JOB_TTL_S}`), the rest are synchronous.\n\n" + text
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# Load and fault tests\n\nMeasured on {time.strftime('%Y-%m-%d')}, {describe('cpu')}, with the built-in `shapes` family.\n\n" + "\n\n".join(sections) + "\n")
    missed = [line for text in sections for line in text.splitlines() if "MISSED" in line]
    if missed:
        print("targets missed:\n" + "\n".join(missed), file=sys.stderr)
    return 1 if missed else 0


def load_section(args) -> str:
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
    return (
        "## Load, and a worker killed midway\n\n"
        f"`python -m benchmarks.load --mode load --requests {args.requests} --concurrency {args.concurrency}`: "
        "`python -m service` (API + one worker) and a second `python -m service.worker` process, a real redis-server. "
        "Mixed endpoints (class, text, img2img, inpaint, OpenAI generations), steps 1/2/4/8, 25% stochastic, "
        "gamma in {0, 0.3, 1, 2, 4}.\n\n" + text
    )


if __name__ == "__main__":
    sys.exit(main())
