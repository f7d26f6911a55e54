"""Compiled students (on a CPU, compiled packages: the service's default): the same pixels for a
seed whatever its batch mates, and the eager networks' pixels within rounding."""

from __future__ import annotations

import pytest
import torch

from model.builtin import BUILTIN_DIR, DEFAULT_FAMILY
from model.compiled_package import PackagedNetwork
from model.family import Family
from model.pipeline import Pipeline, Request

pytestmark = pytest.mark.slow  # compiling takes a minute on a cold cache


@pytest.fixture(scope="module")
def pipes():
    family = Family(BUILTIN_DIR / DEFAULT_FAMILY)
    return Pipeline(family, fixed_batch=4), Pipeline(family, fixed_batch=4, compile=True)


def requests() -> list[Request]:
    side = 16
    image = torch.linspace(-1, 1, 3 * side * side).reshape(3, side, side)
    mask = torch.zeros(side, side)
    mask[4:12, 4:12] = 1
    return [
        Request(seed=1, guidance=1.0, class_label=3),
        Request(seed=2, guidance=4.0, prompt="a blue square"),
        Request(seed=3, guidance=0.0, prompt="a red circle", image=image, strength=0.7),  # off the grid: a stage-1 step first
        Request(seed=4, guidance=2.0, class_label=5, image=image, mask=mask),
        Request(seed=5, guidance=1.0, class_label=1),
    ]


@pytest.mark.parametrize("steps,stochastic", [(1, False), (4, False), (4, True)])
def test_compiled_pixels_ignore_batch_mates_and_match_eager(pipes, steps, stochastic):
    eager, compiled = pipes
    batch = requests()
    together = compiled.generate(batch, steps=steps, stochastic=stochastic)
    student = compiled.family.student(steps, stochastic)
    assert isinstance(compiled.network(student), PackagedNetwork) and compiled.cpp_wrapper  # it really runs compiled, as the service does
    assert eager.network(student) is student
    for k, r in enumerate(batch):
        alone = compiled.generate([r], steps=steps, stochastic=stochastic)[0]
        assert torch.equal(alone, together[k]), f"request {k}: its pixels depend on its batch mates"
    reference = eager.generate(batch, steps=steps, stochastic=stochastic)
    diff = (together - reference).abs().max().item()
    assert diff < 1e-3, f"compiled differs from eager by {diff}"
    assert (together[0] - together[4]).abs().max() > 0.1  # not a constant image

