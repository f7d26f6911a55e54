"""A distilled student's U-Net in the diffusers layout: `UNet2DConditionModel.from_pretrained`
loads it, so diffusers users can sample with it in their own loop.

The student's gamma MLP (its Fourier features through Linear-SiLU-Linear, added to the time
embedding after the time MLP) is exactly diffusers' `addition_embed_type="text_time"`: an
`add_embedding` MLP over `Timesteps(addition_time_embed_dim)` features of `time_ids`, added
to the time embedding. Call the exported U-Net with

    added_cond_kwargs={"text_embeds": z.new_zeros(B, 0), "time_ids": gamma[:, None] * gamma_scale}

Exact for U-Nets whose timestep features are fewstep's (flip_sin_to_cos, freq_shift 0, as
ours and Stable Diffusion's are); students that push the condition embeddings by gamma
(`gamma_extrapolate`), that take gamma before the time MLP (`time_features`), UNet2DModel
students and the stochastic sampler's students cannot be written this way and are skipped
with the reason. Beside each U-Net, `fewstep.json` gives its sampling grid: per step the
U-Net's timestep, the (alpha, sigma) to read its output with, and the (alpha, sigma) of the
DDIM update (docs/design.md, "Students in the diffusers layout").
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from model import discrete_schedule as ds
from model import schedule
from model.denoiser import Denoiser
from model.diffusers_backbone import DiffusersBackbone
from model.networks import GammaTimestepEmbedding, UNetBackbone

USAGE = """# {name}: a fewstep student in the diffusers layout

`UNet2DConditionModel.from_pretrained("{name}")` loads it. It was distilled to sample in
{steps} step(s) with guidance folded in: pass the guidance weight gamma (trained range
{lo} to {hi}) through `added_cond_kwargs`, no unconditional pass:

    out = unet(z, timestep, encoder_hidden_states=..., class_labels=...,
               added_cond_kwargs={{"text_embeds": z.new_zeros(B, 0), "time_ids": gamma[:, None] * {scale}}}).sample

Sampling (fewstep.json, `grid`, from i = {steps} down to 1): start from z ~ N(0, I); at grid
point i read the output as a clean image, x_hat = {read}, with the point's
`unet_alpha`, `unet_sigma`; then step to point i - 1 with DDIM,
z = alpha[i-1] * x_hat + sigma[i-1] * (z - alpha[i] * x_hat) / sigma[i].
{extra}"""

READ = {
    "epsilon": "(z - unet_sigma * out) / unet_alpha",
    "v_prediction": "unet_alpha * z - unet_sigma * out",
    "sample": "out",
    "bounded_epsilon": "((unet_alpha * m + unet_sigma ** 2) * z - unet_sigma * out) / m with m = max(unet_alpha, alpha_floor) (fewstep.json; epsilon where unet_alpha >= alpha_floor)",
}


def _why_not(student: Denoiser) -> str | None:
    cfg = student.net_cfg
    backbone = student.backbone
    if not student.takes_gamma:
        return "it takes no gamma"
    if getattr(cfg, "gamma_extrapolate", ()):
        return f"it pushes its {'/'.join(cfg.gamma_extrapolate)} embedding by gamma, which diffusers' UNet2DConditionModel has no place for"
    if isinstance(backbone, DiffusersBackbone) and cfg.unet_class != "UNet2DConditionModel":
        return f"its U-Net is a {cfg.unet_class}, which has no added-condition input for gamma"
    if not isinstance(backbone, (UNetBackbone, DiffusersBackbone)):
        return "it is not a U-Net"
    if not isinstance(backbone.unet.time_embedding, GammaTimestepEmbedding):
        return "it takes gamma before the time MLP (gamma_pathway 'time_features'), not through its own embedding MLP"
    unet_cfg = backbone.unet.config
    if not unet_cfg.flip_sin_to_cos or unet_cfg.freq_shift != 0:
        return "its timestep features (flip_sin_to_cos, freq_shift) differ from the Fourier features of its gamma"
    if unet_cfg.addition_embed_type is not None:
        return f"its U-Net already uses addition_embed_type {unet_cfg.addition_embed_type!r}"
    return None


def write_diffusers_unet(student: Denoiser, dest: Path, *, steps: int, guidance_range, dtype: torch.dtype = torch.float32, role: str = "distilled") -> str | None:
    """Write `dest` (config.json, diffusion_pytorch_model.safetensors, fewstep.json, README.md);
    returns None, or why this student cannot be written in the diffusers layout."""
    if role == "stochastic":
        return "it is a student of the N-step stochastic sampler (a two-interval step, then fresh noise), not of the DDIM loop its README would describe"
    reason = _why_not(student)
    if reason is not None:
        return reason
    from diffusers import UNet2DConditionModel

    cfg, backbone = student.net_cfg, student.backbone
    unet = backbone.unet
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    state = {k: v for k, v in unet.state_dict().items()}
    config.update(addition_embed_type="text_time", addition_time_embed_dim=cfg.gamma_embed_dim, projection_class_embeddings_input_dim=cfg.gamma_embed_dim)
    state = {k.replace("time_embedding.gamma_mlp.", "add_embedding."): v for k, v in state.items()}
    exported = UNet2DConditionModel.from_config(config)
    missing, unexpected = exported.load_state_dict(state, strict=False)
    if missing or unexpected:
        return f"its weights do not map onto a UNet2DConditionModel (missing {missing[:3]}, unexpected {unexpected[:3]})"
    dest = Path(dest)
    exported.to(dtype).save_pretrained(dest, safe_serialization=True)
    info = sampling_info(student, steps)
    info.update(gamma_scale=cfg.gamma_scale, gamma_range=list(guidance_range), gamma_input="added_cond_kwargs: text_embeds (B, 0) zeros, time_ids gamma * gamma_scale (B, 1)")
    extra = ""
    if isinstance(backbone, UNetBackbone) and cfg.text_dim:
        from safetensors.torch import save_file

        save_file({"null_text": backbone.null_text.detach().float().cpu().contiguous()}, str(dest / "null_text.safetensors"))
        extra = ("\nText: fewstep's all-MiniLM-L6-v2 token states, padded to fewstep.json's `text_len`, with `encoder_attention_mask`; "
                 "for an empty prompt pass `null_text.safetensors` with a mask of its first position only.\n")
    if isinstance(backbone, UNetBackbone) and cfg.num_classes:
        extra += f"\nClasses: `class_labels` 0..{cfg.num_classes - 1}; {cfg.num_classes} is the null class.\n"
    if isinstance(backbone, DiffusersBackbone) and cfg.text_dim:
        extra += "\nText: the teacher pipeline's own text encoder and tokenizer (padded to max length, no attention mask), as its pipeline calls its U-Net.\n"
    (dest / "fewstep.json").write_text(json.dumps(info, indent=2) + "\n")
    (dest / "README.md").write_text(USAGE.format(name=dest.name, steps=steps, lo=guidance_range[0], hi=guidance_range[1], scale=cfg.gamma_scale, read=READ[info["prediction_type"]], extra=extra))
    return None


def sampling_info(student: Denoiser, steps: int) -> dict:
    """The student's grid as a diffusers loop needs it (module docstring)."""
    t = schedule.time_grid(steps)
    alpha, sigma = schedule.alpha_t(t), schedule.sigma_t(t)
    backbone = student.backbone
    if isinstance(backbone, DiffusersBackbone):
        tau = ds.timestep(backbone._schedule, t)
        u_alpha, u_sigma = ds.signal_scales(backbone._schedule, tau)
        prediction = student.net_cfg.prediction_type
    else:  # ours: the U-Net takes t * 1000 and predicts fewstep's v
        tau, u_alpha, u_sigma, prediction = t * 1000.0, alpha, sigma, "v_prediction"
    grid = [{"t": float(t[i]), "timestep": float(tau[i]), "unet_alpha": float(u_alpha[i]), "unet_sigma": float(u_sigma[i]), "alpha": float(alpha[i]), "sigma": float(sigma[i])} for i in range(steps + 1)]
    out = {"steps": steps, "prediction_type": prediction, "grid": grid}
    if prediction == "bounded_epsilon":
        out["alpha_floor"] = student.net_cfg.alpha_floor
    if getattr(student.net_cfg, "text_dim", 0):
        out["text_len"] = student.net_cfg.text_len
    return out
