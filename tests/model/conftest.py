import pytest
import torch

from model.conditioning import Cond, full_mask_context
from model.denoiser import Denoiser

TINY_UNET = {
    "kind": "unet", "resolution": 8, "channels": 3, "context_channels": 4, "num_classes": 5,
    "text_dim": 12, "text_len": 4, "block_out_channels": [8, 16], "attention_levels": [False, True],
    "layers_per_block": 1, "attention_head_dim": 4, "norm_num_groups": 4,
}


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter non-trivial values (diffusers zero-initialises some output layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.fixture
def tiny_unet() -> Denoiser:
    torch.manual_seed(0)
    return randomise(Denoiser(dict(TINY_UNET))).eval()


def tiny_cond(batch: int, seed: int = 0) -> Cond:
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(batch, 4, 12, generator=g)
    mask = torch.ones(batch, 4, dtype=torch.bool)
    mask[:, 3] = False
    return Cond(
        labels=torch.randint(0, 5, (batch,), generator=g),
        text=text,
        text_mask=mask,
        context=full_mask_context(batch, 3, 8, 8),
    )
