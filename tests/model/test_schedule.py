import math

import torch

from model import schedule


def test_cosine_schedule_is_variance_preserving_and_finite():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    a, s = schedule.alpha_t(t), schedule.sigma_t(t)
    assert torch.allclose(a**2 + s**2, torch.ones_like(t))
    assert a[0] == 1 and s[0] == 0 and abs(a[-1]) < 1e-15 and s[-1] == 1
    lam = schedule.logsnr(t)
    assert torch.isfinite(lam).all()
    assert lam[0] == schedule.LOGSNR_MAX and lam[-1] == schedule.LOGSNR_MIN
    assert (lam[1:] <= lam[:-1]).all()
    # golden value: t = 1/2 has alpha = sigma, log-SNR 0; t = 1/3 has tan(pi/6)^-2 = 3
    assert abs(schedule.logsnr(torch.tensor(0.5, dtype=torch.float64)).item()) < 1e-12
    assert abs(schedule.logsnr(torch.tensor(1 / 3, dtype=torch.float64)).item() - math.log(3)) < 1e-12


def test_v_x_eps_conversions_round_trip():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    t = torch.rand(5, generator=g, dtype=torch.float64) * 0.98 + 0.01
    z = schedule.diffuse(x=x, eps=eps, t=t)
    v = schedule.v_from_x_eps(x=x, eps=eps, t=t)
    assert torch.allclose(schedule.x_from_v(z=z, v=v, t=t), x)
    assert torch.allclose(schedule.eps_from_v(z=z, v=v, t=t), eps)
    assert torch.allclose(schedule.v_from_x(z=z, x=x, t=t), v)


def test_one_ddim_step_with_x_tilde_equals_two_teacher_steps():
    """Stage-2 target identity: a student that outputs x_tilde reproduces two teacher DDIM steps."""
    g = torch.Generator().manual_seed(1)
    teacher = lambda z, t: torch.tanh(1.7 * z + t[:, None])  # any deterministic x_hat
    for n in (1, 2, 4, 64):
        i = torch.randint(1, n + 1, (6,), generator=g).double()
        t, t1, t2 = i / n, i / n - 0.5 / n, i / n - 1.0 / n
        z_t = torch.randn(6, 4, generator=g, dtype=torch.float64)
        z_t1 = schedule.ddim_step(z_t=z_t, x_hat=teacher(z_t, t), t=t, s=t1)
        z_t2 = schedule.ddim_step(z_t=z_t1, x_hat=teacher(z_t1, t1), t=t1, s=t2)
        target = schedule.x_tilde(z_t=z_t, z_s=z_t2, t=t, s=t2)
        one_step = schedule.ddim_step(z_t=z_t, x_hat=target, t=t, s=t2)
        assert torch.allclose(one_step, z_t2, atol=1e-12, rtol=0)
    # at t'' = 0 the target is the teacher's own output
    z_t = torch.randn(3, 4, generator=g, dtype=torch.float64)
    t = torch.full((3,), 1.0 / 4, dtype=torch.float64)
    assert torch.allclose(schedule.x_tilde(z_t=z_t, z_s=teacher(z_t, t), t=t, s=torch.zeros(3, dtype=torch.float64)), teacher(z_t, t))


def test_renoise_variance_matches_forward_process():
    u, s = torch.tensor(0.25, dtype=torch.float64), torch.tensor(0.375, dtype=torch.float64)
    var = schedule.sigma_s_given_u(s=s, u=u) ** 2
    expected = schedule.sigma_t(s) ** 2 - (schedule.alpha_t(s) / schedule.alpha_t(u)) ** 2 * schedule.sigma_t(u) ** 2
    assert torch.allclose(var, expected) and var > 0
    # empirically: renoising z_u ~ q(z_u | x) gives z_s ~ q(z_s | x): mean alpha_s x, variance sigma_s^2
    g = torch.Generator().manual_seed(2)
    x = torch.full((200_000,), 0.7, dtype=torch.float64)
    z_u = schedule.diffuse(x=x, eps=torch.randn(x.shape, generator=g, dtype=torch.float64), t=u)
    z_s = schedule.renoise(z_u=z_u, u=u, s=s, xi=torch.randn(x.shape, generator=g, dtype=torch.float64))
    assert abs(z_s.mean().item() - schedule.alpha_t(s).item() * 0.7) < 5e-3
    assert abs(z_s.var().item() - schedule.sigma_t(s).item() ** 2) < 5e-3


def test_loss_weights():
    t = torch.tensor([0.1, 0.5, 0.9])
    assert torch.equal(schedule.loss_weight(t, "snr+1"), torch.ones(3))
    w = schedule.loss_weight(t, "truncated-snr")
    # max(SNR, 1) on x-MSE == max(alpha^2, sigma^2) on v-MSE
    snr = schedule.alpha_t(t) ** 2 / schedule.sigma_t(t) ** 2
    assert torch.allclose(w, torch.maximum(snr, torch.ones(3)) * schedule.sigma_t(t) ** 2)
