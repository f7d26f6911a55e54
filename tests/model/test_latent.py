"""The autoencoder seam: the same denoiser, losses and samplers run in a latent space."""

import torch

from model.autoencoder import AutoencoderConfig, build_autoencoder, encode_inpaint_context
from model.conditioning import Cond
from model.denoiser import Denoiser, gamma_student_from_teacher
from model.guidance import gamma_conditioned, guided
from model.noise import SeededNoise
from model.schedule import time_grid
from model.samplers import sample_ddim, sample_stochastic


def test_tiny_autoencoderkl_latent_path():
    torch.manual_seed(0)
    cfg = AutoencoderConfig(kind="kl", latent_channels=4, downsample=2, block_out_channels=(8, 16), norm_num_groups=4, scaling_factor=0.5)
    ae = build_autoencoder(cfg).eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    masks = torch.zeros(2, 16, 16)
    masks[:, :5, :5] = 1
    with torch.no_grad():
        latents = ae.encode(images)
        assert latents.shape == (2, 4, 8, 8)
        context = encode_inpaint_context(ae, images, masks)
    assert context.shape == (2, 5, 8, 8)
    assert context[:, 4, :3, :3].eq(1).all() and context[:, 4, 3:, 3:].eq(0).all()  # mask at latent resolution

    net = {"kind": "unet", "resolution": 8, "channels": 4, "context_channels": 5, "num_classes": 3, "block_out_channels": [8, 16], "attention_levels": [False, False], "norm_num_groups": 4}
    teacher = Denoiser(net)
    cond = Cond(labels=torch.tensor([0, 2]), context=context)
    from training.losses import teacher_loss

    loss = teacher_loss(teacher, latents, cond, weighting="snr+1", g=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    student = gamma_student_from_teacher(teacher, 8).eval()
    with torch.no_grad():
        noise = SeededNoise([1, 2])
        z = noise.randn((4, 8, 8))
        out_t = sample_ddim(guided(teacher.eval(), 1.0), z, cond, grid=time_grid(2))
        out_s = sample_ddim(gamma_conditioned(student, 1.0), z, cond, grid=time_grid(2))
        assert out_t.shape == out_s.shape == (2, 4, 8, 8)
        assert torch.isfinite(out_s).all()
        decoded = ae.decode(sample_stochastic(gamma_conditioned(student, 1.0), z, cond, grid=time_grid(2), noise=noise))
    assert decoded.shape == (2, 3, 16, 16)
