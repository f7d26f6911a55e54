"""A diffusers teacher's discrete schedule on fewstep's continuous time (model/discrete_schedule.py)."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from model import discrete_schedule as ds
from model import schedule
from model.config_io import ConfigError

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
CONFIGS = [SD, {"beta_schedule": "linear"}, {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 200}]


@pytest.mark.parametrize("config", CONFIGS)
def test_integer_timesteps_map_back_exactly_and_noise_the_same(config):
    s = ds.from_scheduler_config(config)
    reference = DDPMScheduler(**config)
    assert torch.equal(s.alphas_cumprod, reference.alphas_cumprod.to(torch.float64))
    taus = torch.arange(0, s.num_timesteps, 7)
    t = ds.time_of_logsnr(s.logsnr[taus])
    assert torch.allclose(ds.timestep(s, t), taus.to(torch.float64), atol=1e-6)
    # fewstep's z_t at that t is diffusers' add_noise at tau: the same signal and noise scales
    x, eps = torch.randn(len(taus), 3, 4, 4, dtype=torch.float64), torch.randn(len(taus), 3, 4, 4, dtype=torch.float64)
    theirs = reference.add_noise(x.float(), eps.float(), taus).double()
    assert torch.allclose(schedule.diffuse(x=x, eps=eps, t=t), theirs, atol=1e-5)
    alpha, sigma = ds.signal_scales(s, taus.to(torch.float64))
    assert torch.allclose(alpha, s.alphas_cumprod[taus].sqrt()) and torch.allclose(sigma, (1 - s.alphas_cumprod[taus]).sqrt())


def test_between_timesteps_the_log_snr_is_interpolated_and_the_ends_are_clamped():
    s = ds.from_scheduler_config(SD)
    mid = 0.5 * (s.logsnr[10] + s.logsnr[11])
    assert ds.timestep(s, ds.time_of_logsnr(mid[None])).item() == pytest.approx(10.5, abs=1e-6)
    taus = ds.timestep(s, torch.linspace(0, 1, 101, dtype=torch.float64))
    assert (taus[1:] >= taus[:-1]).all()  # more noise, later timestep
    assert taus[0] == 0 and taus[-1] == s.num_timesteps - 1
    t_min, t_max = ds.covered_times(s)
    assert t_max == pytest.approx(0.9565, abs=1e-3)  # Stable Diffusion's last timestep is not pure noise
    assert ds.timestep(s, torch.tensor([t_max + 0.02], dtype=torch.float64)).item() == s.num_timesteps - 1


@pytest.mark.parametrize("prediction_type", ds.PREDICTION_TYPES)
def test_each_prediction_type_gives_back_the_clean_sample(prediction_type):
    s = ds.from_scheduler_config(SD)
    tau = torch.tensor([3.0, 250.5, 999.0], dtype=torch.float64)
    alpha, sigma = ds.signal_scales(s, tau)
    x, eps = torch.randn(3, 4, 8, 8, dtype=torch.float64), torch.randn(3, 4, 8, 8, dtype=torch.float64)
    a, sg = alpha[:, None, None, None], sigma[:, None, None, None]
    z = a * x + sg * eps
    output = {"epsilon": eps, "v_prediction": a * eps - sg * x, "sample": x}[prediction_type]
    assert torch.allclose(ds.x_from_output(output, z, prediction_type, alpha, sigma), x, atol=1e-9)


def test_zero_terminal_snr_reaches_fewsteps_clipped_end():
    s = ds.from_scheduler_config({**SD, "rescale_betas_zero_snr": True})
    assert s.logsnr[-1] == schedule.LOGSNR_MIN
    assert ds.covered_times(s)[1] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    "config,needle",
    [
        ({"beta_schedule": "sigmoid"}, "beta_schedule 'sigmoid' is not supported"),
        ({"beta_schedule": "linear", "num_train_timesteps": 1}, "num_train_timesteps"),
    ],
)
def test_unsupported_schedules_are_refused(config, needle):
    with pytest.raises(ConfigError, match=needle):
        ds.from_scheduler_config(config)


def test_trained_betas_and_unknown_prediction_types():
    betas = torch.linspace(1e-4, 0.02, 50).tolist()
    s = ds.from_scheduler_config({"trained_betas": betas, "num_train_timesteps": 50, "beta_schedule": "anything"})
    assert s.num_timesteps == 50
    assert math.isclose(float(s.alphas_cumprod[0]), 1 - betas[0], rel_tol=1e-6)
    with pytest.raises(ConfigError, match="prediction_type 'flow'"):
        ds.x_from_output(torch.zeros(1, 1), torch.zeros(1, 1), "flow", torch.ones(1), torch.zeros(1))


def test_the_bounded_epsilon_reading_is_epsilon_above_its_floor_and_caps_the_gain_below():
    """A student read as bounded_epsilon equals its epsilon teacher wherever alpha >= floor (so
    it starts as the teacher there), and an output error moves x_hat by at most 1/floor times
    as much (epsilon's own gain at the linear schedule's last timestep is 1/0.0064 = 156)."""
    s = ds.from_scheduler_config({"beta_schedule": "linear"})
    floor = 0.2
    tau = torch.tensor([0.0, 300.0, 600.0, 800.0, 999.0], dtype=torch.float64)
    alpha, sigma = ds.signal_scales(s, tau)
    z, out = torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.randn(5, 3, 4, 4, dtype=torch.float64)
    bounded = ds.x_from_output(out, z, "bounded_epsilon", alpha, sigma, floor)
    eps = ds.x_from_output(out, z, "epsilon", alpha, sigma)
    above = alpha >= floor
    assert above.any() and (~above).any()
    assert torch.allclose(bounded[above], eps[above], atol=1e-9)
    assert not torch.allclose(bounded[~above], eps[~above])
    gain = (ds.x_from_output(out + 1.0, z, "bounded_epsilon", alpha, sigma, floor) - bounded).abs().amax(dim=(1, 2, 3))
    assert (gain <= 1 / floor + 1e-9).all() and gain[-1].item() == pytest.approx(sigma[-1].item() / floor, rel=1e-9)
    assert (ds.x_from_output(out + 1.0, z, "epsilon", alpha, sigma) - eps).abs().max() > 100
