"""The training objectives against oracles: a student that outputs exactly what the math
says its target is has zero loss; one that gets the branches, the grid or the step lengths
wrong does not."""

import pytest
import torch

from model import schedule
from model.denoiser import Denoiser, gamma_student_from_teacher
from model.guidance import clipped, gamma_conditioned, guided
from training.losses import distill_loss, stage1_loss, two_ddim_steps_target

from ..model.conftest import TINY_UNET, randomise, tiny_cond

BATCH = 6


@pytest.fixture
def teacher() -> Denoiser:
    torch.manual_seed(0)
    return randomise(Denoiser(dict(TINY_UNET)), seed=1).eval().requires_grad_(False)


@pytest.fixture
def student_teacher(teacher) -> Denoiser:
    """A round's teacher: a gamma-conditioned student with non-trivial weights everywhere."""
    return randomise(gamma_student_from_teacher(teacher, 8), seed=2).eval().requires_grad_(False)


def data():
    g = torch.Generator().manual_seed(5)
    return torch.randn(BATCH, 3, 8, 8, generator=g).clamp(-1, 1), tiny_cond(BATCH, seed=5)


class GuidedOracle:
    """The v of the guided teacher's x_hat (5), built in x-space by model.guidance.guided (not by
    the loss's own v-space shortcut); with `swap`, the branches the wrong way round; with
    `clip`, of the clipped guided x_hat."""

    def __init__(self, teacher, swap=False, clip=False):
        self.teacher, self.swap, self.clip = teacher, swap, clip  # clip: False, True (to [-1, 1]) or a bound

    def __call__(self, z, t, cond, gamma, predict="v"):
        if self.swap:  # (1 + g) x(z, null) - g x(z, c) = the guided prediction at -1 - g
            x = guided(self.teacher, -1.0 - gamma)(z, t, cond)
        else:
            x = guided(self.teacher, gamma)(z, t, cond)
        if self.clip:
            bound = 1.0 if self.clip is True else self.clip
            x = x.clamp(-bound, bound)
        return schedule.v_from_x(z=z, x=x, t=t)


def stage1(student, teacher, clip=False):
    x, cond = data()
    return stage1_loss(student, teacher, x, cond, gamma_range=(0.0, 4.0), weighting="snr+1", g=torch.Generator().manual_seed(3), clip=clip).item()


def test_stage1_loss_is_zero_for_the_guided_teacher_and_not_with_swapped_branches(teacher):
    assert stage1(GuidedOracle(teacher), teacher) < 1e-10
    assert stage1(GuidedOracle(teacher, swap=True), teacher) > 1e-4
    assert stage1(lambda z, t, c, gamma, predict: teacher(z, t, c, predict="v"), teacher) > 1e-4  # gamma ignored


def test_stage1_clips_the_guided_target_in_pixel_space(teacher):
    """The error is that of what the sampler uses, x_hat clipped to [-1, 1]: an x_hat beyond the
    bound where the target's is beyond it too costs nothing (both clip to the bound), so the
    teacher's own unclipped guided prediction is exact; one that stops short of it is not."""
    assert stage1(GuidedOracle(teacher, clip=True), teacher, clip=True) < 1e-10
    assert stage1(GuidedOracle(teacher), teacher, clip=True) < 1e-10
    assert stage1(GuidedOracle(teacher, clip=0.9), teacher, clip=True) > 1e-4  # the randomised teacher overshoots [-1, 1]
    assert stage1(GuidedOracle(teacher), teacher, clip=False) < 1e-10
    assert stage1(GuidedOracle(teacher, clip=True), teacher, clip=False) > 1e-4  # without clipping, the overshoot is the target


def ddim(denoise, z, t, s, cond):
    return schedule.ddim_step(z_t=z, x_hat=denoise(z, t, cond), t=t, s=s)


def one_step_x(z_t, z_s, t, s):
    """Solve z_s = alpha_s x + sigma_s (z_t - alpha_t x) / sigma_t for x (docs/design.md, stage 2)."""
    a_t, s_t, a_s, s_s = (schedule.expand_like(f(u), z_t) for f, u in ((schedule.alpha_t, t), (schedule.sigma_t, t), (schedule.alpha_t, s), (schedule.sigma_t, s)))
    return (z_s - s_s / s_t * z_t) / (a_s - s_s / s_t * a_t)


def test_stage2_target_makes_one_ddim_step_land_on_two_teacher_steps(student_teacher):
    x, cond = data()
    n = 4
    t = torch.tensor([1.0, 0.75, 0.5, 0.25, 1.0, 0.5])
    z = schedule.diffuse(x=x, eps=torch.randn_like(x), t=t)
    fn = gamma_conditioned(student_teacher, torch.linspace(0, 4, BATCH))
    target = two_ddim_steps_target(fn, z, t, t - 0.5 / n, t - 1.0 / n, cond)
    two = ddim(fn, ddim(fn, z, t, t - 0.5 / n, cond), t - 0.5 / n, t - 1.0 / n, cond)
    one = schedule.ddim_step(z_t=z, x_hat=target, t=t, s=t - 1.0 / n)
    assert torch.allclose(one, two, atol=1e-5)
    last = t == 0.25  # the step that ends at t = 0 lands on the teacher's last x_hat
    assert torch.allclose(target[last], fn(ddim(fn, z, t, t - 0.5 / n, cond), t - 0.5 / n, cond)[last], atol=1e-5)


class DistillOracle:
    """The N-step student docs/design.md asks for, computed independently of training/losses.py.
    Deterministic: from t = i/N, two teacher steps on (t, t - 1/2N, t - 1/N). Stochastic: two
    teacher steps of 1/N to t - 2/N when i >= 2, the teacher's own x_hat at i = 1."""

    def __init__(self, teacher, n, stochastic, grid_shift=0.0, clip=False):
        self.teacher, self.n, self.stochastic, self.shift, self.clip = teacher, n, stochastic, grid_shift, clip

    def __call__(self, z, t, cond, gamma, predict="v"):
        fn = gamma_conditioned(self.teacher, gamma)
        fn = clipped(fn) if self.clip else fn
        h = (1.0 if self.stochastic else 0.5) / self.n + self.shift
        mid = ddim(fn, z, t, t - h, cond)
        end = ddim(fn, mid, t - h, t - 2 * h, cond)
        x = one_step_x(z, end, t, t - 2 * h)
        if self.stochastic:
            first = ((t * self.n).round() == 1).reshape(-1, 1, 1, 1)
            x = torch.where(first, fn(z, t, cond), x)
        return schedule.v_from_x(z=z, x=x, t=t)


@pytest.mark.parametrize("stochastic", [False, True])
def test_distill_loss_is_zero_for_the_design_target(student_teacher, stochastic):
    x, cond = data()
    n = 4

    def loss(student, clip=False):
        return distill_loss(student, student_teacher, x, cond, steps=n, stochastic=stochastic, gamma_range=(0.0, 4.0), weighting="snr+1", g=torch.Generator().manual_seed(9), clip=clip).item()

    assert loss(DistillOracle(student_teacher, n, stochastic)) < 1e-8
    # pixel space: the teacher's x_hat is clipped in every teacher step of the target
    assert loss(DistillOracle(student_teacher, n, stochastic, clip=True), clip=True) < 1e-8
    assert loss(DistillOracle(student_teacher, n, stochastic), clip=True) > 1e-3
    # the other sampler's target, or a grid off by a quarter step, is caught
    assert loss(DistillOracle(student_teacher, n, not stochastic)) > 1e-3
    assert loss(DistillOracle(student_teacher, n, stochastic, grid_shift=0.25 / n)) > 1e-3
