"""Mixed precision: bf16 around the networks only keeps the distillation targets close to fp32,
where they divide by small numbers (t near 1, N = 128); doing the target's arithmetic in bf16
too would not. Gradient checkpointing changes no gradient."""

import torch

from model import schedule
from model.denoiser import gamma_student_from_teacher
from model.guidance import gamma_conditioned
from training.losses import two_ddim_steps_target
from training.precision import Autocast, enable_gradient_checkpointing

from ..model.conftest import randomise, tiny_cond
from .test_losses import teacher  # noqa: F401  (fixture)

N = 128
TOLERANCE = 0.01  # RMSE of the bf16-network target against fp32, relative to its RMS (measured: 0.0034 at t = 1, N = 128)


def _target(net, z, t, cond, dtype=torch.float32):
    fn = gamma_conditioned(net, torch.full((z.shape[0],), 2.0))
    z, t = z.to(dtype), t.to(dtype)
    return two_ddim_steps_target(lambda a, b, c: fn(a, b, c).to(dtype), z, t, t - 0.5 / N, t - 1.0 / N, cond).float()


def _rel(a, b):
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


def test_bf16_networks_keep_the_target_close_near_t_1(teacher):  # noqa: F811
    student = randomise(gamma_student_from_teacher(teacher, 8), seed=3).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 3, 8, 8, generator=g)
    cond = tiny_cond(16, seed=1)
    errors = {}
    for i in (N, N - 1, N - 4):  # t = 1 and the grid points just below
        t = torch.full((16,), i / N)
        exact = _target(student, z, t, cond)
        mixed = _target(Autocast(student), z, t, cond)
        in_bf16 = _target(Autocast(student), z, t, cond, dtype=torch.bfloat16)  # the failure the option avoids
        errors[i] = (_rel(mixed, exact), _rel(in_bf16, exact))
        assert torch.isfinite(mixed).all()
        assert errors[i][0] < TOLERANCE, errors
    assert errors[N][1] > 3 * errors[N][0], errors  # bf16 arithmetic in the target itself is far worse at t = 1


def test_autocast_returns_fp32(teacher):  # noqa: F811
    z, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    out = Autocast(teacher)(z, t, tiny_cond(2))
    assert out.dtype == torch.float32


def test_gradient_checkpointing_changes_no_gradient(teacher):  # noqa: F811
    z, t, cond = torch.randn(4, 3, 8, 8), torch.rand(4), tiny_cond(4)
    grads = []
    for checkpointing in (False, True):
        net = randomise(gamma_student_from_teacher(teacher, 8), seed=4).train()
        if checkpointing:
            assert enable_gradient_checkpointing(net)
        net(z, t, cond, torch.ones(4), predict="v").pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
