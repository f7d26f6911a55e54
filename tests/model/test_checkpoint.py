import json

import pytest
import torch

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.denoiser import Denoiser

from .conftest import TINY_UNET, tiny_cond


def test_round_trip_fp16_and_fp32(tmp_path, tiny_unet):
    for dtype in (torch.float32, torch.float16):
        d = tmp_path / str(dtype)
        save_checkpoint(d, tiny_unet, role="teacher", steps=None, guidance_range=None, dtype=dtype)
        loaded, cfg = load_checkpoint(d)
        assert cfg["role"] == "teacher" and cfg["dtype"] == str(dtype).replace("torch.", "")
        z, t, cond = torch.randn(2, 3, 8, 8), torch.rand(2), tiny_cond(2)
        with torch.no_grad():
            tol = 0 if dtype == torch.float32 else 5e-2
            assert torch.allclose(loaded(z, t, cond), tiny_unet(z, t, cond), atol=tol)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporaries left behind


def test_loading_fails_clearly(tmp_path, tiny_unet):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")
    d = tmp_path / "ckpt"
    save_checkpoint(d, tiny_unet, role="teacher", steps=None, guidance_range=None)
    cfg = json.loads((d / "config.json").read_text())

    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(d)

    (d / "config.json").write_text(json.dumps(dict(cfg, network=dict(cfg["network"], block_out_channels=[16, 32]))))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(d)

    (d / "config.json").write_text(json.dumps(dict(cfg, network=dict(cfg["network"], kind="transformer"))))
    with pytest.raises(CheckpointError, match="network"):
        load_checkpoint(d)

    (d / "config.json").write_text(json.dumps(cfg))
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(d)


def test_a_student_checkpoint_cannot_load_as_the_wrong_network(tmp_path, tiny_unet):
    student = Denoiser(dict(TINY_UNET, gamma_embed_dim=8))
    save_checkpoint(tmp_path / "s", student, role="distilled", steps=4, guidance_range=(0, 4))
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    cfg["network"]["gamma_embed_dim"] = 0
    (tmp_path / "s" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unexpected"):
        load_checkpoint(tmp_path / "s")
