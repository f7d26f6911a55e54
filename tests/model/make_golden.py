"""Regenerate tests/model/data/golden.safetensors: sampler and pipeline outputs the samplers must
keep bit for bit (test_golden.py). Run only when a change is *meant* to alter the outputs:

    python -m tests.model.make_golden
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

import torch
from safetensors.torch import save_file

GOLDEN = Path(__file__).resolve().parent / "data" / "golden.safetensors"


def outputs() -> dict[str, torch.Tensor]:
    """Every sampler, on the built-in family, at fixed seeds, with one torch thread."""
    from model.builtin import builtin_families
    from model.conditioning import Cond, full_mask_context
    from model.family import Family
    from model.guidance import clipped, guided
    from model.noise import SeededNoise
    from model.pipeline import Pipeline, Request
    from model.samplers import sample_ddim, sample_dpmpp_2m, sample_stochastic
    from model.schedule import time_grid

    family = Family(builtin_families()["shapes"])
    pipe = Pipeline(family, fixed_batch=4)
    side = family.info.resolution
    image = torch.linspace(-1, 1, 3 * side * side).reshape(3, side, side)
    mask = torch.zeros(side, side)
    mask[:, side // 2 :] = 1
    out = {}
    for steps in family.info.distilled_steps:
        reqs = [Request(seed=10 + k, guidance=float(k), class_label=k) for k in range(3)] + [Request(seed=20, guidance=1.0, prompt="a red circle")]
        out[f"ddim-{steps}"] = pipe.generate(reqs, steps=steps)
    for steps in family.info.stochastic_steps:
        reqs = [Request(seed=30 + k, guidance=float(k), class_label=k) for k in range(3)]
        out[f"stochastic-{steps}"] = pipe.generate(reqs, steps=steps, stochastic=True)
    reqs = [Request(seed=40, guidance=1.0, class_label=1, image=image, strength=s) for s in (0.3, 0.5, 0.6, 1.0)]
    out["img2img-4"] = pipe.generate(reqs, steps=4)
    reqs = [Request(seed=50, guidance=2.0, class_label=2, image=image, mask=mask), Request(seed=51, guidance=0.0, prompt="a blue square", image=image, mask=mask)]
    out["inpaint-2"] = pipe.generate(reqs, steps=2)
    out["inpaint-stochastic-4"] = pipe.generate(reqs, steps=4, stochastic=True)
    teacher = family.model("teacher")
    noise = SeededNoise([60, 61])
    z = noise.randn((3, side, side))
    cond = Cond(labels=torch.tensor([0, 3]), context=full_mask_context(2, 3, side, side))
    denoise = clipped(guided(teacher, 2.0))
    out["teacher-ddim-8"] = sample_ddim(denoise, z.clone(), cond, grid=time_grid(8))
    out["teacher-dpmpp2m-4"] = sample_dpmpp_2m(denoise, z.clone(), cond, grid=time_grid(4))
    out["teacher-stochastic-4"] = sample_stochastic(denoise, z.clone(), cond, grid=time_grid(4), noise=SeededNoise([62, 63]))
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def machine() -> str:
    """The CPU model, its instruction-set flags (a virtual CPU's model name may be only "AMD
    EPYC" on several generations) and the torch version: kernels choose their arithmetic by them."""
    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == (platform.processor() or platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = hashlib.sha256(" ".join(sorted(line.split(":", 1)[1].split())).encode()).hexdigest()[:12]
    except OSError:
        pass
    return f"{cpu}; flags {flags or '?'}; torch {torch.__version__}"


def main() -> None:
    torch.set_num_threads(1)
    with torch.no_grad():
        tensors = outputs()
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(GOLDEN), metadata={"machine": machine()})
    print(f"wrote {len(tensors)} outputs to {GOLDEN}")


if __name__ == "__main__":
    main()
