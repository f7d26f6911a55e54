import pytest
import torch

from model.denoiser import Denoiser, gamma_student_from_teacher
from model.guidance import clipped, gamma_conditioned, guided, inpainting

from .conftest import randomise, tiny_cond


def test_gamma_zero_is_conditional_and_minus_one_unconditional(tiny_unet):
    cond = tiny_cond(3)
    z, t = torch.randn(3, 3, 8, 8), torch.tensor([0.2, 0.5, 0.9])
    with torch.no_grad():
        x_c, x_u = tiny_unet(z, t, cond), tiny_unet(z, t, cond.null())
        assert not torch.allclose(x_c, x_u, atol=1e-3)  # the condition matters
        assert torch.allclose(guided(tiny_unet, 0.0)(z, t, cond), x_c, atol=1e-5)
        assert torch.allclose(guided(tiny_unet, -1.0)(z, t, cond), x_u, atol=1e-5)
        g = torch.tensor([0.0, 2.0, -1.0])
        mixed = guided(tiny_unet, g)(z, t, cond)
        assert torch.allclose(mixed[1], 3 * x_c[1] - 2 * x_u[1], atol=1e-4)
        assert torch.allclose(mixed[2], x_u[2], atol=1e-5)


@pytest.mark.parametrize("pathway", ["embedding", "time_features"])
def test_fresh_stage1_student_equals_teacher_exactly(tiny_unet, pathway):
    student = gamma_student_from_teacher(tiny_unet, gamma_embed_dim=16, pathway=pathway, scale=1.0).eval()
    cond = tiny_cond(4, seed=3)
    z, t = torch.randn(4, 3, 8, 8), torch.rand(4)
    with torch.no_grad():
        expected = tiny_unet(z, t, cond)
        for gamma in (0.0, 1.0, 4.0):
            assert torch.equal(gamma_conditioned(student, gamma)(z, t, cond), expected)
        # once trained, the gamma branch makes gamma matter; it is all that the teacher lacks
        branch = student.gamma_parameters()
        assert branch and {id(p) for p in branch} <= {id(p) for p in student.parameters()}
        assert sum(p.numel() for p in student.parameters()) - sum(p.numel() for p in branch) == sum(p.numel() for p in tiny_unet.parameters())
        for p in branch:
            torch.nn.init.normal_(p)
        assert not torch.allclose(student(z, t, cond, 0.0), student(z, t, cond, 4.0), atol=1e-4)


def test_gamma_features_vary_smoothly_over_the_range_at_scale_one(tiny_unet):
    """At the recipes' scale, no Fourier feature of gamma turns more than about two-thirds of a
    period over [0, 4]; at the first recipes' scale (100) most features oscillate many times."""
    student = gamma_student_from_teacher(tiny_unet, gamma_embed_dim=16, scale=1.0)
    gammas = torch.linspace(0, 4, 401)
    f = student.gamma_features(gammas, len(gammas), "cpu")
    sign_changes = ((f[1:] * f[:-1]) < 0).sum(0)
    assert int(sign_changes.max()) <= 2
    old = gamma_student_from_teacher(tiny_unet, gamma_embed_dim=16, scale=100.0)
    f_old = old.gamma_features(gammas, len(gammas), "cpu")
    assert int(((f_old[1:] * f_old[:-1]) < 0).sum(0).max()) > 50


@pytest.mark.parametrize("pathway", ["embedding", "time_features"])
def test_fresh_mlp_student_equals_teacher_exactly(pathway):
    torch.manual_seed(0)
    teacher = randomise(Denoiser({"kind": "mlp", "channels": 2, "num_classes": 3, "hidden": 32, "depth": 2})).eval()
    student = gamma_student_from_teacher(teacher, gamma_embed_dim=8, pathway=pathway).eval()
    from model.conditioning import Cond

    cond = Cond(labels=torch.tensor([0, 1, 2, -1]))
    z, t = torch.randn(4, 2), torch.rand(4)
    with torch.no_grad():
        assert torch.equal(student(z, t, cond, 3.0), teacher(z, t, cond))


def test_null_prompt_rows_use_the_learned_null_sequence(tiny_unet):
    cond = tiny_cond(2)
    other = cond.drop(drop_text=torch.tensor([True, True]))
    z, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    with torch.no_grad():
        # whatever the token states of a dropped prompt, the output is the same
        scrambled = type(other)(labels=other.labels, text=torch.randn_like(other.text), text_mask=other.text_mask, context=other.context)
        assert torch.allclose(tiny_unet(z, t, other), tiny_unet(z, t, scrambled), atol=1e-6)
        assert not torch.allclose(tiny_unet(z, t, other), tiny_unet(z, t, cond), atol=1e-4)


def test_clipped_keeps_x_hat_in_the_data_range():
    wild = lambda z, t, cond: 3 * z  # noqa: E731
    z = torch.linspace(-1, 1, 9)[None]
    out = clipped(wild)(z, torch.ones(1), None)
    assert out.min() == -1 and out.max() == 1 and torch.equal(out[0, 3:6], 3 * z[0, 3:6])


def test_inpainting_keeps_the_known_region_on_its_noising_path_at_every_step():
    """DDIM with x_hat replaced in the kept region: at every grid point the kept part of z is
    alpha_t x_known + sigma_t eps_1 (eps_1: the start noise), and at t = 0 it is x_known exactly,
    before any pixels are pasted back; the repainted part is the model's."""
    from model import schedule
    from model.samplers import sample_ddim
    from model.schedule import time_grid

    g = torch.Generator().manual_seed(0)
    x_known = torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    keep = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    keep[..., :4] = True
    z1 = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    seen = []

    def model(z, t, cond):
        seen.append((t[0].item(), z.clone()))
        return torch.tanh(z)  # any x_hat

    out = sample_ddim(inpainting(model, x_known, keep), z1.clone(), None, grid=time_grid(5))
    kept = keep.expand_as(out)
    assert torch.allclose(out[kept], x_known[kept], atol=1e-12)
    for t_val, z in seen:
        t = torch.tensor(t_val, dtype=torch.float64)
        path = schedule.alpha_t(t) * x_known + schedule.sigma_t(t) * z1
        assert torch.allclose(z[kept], path[kept], atol=1e-9), t_val
    assert not torch.allclose(out[~kept], x_known[~kept], atol=1e-2)


@pytest.mark.parametrize("extrapolate", [("class",), ("text",), ("class", "text")])
def test_extrapolated_conditions_start_at_the_teacher_and_follow_gamma(tiny_unet, extrapolate):
    """With gamma_extrapolate, a fresh student is its teacher at gamma = 0, and at gamma > 0 it is
    exactly the teacher fed the pushed condition null + (1 + gamma)(c - null); rows whose condition
    is dropped are untouched."""
    from model.networks import extrapolate as push

    student = gamma_student_from_teacher(tiny_unet, gamma_embed_dim=16, extrapolate=extrapolate).eval()
    cond = tiny_cond(4)
    z, t = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3)), torch.full((4,), 0.6)
    with torch.no_grad():
        assert torch.allclose(student(z, t, cond, 0.0), tiny_unet(z, t, cond), atol=1e-6)
        gamma = torch.tensor([0.0, 1.0, 2.5, 4.0])
        moved = student(z, t, cond, gamma)
        assert not torch.allclose(moved[1:], tiny_unet(z[1:], t[1:], cond.index(slice(1, 4))), atol=1e-4)
        # the same move by hand: the teacher with pushed weights for one gamma at a time
        unet = tiny_unet.backbone.unet
        for k in range(1, 4):
            teacher = Denoiser(tiny_unet.network_config)
            teacher.load_state_dict(tiny_unet.state_dict())
            teacher.eval()
            c = cond.index(slice(k, k + 1))
            if "class" in extrapolate:
                w = unet.class_embedding.weight
                pushed = w.clone()
                pushed[c.labels] = push(w[c.labels], w[-1:], gamma[k : k + 1])
                teacher.backbone.unet.class_embedding.weight.copy_(pushed)
            if "text" in extrapolate:
                c = type(c)(labels=c.labels, text=push(c.text, tiny_unet.backbone.null_text, gamma[k : k + 1]), text_mask=c.text_mask, context=c.context)
            assert torch.allclose(moved[k : k + 1], teacher(z[k : k + 1], t[k : k + 1], c), atol=1e-5)
        dropped = cond.drop(drop_labels=torch.ones(4, dtype=torch.bool), drop_text=torch.ones(4, dtype=torch.bool))
        assert torch.allclose(student(z, t, dropped, gamma), tiny_unet(z, t, dropped), atol=1e-6)
