"""A diffusers U-Net as a fewstep teacher and student (model/diffusers_backbone.py)."""

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel

from model import discrete_schedule as ds
from model.conditioning import NULL_LABEL, Cond
from model.config_io import ConfigError
from model.denoiser import Denoiser, gamma_student_from_teacher

SCHED = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}


def tiny_unet(unet_class: str, prediction_type: str = "epsilon"):
    common = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, num_class_embeds=5)
    if unet_class == "UNet2DModel":
        unet = UNet2DModel(**common, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    else:
        unet = UNet2DConditionModel(**common, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), mid_block_type="UNetMidBlock2D", cross_attention_dim=8)
    torch.manual_seed(0)
    for p in unet.parameters():  # a trained-looking network: no zero-initialised output layer
        p.data.normal_(0, 0.05)
    network = {"kind": "diffusers", "unet_class": unet_class, "unet": dict(unet.config), "scheduler": SCHED, "prediction_type": prediction_type, "null_class": 4, "channels": 3, "resolution": 8}
    teacher = Denoiser(network)
    teacher.backbone.unet.load_state_dict(unet.state_dict())
    return unet, teacher.eval()


@pytest.mark.parametrize("unet_class", ["UNet2DConditionModel", "UNet2DModel"])
@pytest.mark.parametrize("prediction_type", ds.PREDICTION_TYPES)
def test_the_teacher_reads_the_unet_in_its_own_parametrisation(unet_class, prediction_type):
    unet, teacher = tiny_unet(unet_class, prediction_type)
    s = ds.from_scheduler_config(SCHED)
    tau = torch.tensor([10, 500, 900])
    t = ds.time_of_logsnr(s.logsnr[tau]).float()
    z = torch.randn(3, 3, 8, 8)
    labels = torch.tensor([0, 3, NULL_LABEL])
    with torch.no_grad():
        x_hat = teacher(z, t, Cond(labels=labels))
        extra = {"encoder_hidden_states": None} if unet_class == "UNet2DConditionModel" else {}
        out = unet(z, tau.float(), class_labels=torch.tensor([0, 3, 4]), **extra).sample
    abar = DDPMScheduler(**SCHED).alphas_cumprod[tau][:, None, None, None]
    expected = {"epsilon": (z - (1 - abar).sqrt() * out) / abar.sqrt(), "v_prediction": abar.sqrt() * z - (1 - abar).sqrt() * out, "sample": out}[prediction_type]
    assert torch.allclose(x_hat, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("unet_class", ["UNet2DConditionModel", "UNet2DModel"])
def test_a_fresh_student_is_its_teacher_and_gamma_reaches_it(unet_class):
    _, teacher = tiny_unet(unet_class)
    student = gamma_student_from_teacher(teacher, 16, "embedding", 1.0, ())
    z, t, cond = torch.randn(4, 3, 8, 8), torch.rand(4) * 0.9 + 0.05, Cond(labels=torch.tensor([0, 1, 2, 3]))
    with torch.no_grad():
        assert torch.allclose(student(z, t, cond, torch.full((4,), 3.0)), teacher(z, t, cond), atol=1e-6)
        for p in student.gamma_parameters():
            p.add_(0.1 * torch.randn_like(p))  # once the branch has learned something, gamma steers
        a, b = student(z, t, cond, torch.zeros(4)), student(z, t, cond, torch.full((4,), 4.0))
    assert (a - b).abs().max() > 1e-3


def test_a_class_teacher_without_a_null_class_is_refused():
    unet, _ = tiny_unet("UNet2DModel")
    network = {"kind": "diffusers", "unet_class": "UNet2DModel", "unet": dict(unet.config), "scheduler": SCHED, "null_class": None}
    with pytest.raises(ConfigError, match="needs its null class"):
        Denoiser(network)
