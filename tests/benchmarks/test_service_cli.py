"""`python -m benchmarks.service`: bad arguments are refused before it measures; its verdicts
agree with the figures it prints; its minimal client reads what the service answers."""

import asyncio

import subprocess
import sys

import pytest

from service.testing import ROOT


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "tpu"], "--device must be auto, cpu or cuda"),
        (["--set", "torch_threads"], "--set takes KEY=VALUE"),
        (["--concurrency", "0"], "--concurrency levels must be at least 1"),
        (["--set", "dtype=float8"], "FEWSTEP_DTYPE must be auto, float16, bfloat16 or float32"),
        (["--requests", "0"], "--requests must be at least 1"),
        (["--duration", "0"], "--duration above 0"),
        (["--set", "device=cpu"], "choose the device with --device"),
        (["--set", "DEVICE=cpu"], "choose the device with --device"),
        (["--set", "cuda_graphs=1"], "not settings of this benchmark"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, message):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.service", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def _service(fixed: list[float], minimal: list[float], e2e4: float = 30.0, per_s: float = 100.0, start_s: float = 12.0,
             restart_s: float | None = 9.0) -> dict:
    over = [{"steps": st, "e2e_ms": e2e4 if st == 4 else 10.0 * st, "model_ms": 27.0, "fixed_ms": f, "minimal_fixed_ms": m, "overhead": f / 27.0}
            for st, f, m in zip((1, 2, 4, 8), fixed, minimal)]
    thru = [{"concurrency": 16, "images_per_s": per_s, "p50_ms": 160.0, "requests": 100, "images_per_batch": 9.0, "model_busy": 0.9}]
    out = {"over": over, "thru": thru, "start_s": start_s, "http_ms": 0.7, "emoji": None}
    return out if restart_s is None else {**out, "restart_s": restart_s}


def test_the_verdicts_judge_the_figures_as_printed():
    from benchmarks.service import report

    cost = {"text_new_ms": 8.0, "text_new_per_image_ms": 2.0, "text_cached_ms": 0.0, "png_ms": 0.1, "decode_per_image_ms": 0.0, "autoencoder": "identity"}
    eager = _service([4.0] * 4, [3.0] * 4, e2e4=55.0, per_s=65.0, start_s=5.0, restart_s=None)  # eager: started once
    # 3.04 prints as 3.0, which meets "<= 3 ms"; 3.06 prints as 3.1, which misses it
    met = report([], cost, eager, _service([2.5, 2.6, 2.7, 3.04], [2.0, 2.1, 2.2, 3.04]))
    assert "with httpx met (2.5-3.0 ms" in met and "minimal keep-alive client met (2.0-3.0 ms" in met
    missed = report([], cost, eager, _service([2.5, 2.6, 2.7, 3.06], [2.0, 2.1, 2.2, 2.9], e2e4=60.0, per_s=80.0))
    assert "with httpx MISSED (2.5-3.1 ms" in missed and "minimal keep-alive client met (2.0-2.9 ms" in missed
    assert "concurrency 16 >= 1.4x the eager default: MISSED (1.23x" in missed and "lone 4-step latency no worse than eager: MISSED" in missed
    assert "overhead at 4 steps <= 8% of the model time: with httpx MISSED (10.0%); with the minimal client MISSED (8.1%)" in missed
    assert "at 4 steps <= 8% of the model time: with httpx met (" not in met
    assert "(an empty compile cache) met (12.0 s); a restart, which loads what the first start compiled from the cache folder, met (9.0 s)" in met
    slow = report([], cost, eager, _service([2.0] * 4, [1.5] * 4, start_s=30.04, restart_s=30.06))  # 30.0 meets "<= 30 s", 30.1 misses it
    assert "(an empty compile cache) met (30.0 s); a restart, which loads what the first start compiled from the cache folder, MISSED (30.1 s)" in slow
    assert "start to /readyz 5.0 s; GET" in met and "start to /readyz 30.0 s with an empty compile cache, 30.1 s restarted on it" in slow
    edge = report([], cost, _service([4.0] * 4, [3.0] * 4, per_s=100.0), _service([2.0] * 4, [1.5] * 4, per_s=139.96))  # 1.3996 prints as 1.40
    assert "1.4x the eager default: met (1.40x" in edge
    assert "median of each request's own difference" in met and "CUDA graphs" not in met
    graphs = report([], cost, eager, _service([2.0] * 4, [1.5] * 4), _service([1.5] * 4, [1.0] * 4, e2e4=20.0, per_s=120.0, start_s=20.0))
    assert "compiled with CUDA graphs (FEWSTEP_CUDA_GRAPHS=1)" in graphs
    assert "CUDA graphs against compiled alone: images/s at concurrency 16 1.20x (120.0 vs 100.0); lone 4-step 20.0 vs 30.0 ms end to end; start 20.0 s, restarted 9.0 s." in graphs


def test_the_minimal_client_reads_answers_and_refuses_errors(service):
    from benchmarks.service import KeepAliveClient, body, path

    async def go():
        async with KeepAliveClient(service.url) as client:
            first = await client.post(path(0), body(0, 1))
            second = await client.post(path(1), body(1, 2))  # the same connection, kept alive
            with pytest.raises(RuntimeError, match=r"HTTP/1.1 4\d\d"):
                await client.post("/v1/generate", {"steps": 3})
            third = await client.post(path(2), body(2, 1))  # still usable after an error answer
            return first, second, third

    first, second, third = asyncio.run(go())
    assert (first["steps"], second["steps"], third["steps"]) == (1, 2, 1) and all(r["model_seconds"] > 0 for r in (first, second, third))
