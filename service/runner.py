"""Runs batches of jobs on the loaded models (the part of a worker that touches torch).

Jobs come checked (service/contract.py): a runner turns their items into pipeline requests,
draws them in one batch and encodes the images, without validating anything again.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch
from PIL import Image

from model.family import Family
from model.pipeline import Pipeline, Request

from . import metrics
from .contract import Job, JobItem, JobResult
from .png import write_png
from .png_info import png_text, settings_of
from .precompile import (PYTHON_WRAPPER_EXIT, Helpers, compiled_before, compiled_with_python_wrapper, helper_command, probe_vector_isa_in_background,
                         record_compiled)

log = logging.getLogger("fewstep.runner")


def pick_device(device: str, dtype: str) -> tuple[str, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    try:
        torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    except KeyError:
        raise ValueError(f"FEWSTEP_DTYPE must be auto, float16, bfloat16 or float32, got {dtype!r}") from None
    return device, torch_dtype


class Runner:
    def __init__(self, paths: dict, *, device: str = "auto", dtype: str = "auto", fixed_batch: int | None = None, compile: bool = False,
                 cpp_wrapper: bool = True, cuda_graphs: bool = False):
        self.device, self.dtype = pick_device(device, dtype)
        if compile and fixed_batch is None:
            log.warning("FEWSTEP_COMPILE needs FEWSTEP_FIXED_BATCH (compiled networks take one batch shape); running eagerly")
            compile = False
        if cuda_graphs and not (compile and self.device.startswith("cuda")):
            log.warning("FEWSTEP_CUDA_GRAPHS needs compiled networks on a CUDA device (here: %s, %s); not used",
                        self.device, "compiled" if compile else "eager")
            cuda_graphs = False
        self.thread: ThreadPoolExecutor | None = None  # the one thread that warms up and runs it (worker.load_runner)
        mode = "reduce-overhead" if cuda_graphs else "default"
        self.pipelines = {name: Pipeline(Family(path, self.device, self.dtype), fixed_batch=fixed_batch, compile=compile, compile_mode=mode,
                                      cpp_wrapper=cpp_wrapper)
                          for name, path in paths.items()}
        log.info("loaded %s on %s (%s%s)", sorted(self.pipelines), self.device, self.dtype, ", CUDA graphs" if cuda_graphs else "")

    @property
    def compiles(self) -> bool:
        """Whether every family runs compiled networks (False once one fell back to eager)."""
        return bool(self.pipelines) and all(pipe.compile for pipe in self.pipelines.values())

    @property
    def cuda_graphs(self) -> bool:
        """Whether every family runs its networks under CUDA graphs (False once one fell back to eager)."""
        return bool(self.pipelines) and all(pipe.cuda_graphs for pipe in self.pipelines.values())

    def warm_up(self, processes: int = 1, on_stage: Callable[[str, str], None] | None = None) -> None:
        """Load every student and run it once (with CUDA graphs: three times, the graphs are
        recorded on the second call), so the first request pays no loading, compilation or
        recording cost. A family whose compiled package fails to build is compiled with torch.compile
        and inductor's Python wrapper; a platform where compilation fails runs eagerly; each with a
        warning. Call it on the thread that will run the batches: CUDA graphs are kept per thread.

        With `processes` above 1, compiling on a CPU, up to that many families compile at once:
        this process takes the largest first, helper processes the smallest (service/precompile.py),
        and their compiled graphs are then loaded from torch's compile cache.

        `on_stage(family, stage)` hears what each family is doing (service/startup.py lists the stages)."""
        stage = on_stage or (lambda name, what: None)
        order = list(self.pipelines)
        for name in order:
            stage(name, "waiting")
        # a family's compile as asked (before any fall back), recorded once done where inductor keeps its graphs on disk:
        # a restart then starts no helper for it
        commands = {name: self._helper_command(name) for name in order if self.pipelines[name].compile and self.device == "cpu"}
        disk = _disk_cache()
        helpers = None
        compiles_on_cpu = self.compiles and self.device == "cpu"
        if compiles_on_cpu:
            # beside the first network's tracing, not after it; it first sets the trusted vector instructions on
            # this thread, which the compile records' keys include: before compiled_before and record_compiled
            probe_vector_isa_in_background()
        if compiles_on_cpu and processes > 1 and len(order) > 1 and disk:
            order.sort(key=lambda name: -_parameters(self.pipelines[name]))  # a proxy for its compile time
            helpers = Helpers({name: commands[name] for name in order if not compiled_before(commands[name])}, slots=processes - 1,
                              on_start=lambda name: stage(name, "compiling in a helper process"),
                              on_exit=lambda name, code: stage(name, "waiting (compiled in a helper process)" if code in (0, PYTHON_WRAPPER_EXIT)
                                                                else "waiting (its helper failed)"))
        try:
            for name in order:
                helped = helpers.claim(name) if helpers is not None else None
                record = commands.get(name) if disk else None
                # whether its compiled networks are in the compile cache; None: not known (no record of compiles kept off the CPU)
                cached = None if name not in commands else record is not None and (helped in (0, PYTHON_WRAPPER_EXIT) or compiled_before(record))
                # its compiled package failed to build in its helper, or on an earlier start: not tried again
                failed = "in its helper" if helped == PYTHON_WRAPPER_EXIT else "on an earlier start" if cached and compiled_with_python_wrapper(record) else None
                if failed and self.pipelines[name].cpp_wrapper:
                    self.pipelines[name].python_wrapper()
                    log.warning("%s is compiled with inductor's Python wrapper: its compiled package failed to build %s", name, failed)
                self._warm_family(name, record, lambda what, name=name: stage(name, what), cached)
        finally:
            if helpers is not None:
                helpers.close()
        if any(pipe.cuda_graphs for pipe in self.pipelines.values()):
            from torch._dynamo.utils import counters

            skipped = counters["inductor"]["cudagraph_skips"]
            if skipped:  # torch runs such graphs without CUDA graphs, and says so only in its perf hints
                log.warning("CUDA graphs were skipped for %d compiled graphs (TORCH_LOGS=perf_hints says why); those run without them", skipped)

    def _helper_command(self, name: str) -> list[str]:
        pipe = self.pipelines[name]
        return helper_command(pipe.family.directory, dtype=str(self.dtype).removeprefix("torch."), fixed_batch=pipe.fixed_batch,
                              threads=torch.get_num_threads(), cpp_wrapper=pipe.cpp_wrapper)

    def _warm_family(self, name: str, record: list[str] | None, stage: Callable[[str], None], cached: bool | None) -> None:
        """Warm up one family; `record`: the compile to record once done (None: none kept); `cached`:
        whether its compiled networks are in the compile cache (None: not known)."""
        pipe = self.pipelines[name]
        start = time.perf_counter()
        while True:
            what = {True: "loading from the compile cache", False: "compiling", None: "compiling, or loading from the compile cache"}[cached]
            stage(what if pipe.compile else "running once")
            if pipe.compile:
                later = "; later starts load it from the compile cache" if cached is False and record is not None else ""
                log.info("warming up %s: %s (%s%s)", name, what, _kind(pipe), later)
            try:
                self._warm(pipe)
                break
            except Exception as exc:  # noqa: BLE001 - torch.compile fails in many ways (no C++ compiler, an unsupported op)
                if not pipe.compile:
                    raise
                fallback = "is compiled again with inductor's Python wrapper" if pipe.cpp_wrapper else "runs eagerly"
                log.warning("compiling %s failed (%s: %s); it %s", name, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "", fallback)
                if pipe.cpp_wrapper:
                    pipe.python_wrapper()
                else:
                    pipe.eager()
                if cached:
                    cached = None  # what the cache holds for the new way is not known
        log.info("warmed up %s in %.1f s (%s)", name, time.perf_counter() - start, _kind(pipe))
        stage(f"warm ({_kind(pipe)})")
        if record is not None and pipe.compile:
            record_compiled(record, python_wrapper=not pipe.cpp_wrapper and "--python-wrapper" not in record)

    @staticmethod
    def _warm(pipe: Pipeline) -> None:
        info = pipe.family.info
        req = Request(seed=0, guidance=info.guidance_range[0], class_label=0 if info.class_names else None, prompt=None if info.class_names else "warm up")
        for _ in range(3 if pipe.cuda_graphs else 1):
            for steps in info.distilled_steps:
                pipe.generate([req], steps=steps)
            for steps in info.stochastic_steps:
                pipe.generate([req], steps=steps, stochastic=True)
            if "stage1" in info.checkpoints and info.resolution:  # img2img between grid points takes one stage-1 step
                side = info.resolution
                pipe.generate([Request(seed=0, guidance=req.guidance, class_label=req.class_label, prompt=req.prompt, image=torch.zeros(3, side, side), strength=0.7)], steps=min(info.distilled_steps))

    def run(self, jobs: list[Job], on_event: Callable[[str, dict], None] | None = None) -> list[JobResult]:
        """One forward pass for jobs that share (model, steps, stochastic); one result per job.
        With `on_event`, asynchronous jobs (store_result) get a "step" event after every sampling
        step, with a PNG preview of their first image's clean-image prediction."""
        first = jobs[0]
        pipe = self.pipelines[first.model]
        requests = [pipeline_request(item) for job in jobs for item in job.items]
        start = time.perf_counter()
        images = pipe.generate(requests, steps=first.steps, stochastic=first.stochastic, on_step=_previews(jobs, on_event))
        if images.is_cuda:
            torch.cuda.synchronize(images.device)
        model_s = time.perf_counter() - start
        metrics.BATCH_SIZE.observe(len(jobs))
        metrics.BATCH_IMAGES.observe(len(requests))
        metrics.MODEL_TIME.labels(steps=str(first.steps)).observe(model_s)
        metrics.IMAGES.labels(model=first.model).inc(len(requests))
        results, offset, pixels = [], 0, to_pixels(images)  # the batch to 8-bit in one pass (one copy off the device)
        for job in jobs:
            mine = pixels[offset : offset + len(job.items)]
            first_request = requests[offset]
            offset += len(job.items)
            results.append(
                JobResult(
                    status="succeeded",
                    model=job.model,
                    steps=job.steps,
                    stochastic=job.stochastic,
                    format=job.format,
                    seeds=[it.seed for it in job.items],
                    guidance=[it.guidance for it in job.items] if job.sweep else job.items[0].guidance,
                    images=[base64.b64encode(encode(img, job.format, settings_of(job, it))).decode() for img, it in zip(mine, job.items)],
                    batch_requests=len(jobs),
                    batch_images=len(requests),
                    model_seconds=model_s,
                    network_evaluations=pipe.evaluations(first_request, steps=job.steps),
                )
            )
        return results


FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def _disk_cache() -> bool:
    """Whether inductor keeps compiled graphs on disk, where helpers' work can be found."""
    from torch._inductor import config

    return bool(config.fx_graph_cache) and not config.force_disable_caches


def _parameters(pipe: Pipeline) -> int:
    """How many parameters a family's first student has."""
    family = pipe.family
    return sum(p.numel() for p in family.student(family.info.distilled_steps[0]).parameters())


def _kind(pipe: Pipeline) -> str:
    if not pipe.compile:
        return "eager"
    if pipe.cuda_graphs:
        return "compiled, CUDA graphs"
    return "compiled package" if pipe.cpp_wrapper else "compiled"


def _previews(jobs: list[Job], on_event: Callable[[str, dict], None] | None):
    """The pipeline's step callback that turns previews of watched rows into step events."""
    watched, row = {}, 0
    for job in jobs:
        if job.store_result:
            watched[row] = job.id  # its first image
        row += len(job.items)
    if on_event is None or not watched:
        return None

    def on_step(k: int, n: int, first: int, previews: torch.Tensor) -> None:
        for r in range(first, first + previews.shape[0]):
            if r in watched:
                png = base64.b64encode(encode(previews[r - first], "png")).decode()
                on_event(watched[r], {"type": "step", "step": k + 1, "steps": n, "preview": png})

    return on_step


def pipeline_request(item: JobItem) -> Request:
    """A job item as the pipeline takes it: PNG bytes -> tensors in [-1, 1] (mask: 1 = repaint)."""
    image = mask = None
    if item.image is not None:
        rgb = np.asarray(Image.open(io.BytesIO(item.image)).convert("RGB"), dtype=np.float32)
        image = torch.from_numpy(rgb / 127.5 - 1.0).permute(2, 0, 1).contiguous()
    if item.mask is not None:
        mask = torch.from_numpy((np.asarray(Image.open(io.BytesIO(item.mask)).convert("L")) > 127).astype(np.float32))
    return Request(seed=item.seed, guidance=item.guidance, class_label=item.class_label, prompt=item.prompt, image=image, mask=mask, strength=item.strength)


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 on the CPU."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def encode(image: torch.Tensor | np.ndarray, fmt: str, settings: dict | None = None) -> bytes:
    """A (3, H, W) tensor in [-1, 1], or (H, W, 3) uint8 pixels (`to_pixels`) -> image file
    bytes; a PNG carries `settings` as text chunks."""
    pixels = to_pixels(image[None])[0] if isinstance(image, torch.Tensor) else image
    if fmt == "png":
        return write_png(pixels, png_text(settings) if settings else None)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=FORMATS[fmt], quality=95)
    return buf.getvalue()
