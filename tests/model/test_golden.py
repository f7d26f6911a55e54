"""The samplers and the pipeline keep their outputs bit for bit: the built-in family's images at
fixed seeds are compared with those saved in data/golden.safetensors (tests/model/make_golden.py)."""

import pytest
import torch
from safetensors.torch import load_file

from .make_golden import GOLDEN, outputs


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # kernels pick their arithmetic by thread count too
    yield
    torch.set_num_threads(before)


def test_outputs_are_bit_identical_to_the_saved_ones(one_thread):
    saved = load_file(str(GOLDEN))
    with torch.no_grad():
        now = outputs()
    assert sorted(now) == sorted(saved)
    for name, tensor in saved.items():
        assert torch.equal(now[name], tensor), f"{name}: max difference {(now[name] - tensor).abs().max().item():.3g}"
