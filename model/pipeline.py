"""The pipeline the service calls: a batch of mixed requests -> images, with one forward pass per step.

Requests in one batch may differ in class, prompt, gamma, seed and task (generation,
img2img, inpainting); they must share the student (step count, stochastic or not). Each
request's noise comes from its own seed. With `fixed_batch` set, every network call sees
exactly that many rows (the batch is cut into chunks and the last chunk padded), so a
request's pixels are bit-identical whatever shares its batch: CPU and GPU kernels pick
their arithmetic by shape, and a different batch size changes the last bits.

With `compile`, the networks are compiled for the one shape the worker calls them with,
`fixed_batch` rows; each is compiled on its first call (the service does that during warm-up).
Students share one compiled network: they differ in weights only. On a CPU each family's network
is built ahead of time into a compiled package (AOTInductor, C++; model/compiled_package.py) kept
in torch's compile cache folder: a later start loads it in milliseconds, where torch.compile traces
the network's Python again on every start, and its calls are no slower (docs/benchmarks/service.md).
`cpp_wrapper=False`, or a package that fails to build, compiles with `torch.compile` and inductor's
Python wrapper instead. On a GPU the networks run under `torch.compile`; `compile_mode=
"reduce-overhead"` adds CUDA graphs (a graph replays a network's kernels with one launch). Their
graphs are kept per thread, so one thread must warm up and run them; each call starts a new graph
step and copies the output out of the graph's memory, which the next replay overwrites.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .autoencoder import encode_inpaint_context
from .conditioning import NULL_LABEL, Cond
from .family import Family
from .guidance import clipped, gamma_conditioned, inpainting
from .noise import SeededNoise
from .schedule import time_grid
from .samplers import img2img_evaluations, img2img_start, off_grid, sample_ddim, sample_stochastic, step_to_grid


StepPreview = Callable[[int, int, int, torch.Tensor], None]  # (step k, steps n, first row, previews)
COMPILE_MODES = ("default", "reduce-overhead")  # torch.compile modes; reduce-overhead: CUDA graphs on a GPU


def graph_safe(network: Callable) -> Callable:
    """A network compiled with CUDA graphs, called as a plain one: every call is a new graph
    step, and its output is copied out of the graph's memory (the next replay writes there)."""

    def call(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return network(*args, **kwargs).clone()

    return call


def compile_kwargs(mode: str) -> dict:
    """torch.compile's arguments for a network: one shape, and the mode."""
    return {"dynamic": False} if mode == "default" else {"dynamic": False, "mode": mode}


@dataclass
class Request:
    seed: int
    guidance: float
    class_label: int | None = None
    prompt: str | None = None
    image: torch.Tensor | None = None  # (3, H, W) in [-1, 1]: img2img source, or the image to inpaint
    mask: torch.Tensor | None = None  # (H, W), 1 = repaint: inpainting
    strength: float = 1.0  # img2img: start at t = strength


class Pipeline:
    def __init__(self, family: Family, fixed_batch: int | None = None, compile: bool = False, compile_mode: str = "default", cpp_wrapper: bool = True):
        """`cpp_wrapper`: on a CPU (mode "default"), compile each network into a compiled package
        (C++); else, and elsewhere, with torch.compile."""
        if fixed_batch is not None and fixed_batch < 1:
            raise ValueError(f"fixed_batch must be a positive number of rows, got {fixed_batch}")
        if compile and fixed_batch is None:
            raise ValueError("compile needs fixed_batch: compiled networks are specialised to one batch shape")
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {compile_mode!r}")
        self.family = family
        self.fixed_batch = fixed_batch
        self.compile = compile
        self.compile_mode = compile_mode
        self.cpp_wrapper = compile and cpp_wrapper and compile_mode == "default" and torch.device(family.device).type == "cpu"  # where it applies
        self._compiled: dict[int, Callable] = {}
        info = family.info
        self.text_encoder = None
        if info.text_encoder:
            from .text_encoder import build_text_encoder

            self.text_encoder = build_text_encoder(info.text_encoder, family.directory, max_length=info.text_len, fixed_batch=fixed_batch, device=family.device)
        if not info.distilled_steps:
            raise ValueError(f"family {info.family!r} has no distilled students yet")
        net = family.student(info.distilled_steps[0]).network_config
        self.z_channels, self.z_side = net["channels"], net.get("resolution")
        self.takes_context = bool(net.get("context_channels"))  # else inpainting replaces the known region only

    def cond(self, requests: list[Request]) -> Cond:
        fam, dev, dtype = self.family, self.family.device, self.family.dtype
        labels = None
        if fam.info.class_names:
            labels = torch.tensor([NULL_LABEL if r.class_label is None else r.class_label for r in requests], device=dev)
        text = text_mask = None
        if self.text_encoder is not None:
            text, text_mask = self.text_encoder([r.prompt or "" for r in requests])
            text, text_mask = text.to(dev, dtype), text_mask.to(dev)
        context = None
        if fam.info.inpainting and self.takes_context:
            context = encode_inpaint_context(fam.autoencoder, *self._images_and_masks(requests))
        return Cond(labels=labels, text=text, text_mask=text_mask, context=context)

    def _images_and_masks(self, requests: list[Request]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) images and (B, H, W) repaint masks: the request's for inpainting, else
        nothing kept and everything repainted."""
        fam, side = self.family, self.family.info.resolution
        images = torch.stack([r.image if r.mask is not None else torch.zeros(3, side, side) for r in requests])
        masks = torch.stack([r.mask if r.mask is not None else torch.ones(side, side) for r in requests])
        return images.to(fam.device, fam.dtype), masks.to(fam.device, fam.dtype)

    @torch.no_grad()
    def generate(self, requests: list[Request], *, steps: int, stochastic: bool = False, on_step: StepPreview | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] for requests that share (steps, stochastic). Requests are
        trusted: check what users send with `model.validation.check_request` first.

        `on_step(k, n, first, previews)`, when given, is called after each sampling step k = 0..n-1
        with the decoded clean-image predictions (x_hat, in [-1, 1]) of rows first, first + 1, ...
        of `requests` (one call per chunk of rows with fixed_batch)."""
        if not requests:
            raise ValueError("no requests to generate")
        if self.fixed_batch is None:
            return self._generate(requests, steps, stochastic, on_step, 0)
        size = self.fixed_batch
        padded = requests + [requests[-1]] * (-len(requests) % size)  # a copy of a valid request fills the last chunk
        chunks = [self._generate(padded[i : i + size], steps, stochastic, on_step, i) for i in range(0, len(padded), size)]
        return torch.cat(chunks)[: len(requests)]

    @property
    def cuda_graphs(self) -> bool:
        """Whether its networks run compiled with CUDA graphs (not after a fall back to eager)."""
        return self.compile and self.compile_mode == "reduce-overhead"

    def network(self, model: torch.nn.Module) -> Callable:
        """`model`, compiled when the pipeline compiles (cached per model)."""
        if not self.compile:
            return model
        key = id(model)
        if key not in self._compiled:
            if self.cpp_wrapper:
                from .compiled_package import PackagedNetwork

                self._compiled[key] = PackagedNetwork(model)
            else:
                compiled = torch.compile(model, **compile_kwargs(self.compile_mode))
                self._compiled[key] = graph_safe(compiled) if self.cuda_graphs else compiled
        return self._compiled[key]

    def eager(self) -> None:
        """Stop compiling (a platform where compilation fails); the eager networks stay loaded."""
        self.compile = self.cpp_wrapper = False
        self._compiled.clear()

    def python_wrapper(self) -> None:
        """Compile with torch.compile and inductor's Python wrapper from now on (a compiled package
        failed to build)."""
        self.cpp_wrapper = False
        self._compiled.clear()

    def evaluations(self, request: Request, *, steps: int) -> int:
        """Network evaluations a request costs: its steps, fewer for img2img that starts below
        t = 1, plus one partial step when the strength falls between grid points."""
        if request.image is None or request.mask is not None or request.strength >= 1.0:
            return steps
        return img2img_evaluations(request.strength, time_grid(steps))

    def _generate(self, requests: list[Request], steps: int, stochastic: bool, on_step: StepPreview | None, first: int) -> torch.Tensor:
        fam = self.family
        student = self.network(fam.student(steps, stochastic))
        grid = time_grid(steps)
        shape = (self.z_channels, self.z_side, self.z_side)
        noises, zs, ts, starts = [], [], [], []
        for r in requests:
            noise = SeededNoise([r.seed], fam.device, fam.dtype)
            if r.image is not None and r.mask is None and r.strength < 1.0:
                x = fam.autoencoder.encode(r.image[None].to(fam.device, fam.dtype))
                z, t, start = img2img_start(x, r.strength, grid, noise)
            else:
                z, t, start = noise.randn(shape), torch.ones(1), torch.tensor([steps])
            noises.append(noise)
            zs.append(z)
            ts.append(t.to(fam.device, fam.dtype))
            starts.append(start.to(fam.device))
        noise = SeededNoise.cat(noises)
        gamma = torch.tensor([r.guidance for r in requests], device=fam.device, dtype=fam.dtype)
        cond = self.cond(requests)
        known = self._known_region(requests)
        z, t, start = torch.cat(zs), torch.cat(ts), torch.cat(starts)
        if off_grid(t, start, grid).any():  # img2img between grid points: one step of the stage-1 student
            opener = self.network(fam.model("stage1")) if "stage1" in fam.info.checkpoints else student
            z = step_to_grid(self._denoiser(opener, gamma, known), z, cond, t=t, start=start, grid=grid)
        sampler = sample_stochastic if stochastic else sample_ddim
        callback = None
        if on_step is not None:
            def callback(k, n, x_hat):
                on_step(k, n, first, fam.autoencoder.decode(x_hat).clamp(-1, 1))
        z = sampler(self._denoiser(student, gamma, known), z, cond, grid=grid, start=start, noise=noise, callback=callback)
        images = fam.autoencoder.decode(z).clamp(-1, 1)
        for k, r in enumerate(requests):  # inpainting keeps the unmasked pixels exactly
            if r.mask is not None:
                m = r.mask.to(images)[None]
                images[k] = m * images[k] + (1 - m) * r.image.to(images)
        return images

    def _known_region(self, requests: list[Request]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(x_known in z-space, keep mask) for a batch with inpainting requests, else None."""
        if not any(r.mask is not None for r in requests):
            return None
        images, masks = self._images_and_masks(requests)
        x_known, repaint = self.family.autoencoder.encode(images), masks[:, None]
        if x_known.shape[-1] != repaint.shape[-1]:  # latent: a latent cell is kept only if all its pixels are
            repaint = torch.nn.functional.adaptive_max_pool2d(repaint, x_known.shape[-2:])
        return x_known, repaint < 0.5

    def _denoiser(self, student, gamma: torch.Tensor, known: tuple[torch.Tensor, torch.Tensor] | None):
        """The student at each request's gamma; pixel families clip x_hat to [-1, 1]; inpainting
        requests keep their known region in x_hat at every step."""
        denoise = gamma_conditioned(student, gamma)
        if self.family.info.clip_x:
            denoise = clipped(denoise)
        return denoise if known is None else inpainting(denoise, *known)
