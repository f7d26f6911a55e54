"""The gamma response sees what it guards against: a student that ignores gamma scores 0, one
that follows the guided teacher scores 1, one that follows it half-way scores 0.5."""

import pytest
import torch

from model.denoiser import Denoiser
from model.guidance import guided
from training.response import gamma_response, response_times

from ..model.conftest import TINY_UNET, randomise, tiny_cond


class Student:
    """x_s(z, c, gamma) = guided teacher at `scale` * gamma (scale 0: ignores gamma)."""

    def __init__(self, teacher, scale):
        self.teacher, self.scale = teacher, scale

    def __call__(self, z, t, cond, gamma):
        return guided(self.teacher, self.scale * float(gamma))(z, t, cond)


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0])
def test_gamma_response_measures_how_far_a_student_follows_gamma(scale):
    torch.manual_seed(0)
    teacher = randomise(Denoiser(dict(TINY_UNET))).eval()
    x = torch.randn(8, 3, 8, 8).clamp(-1, 1)
    r = gamma_response(Student(teacher, scale), teacher, x, tiny_cond(8), gamma_range=(0.0, 4.0))
    assert set(r) == {"t=0.3", "t=0.5", "t=0.7", "mean"}
    assert r["mean"] == pytest.approx(scale, abs=1e-4)
    # clipped (pixel space): following the teacher is still 1, ignoring gamma still 0
    r = gamma_response(Student(teacher, scale), teacher, x, tiny_cond(8), gamma_range=(0.0, 4.0), clip=True)
    assert r["mean"] == pytest.approx(scale, abs=1e-4) if scale in (0.0, 1.0) else 0.0 < r["mean"] < 1.0


def test_an_n_step_student_is_measured_on_its_own_grid():
    assert response_times(None) == (0.3, 0.5, 0.7)
    assert response_times(4) == (0.25, 0.5, 0.75)
    assert response_times(2) == (0.5,)
    assert response_times(1) == (1.0,)


def test_gamma_response_needs_a_range():
    with pytest.raises(ValueError, match="gamma_max > gamma_min"):
        gamma_response(None, None, torch.zeros(1, 3, 8, 8), tiny_cond(1), gamma_range=(1.0, 1.0))
