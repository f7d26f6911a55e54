import pytest
import torch

from model import schedule
from model.schedule import time_grid
from model.conditioning import Cond
from model.guidance import gamma_conditioned
from model.noise import SeededNoise
from model.samplers import img2img_start, off_grid, sample_ddim, sample_dpmpp_2m, sample_stochastic, step_to_grid

EMPTY = Cond(labels=torch.zeros(1, dtype=torch.long))


def test_ddim_with_an_oracle_returns_the_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    z1 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    oracle = lambda z, t, cond: x
    for steps in (1, 2, 7, 256):
        out = sample_ddim(oracle, z1.clone(), EMPTY, grid=time_grid(steps))
        assert torch.allclose(out, x, atol=1e-12, rtol=0)


def gaussian_posterior_mean(m: float, s: float):
    """E[x | z_t] for data N(m, s^2) per coordinate."""

    def denoise(z, t, cond):
        a, sg = schedule.expand_like(schedule.alpha_t(t), z), schedule.expand_like(schedule.sigma_t(t), z)
        return m + a * s**2 / (a**2 * s**2 + sg**2) * (z - a * m)

    return denoise


def test_dpmpp_2m_converges_faster_than_ddim_on_gaussian_data():
    m, s = 0.5, 0.3
    z1 = torch.randn(1000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = m + s * z1  # the probability-flow ODE keeps the standardised coordinate
    denoise = gaussian_posterior_mean(m, s)
    err = {}
    for name, sampler in (("ddim", sample_ddim), ("dpm", sample_dpmpp_2m)):
        for steps in (4, 8, 16, 64):
            err[name, steps] = (sampler(denoise, z1.clone(), EMPTY, grid=time_grid(steps)) - exact).abs().max().item()
    # second order vs first order: the gap widens with the step count
    assert err["dpm", 4] < err["ddim", 4]
    assert err["dpm", 8] < err["ddim", 8] / 1.3
    assert err["dpm", 16] < err["ddim", 16] / 3
    assert err["dpm", 64] < err["ddim", 64] / 5
    assert err["dpm", 64] < err["dpm", 16] < err["dpm", 8] < err["dpm", 4]
    assert sample_dpmpp_2m(denoise, z1.clone(), EMPTY, grid=time_grid(512)).sub(exact).abs().max() < 1e-3


def test_stochastic_sampler_keeps_the_forward_marginals():
    """With data a point mass x0 and the exact denoiser, every grid point's z_t must be
    N(alpha_t x0, sigma_t^2): true only if the added noise has variance sigma_{s|u}^2."""
    x0 = 0.8
    seen = {}

    def oracle(z, t, cond):
        seen[round(t[0].item(), 6)] = z.clone()
        return torch.full_like(z, x0)

    n = 50_000
    noise = SeededNoise(list(range(n)), dtype=torch.float64)
    z1 = noise.randn((1,))
    out = sample_stochastic(oracle, z1, EMPTY, grid=time_grid(8), noise=noise)
    assert torch.allclose(out, torch.full_like(out, x0))
    for t_val, z in seen.items():
        t = torch.tensor(t_val, dtype=torch.float64)
        assert abs(z.mean().item() - schedule.alpha_t(t).item() * x0) < 0.02, t_val
        assert abs(z.std().item() - schedule.sigma_t(t).item()) < 0.02, t_val
    assert len(seen) == 8


def test_same_seed_same_sample_whatever_shares_the_batch():
    from .conftest import tiny_cond, randomise
    from model.denoiser import Denoiser
    from .conftest import TINY_UNET

    torch.manual_seed(0)
    student = randomise(Denoiser(dict(TINY_UNET, gamma_embed_dim=8))).eval()
    cond3 = tiny_cond(3, seed=4)
    gammas = torch.tensor([0.0, 1.5, 4.0])
    with torch.no_grad():
        for sampler in (sample_ddim, sample_stochastic):
            alone_noise = SeededNoise([1234])
            alone = sampler(gamma_conditioned(student, gammas[1:2]), alone_noise.randn((3, 8, 8)), cond3.index(slice(1, 2)), grid=time_grid(4), noise=alone_noise)
            batch_noise = SeededNoise([7, 1234, 99])
            batch = sampler(gamma_conditioned(student, gammas), batch_noise.randn((3, 8, 8)), cond3, grid=time_grid(4), noise=batch_noise)
            assert torch.allclose(alone[0], batch[1], atol=1e-5)
            assert not torch.allclose(batch[0], batch[1], atol=1e-2)


def test_img2img_starts_at_the_strength_and_steps_once_to_the_grid():
    x = torch.full((4, 2), 0.5, dtype=torch.float64)
    noise = SeededNoise([0, 1, 2, 3], dtype=torch.float64)
    z, t, start = img2img_start(x, torch.tensor([1.0, 0.5, 0.3, 0.1]), time_grid(4), noise)
    assert start.tolist() == [4, 2, 1, 0]
    assert off_grid(t, start, time_grid(4)).tolist() == [False, False, True, True]
    eps = SeededNoise([0, 1, 2, 3], dtype=torch.float64).randn((2,))
    assert torch.allclose(z, schedule.diffuse(x=x, eps=eps, t=t), atol=1e-6)  # exactly at t = strength, not snapped
    calls = []

    def oracle(zz, tt, cond):
        calls.append(tt.tolist())
        return torch.full_like(zz, 0.5)

    z = step_to_grid(oracle, z, EMPTY, t=t, start=start, grid=time_grid(4))
    assert len(calls) == 1 and calls[0] == pytest.approx([1.0, 0.5, 0.3, 0.1])  # each sample at its own t
    assert torch.allclose(z[3], x[3])  # strength below 1/N: the partial step lands on t = 0
    calls.clear()
    out = sample_ddim(lambda zz, tt, cond: (calls.append(tt[0].item()), torch.full_like(zz, 0.5))[1], z, EMPTY, grid=time_grid(4), start=start)
    assert calls == [1.0, 0.75, 0.5, 0.25]
    assert torch.allclose(out, x)
    # strength 1 is plain generation from the same seed
    z_full, _, _ = img2img_start(torch.randn(1, 2, dtype=torch.float64), 1.0, time_grid(4), SeededNoise([5], dtype=torch.float64))
    plain = SeededNoise([5], dtype=torch.float64).randn((2,))
    assert torch.allclose(z_full, plain, atol=1e-12)  # (a strength outside (0, 1] never gets here: model/validation.py)


@pytest.mark.slow  # statistics over many samples and step counts
def test_stochastic_sampler_differs_from_ddim_where_it_must():
    """Gaussian data N(m, s^2), exact denoiser: at 1 step the two samplers are the same map;
    from 2 steps on the stochastic one renoises, so its samples differ from DDIM's for the same
    start and depend on the renoising draws, while its mean stays the data's and, with many
    steps, its spread converges to the data's s."""
    m, s = 0.5, 0.3
    denoise = gaussian_posterior_mean(m, s)
    n = 20_000

    def start(offset=0):
        noise = SeededNoise(list(range(offset, offset + n)), dtype=torch.float64)
        return noise, noise.randn((1,))

    noise, z1 = start()
    one_ddim = sample_ddim(denoise, z1.clone(), EMPTY, grid=time_grid(1))
    one_sto = sample_stochastic(denoise, z1.clone(), EMPTY, grid=time_grid(1), noise=noise)
    assert torch.equal(one_ddim, one_sto)
    for steps in (2, 4, 8):
        noise, z1 = start()
        ddim = sample_ddim(denoise, z1.clone(), EMPTY, grid=time_grid(steps))
        sto = sample_stochastic(denoise, z1.clone(), EMPTY, grid=time_grid(steps), noise=noise)
        other = sample_stochastic(denoise, z1.clone(), EMPTY, grid=time_grid(steps), noise=SeededNoise(list(range(n, 2 * n)), dtype=torch.float64))
        assert (ddim - sto).abs().mean() > 0.01 and (sto - other).abs().mean() > 0.01
        assert abs(sto.mean().item() - m) < 0.01
    # with many steps the renoised chain still ends on the data distribution
    noise, z1 = start()
    assert abs(sample_stochastic(denoise, z1, EMPTY, grid=time_grid(128), noise=noise).std().item() - s) < 0.02


@pytest.mark.parametrize("sampler", [sample_ddim, sample_stochastic, sample_dpmpp_2m])
def test_callback_sees_every_step_and_its_clean_prediction(sampler):
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    predictions = []

    def oracle(z, t, cond):
        predictions.append(x + t[:, None])  # a different prediction at every step
        return predictions[-1]

    seen = []
    noise = SeededNoise([1, 2, 3], dtype=torch.float64)
    plain = sampler(oracle, noise.randn((2,)), EMPTY, grid=time_grid(5), noise=SeededNoise([4, 5, 6], dtype=torch.float64))
    predictions.clear()
    noise = SeededNoise([1, 2, 3], dtype=torch.float64)
    with_callback = sampler(oracle, noise.randn((2,)), EMPTY, grid=time_grid(5), noise=SeededNoise([4, 5, 6], dtype=torch.float64),
                            callback=lambda k, n, x_hat: seen.append((k, n, x_hat.clone())))
    assert torch.equal(plain, with_callback)  # watching changes nothing
    assert [(k, n) for k, n, _ in seen] == [(k, 5) for k in range(5)]
    for (_, _, x_hat), predicted in zip(seen, predictions):
        assert torch.equal(x_hat, predicted)


def test_time_grid_is_uniform_from_zero_to_one():
    assert time_grid(4).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert time_grid(1).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="steps"):
        time_grid(0)
    with pytest.raises(ValueError, match="grid"):
        sample_ddim(lambda z, t, c: z, torch.zeros(1, 2), EMPTY, grid=torch.tensor([1.0]))
