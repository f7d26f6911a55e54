"""The pipeline on the built-in family: a seed's pixels do not depend on its batch mates."""

import pytest
import torch

from model.builtin import BUILTIN_DIR, DEFAULT_FAMILY
from model.family import Family
from model.pipeline import Pipeline, Request


@pytest.fixture(scope="module")
def pipe():
    return Pipeline(Family(BUILTIN_DIR / DEFAULT_FAMILY), fixed_batch=4)


@pytest.mark.parametrize("steps,stochastic", [(1, False), (4, False), (4, True)])
def test_fixed_batch_makes_a_seed_bit_identical_in_any_batch(pipe, steps, stochastic):
    mine = Request(seed=77, guidance=1.5, prompt="a green square")
    others = [Request(seed=k, guidance=0.5 * (k % 5), class_label=k % 14, prompt=None) for k in range(9)]
    others += [Request(seed=100 + k, guidance=1.0, prompt=f"a red circle {k}") for k in range(3)]
    alone = pipe.generate([mine], steps=steps, stochastic=stochastic)[0]
    for size, pos in [(2, 1), (5, 0), (7, 6), (13, 9)]:
        batch = others[: size - 1]
        batch.insert(pos, mine)
        out = pipe.generate(batch, steps=steps, stochastic=stochastic)
        assert out.shape[0] == size
        assert torch.equal(out[pos], alone), (size, pos)


def test_requests_differ_by_seed(pipe):
    a, b = pipe.generate([Request(seed=1, guidance=1.0, class_label=3), Request(seed=2, guidance=1.0, class_label=3)], steps=4)
    assert not torch.equal(a, b)


def test_fixed_batch_must_be_positive():
    with pytest.raises(ValueError, match="fixed_batch"):
        Pipeline(Family(BUILTIN_DIR / DEFAULT_FAMILY), fixed_batch=0)
