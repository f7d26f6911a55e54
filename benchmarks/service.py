"""Service benchmark: eager against compiled students, batch shapes, and the fixed overhead.

    python -m benchmarks.service [--requests 30] [--duration 20] [--out docs/benchmarks/service.md]
    python -m benchmarks.service --device cuda --concurrency 1 16 64   # on a GPU (float16)

All in one run, on the built-in family:
  1. the batch-shape table (in process, no HTTP): for FEWSTEP_FIXED_BATCH rows per network call
     and eager or compiled networks (on a CPU compiled packages, the default, and torch.compile
     with inductor's Python wrapper), a lone 4-step request's model time and the images/s of
     16 requests drawn together, with the compile time of that shape;
  2. the text encoder's, PNG encoder's and autoencoder's cost per request and per image;
  3. a real redis-server and `python -m service` (API + one worker), once eager
     (FEWSTEP_COMPILE=0, the previous default) and once compiled (on a GPU also compiled with
     CUDA graphs, FEWSTEP_CUDA_GRAPHS=1): start to /readyz (compiled: with an empty compile
     cache, as on a new machine, then restarted on what it cached); for
     steps 1, 2, 4, 8 the end-to-end latency of one request at a time against the model time
     the worker measured (`model_seconds`), the step counts interleaved, with httpx and with a
     minimal keep-alive client, and a GET /healthz for the HTTP round trip alone;
     images/s at concurrency 1 and 16 (closed loop, 4 steps, mixed prompts and classes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.hardware import publish, run_line
from service.testing import RedisServer, Service, metric

PROMPTS = ["a red circle", "a green square", "a blue cross", "a yellow triangle", "a red square on a black background"]


EMOJI_PROMPTS = ["an emoji of red apple", "an emoji of grinning face", "an emoji of rocket", "an emoji of snowflake", "an emoji of black cat"]


def body(k: int, steps: int, model: str = "shapes") -> dict:
    if model != "shapes":
        return {"model": model, "prompt": EMOJI_PROMPTS[k % len(EMOJI_PROMPTS)], "steps": steps, "seed": k, "guidance": 1.0}
    if k % 2:
        return {"model": model, "class_label": k % 14, "steps": steps, "seed": k, "guidance": 1.0}
    return {"model": model, "prompt": PROMPTS[k % len(PROMPTS)], "steps": steps, "seed": k, "guidance": 1.0}


def path(k: int, model: str = "shapes") -> str:
    return "/v1/generate" if k % 2 and model == "shapes" else "/v1/txt2img"


class KeepAliveClient:
    """The least an HTTP/1.1 client can do: one keep-alive connection, a JSON body out and a
    Content-Length body back. Beside httpx it shows how much of the end-to-end time is the
    client's own (both run on the same cores as the service)."""

    def __init__(self, url: str):
        self.host, self.port = url.split("://", 1)[1].rsplit(":", 1)
        self.reader = self.writer = None

    async def __aenter__(self) -> "KeepAliveClient":
        await self._connect()
        return self

    async def __aexit__(self, *exc) -> None:
        self.writer.close()

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, int(self.port))

    async def post(self, path: str, payload: dict) -> dict:
        data = json.dumps(payload).encode()
        request = f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n".encode() + data
        if self.reader.at_eof():  # the server closed the idle connection: open another
            await self._connect()
        self.writer.write(request)
        try:
            head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        except asyncio.IncompleteReadError as exc:
            raise RuntimeError(f"the server closed the connection before answering POST {path}") from exc
        fields = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:] if ":" in line)}
        if "content-length" not in fields:
            raise RuntimeError(f"{head[0]}: an answer without Content-Length, which this client does not read")
        answer = await self.reader.readexactly(int(fields["content-length"]))
        if fields.get("connection", "").lower() == "close":
            self.writer.close()
            await self._connect()
        status = head[0].split()
        if len(status) < 2 or not status[1].startswith("2"):
            raise RuntimeError(f"{head[0]}: {answer[:200]!r}")
        return json.loads(answer)


async def overhead(url: str, client: httpx.AsyncClient, n: int, model: str = "shapes", step_counts=(1, 2, 4, 8)) -> list[dict]:
    """One request at a time, the step counts and the two clients interleaved (so that a drift of
    the machine's speed, or a switch of client, touches every row alike): per step count, the median
    end-to-end time and model time with httpx, and end-to-end minus model time with each client."""
    rows = {steps: {"e2e": [], "model": [], "httpx": [], "minimal": []} for steps in step_counts}
    async with KeepAliveClient(url) as minimal:
        for k in range(2 * len(step_counts) * (n + 2)):
            group = k // len(step_counts)  # a round of every step count with one client, then one with the other,
            use_httpx = group % 2 == 1  # each round starting at another step count (the first after a switch pays a little)
            steps = step_counts[(k + group // 2) % len(step_counts)]
            start = time.perf_counter()
            if use_httpx:
                r = await client.post(path(k, model), json=body(k, steps, model))
                r.raise_for_status()
                answer = r.json()
            else:
                answer = await minimal.post(path(k, model), body(k, steps, model))
            elapsed = time.perf_counter() - start
            if k < 4 * len(step_counts):  # the first few warm the caches (prompts, allocator)
                continue
            row = rows[steps]
            row["httpx" if use_httpx else "minimal"].append((elapsed - answer["model_seconds"]) * 1000)
            if use_httpx:
                row["e2e"].append(elapsed * 1000)
                row["model"].append(answer["model_seconds"] * 1000)
    out = []
    for steps, row in rows.items():
        e2e_ms, model_ms = statistics.median(row["e2e"]), statistics.median(row["model"])
        out.append({"steps": steps, "model": model, "e2e_ms": e2e_ms, "model_ms": model_ms, "fixed_ms": statistics.median(row["httpx"]),
                    "minimal_fixed_ms": statistics.median(row["minimal"]), "overhead": statistics.median(row["httpx"]) / model_ms})
    return out


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

    before = (await client.get("/metrics")).text
    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    after = (await client.get("/metrics")).text
    latencies.sort()

    def delta(name: str) -> float:
        return metric(after, name) - metric(before, name)

    batches = delta("fewstep_batch_images_count")
    return {"concurrency": concurrency, "images_per_s": done / elapsed, "p50_ms": latencies[len(latencies) // 2] * 1000, "requests": done,
            "images_per_batch": delta("fewstep_batch_images_sum") / max(batches, 1), "model_busy": delta("fewstep_batch_model_seconds_sum") / elapsed}


async def healthz(client: httpx.AsyncClient, n: int = 50) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        (await client.get("/healthz")).raise_for_status()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def run(url: str, n: int, duration: float, concurrency=(1, 16)) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=64)) as client:
        http_ms = await healthz(client)
        over = await overhead(url, client, n)
        thru = [await throughput(client, c, duration) for c in concurrency]
        models = {m["id"] for m in (await client.get("/v1/models")).json()["data"]}
        emoji = (await overhead(url, client, max(5, n // 2), "emoji", step_counts=(4,)))[0] if "emoji" in models else None
    return {"http_ms": http_ms, "over": over, "thru": thru, "emoji": emoji}


def _median_ms(fn, repeats: int, device: str = "cpu") -> float:
    """Median wall time of fn(), waiting for the device's queued work to finish."""
    import torch

    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def batch_table(sizes=(1, 4, 8, 16), repeats: int = 7, device: str = "cpu", dtype=None) -> list[dict]:
    """Model time of a lone 4-step request and images/s of 16 requests in one batch, per fixed
    row count, eager and compiled (on a GPU also compiled with CUDA graphs), and per torch
    thread count (in process; the service's in-process worker runs eager networks on all cores
    but one, compiled ones on all)."""
    import os

    import torch

    from model.builtin import BUILTIN_DIR, DEFAULT_FAMILY
    from model.family import Family
    from model.pipeline import Pipeline, Request

    cores = os.cpu_count() or 1
    family = Family(BUILTIN_DIR / DEFAULT_FAMILY, device, dtype or torch.float32)
    lone = [Request(seed=0, guidance=1.0, prompt="a red circle")]
    many = [Request(seed=k, guidance=1.0, prompt=PROMPTS[k % len(PROMPTS)]) if k % 2 else Request(seed=k, guidance=1.0, class_label=k % 14) for k in range(16)]
    kinds = {"eager": {}, "compiled": {"compile": True}}
    if device.startswith("cuda"):
        kinds["CUDA graphs"] = {"compile": True, "compile_mode": "reduce-overhead"}
    else:  # compiled networks are compiled packages on a CPU; against torch.compile with inductor's Python wrapper
        kinds["compiled, Python wrapper"] = {"compile": True, "cpp_wrapper": False}
    rows = []
    for fixed in sizes:
        for kind, options in kinds.items():
            torch._dynamo.reset()  # a fresh compile per shape and mode: no cache limit reached, no graph reused
            pipe = Pipeline(family, fixed_batch=fixed, **options)
            start = time.perf_counter()
            pipe.generate(lone, steps=4)  # compiles this shape
            warm_s = time.perf_counter() - start
            for threads in sorted({max(1, cores - 1), cores}) if device == "cpu" else [torch.get_num_threads()]:
                torch.set_num_threads(threads)
                pipe.generate(many, steps=4)
                pipe.generate(lone, steps=4)  # CUDA graphs record on a second call
                lone_ms = _median_ms(lambda: pipe.generate(lone, steps=4), repeats, device)
                many_ms = _median_ms(lambda: pipe.generate(many, steps=4), max(3, repeats // 2), device)
                rows.append({"fixed": fixed, "networks": kind, "threads": threads, "first_call_s": warm_s, "lone_ms": lone_ms, "images_per_s": 16 / (many_ms / 1000)})
                print(f"[bench] fixed {fixed:2d} {kind:24s} {threads} threads: lone {lone_ms:.1f} ms, 16 at once {16 / (many_ms / 1000):.1f} images/s", flush=True)
    torch.set_num_threads(cores)
    return rows


def costs(repeats: int = 20, device: str = "cpu", dtype=None) -> dict:
    """Per request and per image: text encoding of a new prompt, PNG encoding, the autoencoder."""
    import itertools

    import torch

    from model.builtin import BUILTIN_DIR, DEFAULT_FAMILY
    from model.family import Family
    from model.text_encoder import TextEncoder
    from service.runner import encode

    dtype = dtype or torch.float32
    family = Family(BUILTIN_DIR / DEFAULT_FAMILY, device, dtype)
    encoder = TextEncoder(max_length=family.info.text_len, fixed_batch=4, device=device)
    fresh = (f"a red circle number {k}" for k in itertools.count())
    one = _median_ms(lambda: encoder([next(fresh)]), repeats, device)
    sixteen = _median_ms(lambda: encoder([next(fresh) for _ in range(16)]), max(3, repeats // 4), device) / 16
    cached = _median_ms(lambda: encoder(["a red circle"]), repeats, device)
    side = family.info.resolution
    image = torch.rand(3, side, side) * 2 - 1
    png = _median_ms(lambda: encode(image, "png", {"prompt": "a red circle", "seed": 1}), repeats)
    z = torch.randn(16, 3, side, side, device=device, dtype=dtype)
    with torch.no_grad():
        decode = _median_ms(lambda: family.autoencoder.decode(z), repeats, device) / 16
    out = {"text_new_ms": one, "text_new_per_image_ms": sixteen, "text_cached_ms": cached, "png_ms": png, "decode_per_image_ms": decode, "autoencoder": family.info.autoencoder.get("kind", "identity")}
    if (BUILTIN_DIR / "emoji" / "family.json").is_file():  # the latent family's autoencoder, both ways
        latent = Family(BUILTIN_DIR / "emoji", device, dtype)
        ae, side = latent.autoencoder, latent.info.resolution
        images = (torch.rand(16, 3, side, side, device=device) * 2 - 1).to(dtype)
        zs = torch.randn(16, ae.cfg.latent_channels, side // ae.cfg.downsample, side // ae.cfg.downsample, device=device, dtype=dtype)
        with torch.no_grad():
            out["emoji_decode_per_image_ms"] = _median_ms(lambda: ae.decode(zs), max(3, repeats // 4), device) / 16
            out["emoji_encode_per_image_ms"] = _median_ms(lambda: ae.encode(images), max(3, repeats // 4), device) / 16
    return out


def _service_lines(label: str, r: dict) -> list[str]:
    start = f"start to /readyz {r['start_s']:.1f} s" if "restart_s" not in r else \
        f"start to /readyz {r['start_s']:.1f} s with an empty compile cache, {r['restart_s']:.1f} s restarted on it"
    lines = [f"**{label}** ({start}; GET /healthz {r['http_ms']:.1f} ms)", "",
             "| steps | end-to-end (ms) | model (ms) | end-to-end - model (ms) | overhead | end-to-end - model, minimal client (ms) |", "|---|---|---|---|---|---|"]
    lines += [f"| {o['steps']} | {o['e2e_ms']:.1f} | {o['model_ms']:.1f} | {o['fixed_ms']:.1f} | {100 * o['overhead']:.1f}% | {o['minimal_fixed_ms']:.1f} |" for o in r["over"]]
    lines += ["", "| concurrency | images/s | p50 latency (ms) | requests | images per batch | worker busy in the model |", "|---|---|---|---|---|---|"]
    lines += [f"| {t['concurrency']} | {t['images_per_s']:.1f} | {t['p50_ms']:.0f} | {t['requests']} | {t['images_per_batch']:.1f} | {100 * t['model_busy']:.0f}% |" for t in r["thru"]]
    if r.get("emoji"):
        e = r["emoji"]
        lines += ["", f"The `emoji` family (64x64, latent 8x8x4, decoded by its autoencoder in the worker), one 4-step text-to-image request at a time: "
                  f"{e['e2e_ms']:.1f} ms end to end, {e['model_ms']:.1f} ms of model time (sampling and decoding), {e['fixed_ms']:.1f} ms beside it ({e['minimal_fixed_ms']:.1f} ms with the minimal client)."]
    return lines + [""]


def report(table: list[dict], cost: dict, eager: dict, compiled: dict, graphs: dict | None = None, device: str = "cpu") -> str:
    lines = ["## Batch shapes (in process, 4 steps)", "", "| rows per call | networks | torch threads | first call (s) | lone request (ms) | 16 at once (images/s) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['fixed']} | {r['networks']} | {r['threads']} | {r['first_call_s']:.1f} | {r['lone_ms']:.1f} | {r['images_per_s']:.1f} |" for r in table]
    lines += ["", "## Costs beside the network", "",
              f"- text encoder, a prompt not in the cache: {cost['text_new_ms']:.1f} ms for one request, {cost['text_new_per_image_ms']:.2f} ms per image in a batch of 16; a cached prompt {cost['text_cached_ms']:.2f} ms",
              f"- PNG encoding with its settings chunks: {cost['png_ms']:.2f} ms per image",
              f"- autoencoder ({cost['autoencoder']}): decode {cost['decode_per_image_ms']:.3f} ms per image"]
    if "emoji_decode_per_image_ms" in cost:
        lines.append(f"- the `emoji` family's AutoencoderKL (64x64 <-> 8x8x4), in a batch of 16: decode {cost['emoji_decode_per_image_ms']:.2f} ms, encode (img2img, inpainting) {cost['emoji_encode_per_image_ms']:.2f} ms per image")
    lines += ["",
              "## The service, eager and compiled", "",
              "One request at a time, the step counts and the two clients interleaved. End-to-end and model times are medians over "
              "the requests; \"end-to-end - model\" is the median of each request's own difference (not the difference of the two "
              "medians), with httpx and with the minimal keep-alive client.", ""]
    cpu = device == "cpu"
    lines += _service_lines(f"eager (FEWSTEP_COMPILE=0, the previous default{'; torch on all cores but one' if cpu else ''})", eager)
    lines += _service_lines(f"compiled (the default{'; torch on all cores' if cpu else ''})", compiled)
    if graphs is not None:
        lines += _service_lines("compiled with CUDA graphs (FEWSTEP_CUDA_GRAPHS=1)", graphs)
    def at16(r: dict) -> float:  # images/s at concurrency 16 (the highest measured, without it)
        return next((t for t in r["thru"] if t["concurrency"] == 16), r["thru"][-1])["images_per_s"]

    e16, c16 = at16(eager), at16(compiled)
    e4 = next(o for o in eager["over"] if o["steps"] == 4)
    c4 = next(o for o in compiled["over"] if o["steps"] == 4)
    # every verdict judges the figures as printed
    ratio = round(c16 / e16, 2)
    fixed = [round(o["fixed_ms"], 1) for o in compiled["over"]]
    minimal = [round(o["minimal_fixed_ms"], 1) for o in compiled["over"]]
    share4, minimal_share4 = round(100 * c4["overhead"], 1), round(100 * c4["minimal_fixed_ms"] / c4["model_ms"], 1)

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines += [
        f"Target: images/s at concurrency 16 >= 1.4x the eager default: {verdict(ratio >= 1.4)} ({ratio:.2f}x: {c16:.1f} vs {e16:.1f}).",
        f"Target: lone 4-step latency no worse than eager: {verdict(round(c4['e2e_ms'], 1) <= round(e4['e2e_ms'], 1))} ({c4['e2e_ms']:.1f} vs {e4['e2e_ms']:.1f} ms end to end).",
        f"Target: fixed per-request overhead (end-to-end - model) <= 3 ms: with httpx {verdict(max(fixed) <= 3)} ({min(fixed):.1f}-{max(fixed):.1f} ms); "
        f"with the minimal keep-alive client {verdict(max(minimal) <= 3)} ({min(minimal):.1f}-{max(minimal):.1f} ms). The difference is the client's own work, on the same cores.",
        f"Target: overhead at 4 steps <= 8% of the model time: with httpx {verdict(share4 <= 8)} ({share4:.1f}%); with the minimal client {verdict(minimal_share4 <= 8)} ({minimal_share4:.1f}%).",
        f"Target: cold start to /readyz with compilation <= 30 s: the first start on a machine (an empty compile cache) {verdict(round(compiled['start_s'], 1) <= 30)} "
        f"({compiled['start_s']:.1f} s); a restart, which loads what the first start compiled from the cache folder, {verdict(round(compiled['restart_s'], 1) <= 30)} ({compiled['restart_s']:.1f} s).",
    ]
    if graphs is not None:
        g4 = next(o for o in graphs["over"] if o["steps"] == 4)
        lines.append(f"CUDA graphs against compiled alone: images/s at concurrency 16 {at16(graphs) / c16:.2f}x ({at16(graphs):.1f} vs {c16:.1f}); "
                     f"lone 4-step {g4['e2e_ms']:.1f} vs {c4['e2e_ms']:.1f} ms end to end; start {graphs['start_s']:.1f} s, restarted {graphs['restart_s']:.1f} s.")
    return "\n".join(lines)


def service_run(overrides: dict, n: int, duration: float, concurrency=(1, 16), compile_cache: str | None = None) -> dict:
    """Start `python -m service` on its own Redis and measure it. With `compile_cache`, torch.compile's
    caches live in that folder (an empty one: a first start on a machine), and a second start of the
    same service, reusing what the first compiled, is timed too (`restart_s`)."""
    redis_server = RedisServer()
    logs = Path(tempfile.mkdtemp(prefix="fewstep-bench-"))
    env = None if compile_cache is None else {"TORCHINDUCTOR_CACHE_DIR": str(Path(compile_cache) / "inductor"), "TRITON_CACHE_DIR": str(Path(compile_cache) / "triton")}
    settings = {"queue_prefix": "bench", **overrides}
    try:
        svc = Service(redis_server.url, log_dir=logs, threads=None, env=env, **settings)
        try:
            out = asyncio.run(run(svc.url, n, duration, concurrency))
        finally:
            svc.stop()
        out["start_s"] = svc.start_s
        if compile_cache is not None:
            again = Service(redis_server.url, log_dir=logs, threads=None, env=env, **settings)
            again.stop()
            out["restart_s"] = again.start_s
        return out
    finally:
        redis_server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.service", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=30, help="sequential requests per step count")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per concurrency level")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a service setting (FEWSTEP_KEY), e.g. --set torch_threads=1")
    parser.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu or cuda: the in-process tables and the service (float16 on cuda)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], metavar="C", help="closed-loop concurrency levels (default 1 16)")
    args = parser.parse_args()
    bad = [kv for kv in args.set if "=" not in kv]
    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        parser.error(f"--device must be auto, cpu or cuda[:N], got {args.device!r}")
    if bad:
        parser.error(f"--set takes KEY=VALUE (got {bad[0]!r})")
    if any(c < 1 for c in args.concurrency):
        parser.error("--concurrency levels must be at least 1")
    if args.requests < 1 or args.duration <= 0:
        parser.error("--requests must be at least 1 and --duration above 0")
    overrides = {k.strip().lower(): v for k, v in (kv.split("=", 1) for kv in args.set)}  # the user's, printed with the report
    if "device" in overrides:
        parser.error("choose the device with --device (it sets the in-process tables' device too), not --set device=")
    if {"compile", "cuda_graphs"} & overrides.keys():
        parser.error("--set compile= and --set cuda_graphs= are not settings of this benchmark: it measures eager, compiled (and on a GPU, CUDA graphs) itself")
    from service.runner import pick_device

    try:
        device, dtype = pick_device(args.device, overrides.get("dtype", "auto"))
    except ValueError as exc:
        parser.error(str(exc))
    if device.startswith("cuda") and not __import__("torch").cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    table = batch_table(device=device, dtype=dtype)
    cost = costs(device=device, dtype=dtype)
    eager = service_run({**overrides, "device": device, "compile": "0", "cuda_graphs": "0"}, args.requests, args.duration, args.concurrency)  # the eager default
    with tempfile.TemporaryDirectory(prefix="fewstep-compile-cache-") as cache:  # empty: the compiled service starts as on a new machine
        compiled = service_run({**overrides, "device": device, "compile": "1", "cuda_graphs": "0"}, args.requests, args.duration, args.concurrency,
                               compile_cache=cache)
        graphs = None
        if device.startswith("cuda"):
            graphs = service_run({**overrides, "device": device, "compile": "1", "cuda_graphs": "1"}, args.requests, args.duration, args.concurrency,
                                 compile_cache=f"{cache}/graphs")
    text = report(table, cost, eager, compiled, graphs, device)
    if overrides:
        text = f"Settings: {overrides}\n\n{text}"
    publish(text, args.out, f"# Service benchmark\n\n{run_line('benchmarks.service', device)} ({str(dtype).removeprefix('torch.')}), the built-in `shapes` family.\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
