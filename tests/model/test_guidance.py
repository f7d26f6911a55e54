import torch

from model.denoiser import Denoiser, gamma_student_from_teacher
from model.guidance import gamma_conditioned, guided

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


def test_fresh_stage1_student_equals_teacher_exactly(tiny_unet):
    student = gamma_student_from_teacher(tiny_unet, gamma_embed_dim=16).eval()
    cond = tiny_cond(4, seed=3)
    z, t = torch.randn(4, 3, 8, 8), torch.rand(4)
    with torch.no_grad():
        expected = tiny_unet(z, t, cond)
        for gamma in (0.0, 1.0, 4.0):
            assert torch.equal(gamma_conditioned(student, gamma)(z, t, cond), expected)
        # once trained, the projection makes gamma matter
        torch.nn.init.normal_(student.backbone.gamma_projection().weight)
        assert not torch.allclose(student(z, t, cond, 0.0), student(z, t, cond, 4.0), atol=1e-4)


def test_fresh_mlp_student_equals_teacher_exactly():
    torch.manual_seed(0)
    teacher = randomise(Denoiser({"kind": "mlp", "channels": 2, "num_classes": 3, "hidden": 32, "depth": 2})).eval()
    student = gamma_student_from_teacher(teacher, gamma_embed_dim=8).eval()
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
