"""The samplers and the pipeline keep their outputs bit for bit: the built-in family's images at
fixed seeds are compared with those saved in data/golden.safetensors (tests/model/make_golden.py).
Bit for bit on the CPU model and torch version that saved them; elsewhere (other kernels, other
rounding) within 1e-4, still far below what a change of the math moves (1e-2 and more)."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .make_golden import GOLDEN, machine, outputs

ELSEWHERE_ATOL = 1e-4


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # kernels pick their arithmetic by thread count too
    yield
    torch.set_num_threads(before)


def test_outputs_are_bit_identical_to_the_saved_ones(one_thread):
    saved = load_file(str(GOLDEN))
    with safe_open(str(GOLDEN), "pt") as f:
        same_machine = (f.metadata() or {}).get("machine") == machine()
    with torch.no_grad():
        now = outputs()
    assert sorted(now) == sorted(saved)
    for name, tensor in saved.items():
        diff = (now[name] - tensor).abs().max().item()
        if same_machine:
            assert torch.equal(now[name], tensor), f"{name}: max difference {diff:.3g}"
        else:
            assert diff <= ELSEWHERE_ATOL, f"{name}: max difference {diff:.3g} (saved on another CPU or torch: tolerance {ELSEWHERE_ATOL})"
