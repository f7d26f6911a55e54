"""An imported teacher's own text encoder: a `transformers` CLIP text model and its tokenizer,
read from a folder of the Stable Diffusion layout (`text_encoder/`, `tokenizer/`), safetensors
weights only.

As diffusers' pipelines do, a prompt is tokenized to the tokenizer's full length (padded with
its pad token) and the U-Net cross-attends to every position, so the mask of a non-empty prompt
is all True. The empty prompt is the null condition (an all-False mask); the backbone puts the
teacher's encoding of "" in its place (model/diffusers_backbone.py, `null_text`), which is
the unconditional branch diffusers guides with.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .files import CheckpointError
from .text_encoder import CachedTextEncoder

WEIGHTS = "model.safetensors"


def load_clip(directory: Path, device="cpu"):
    """(tokenizer, CLIPTextModel) of a folder with text_encoder/ and tokenizer/."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    directory = Path(directory)
    if not (directory / "text_encoder" / WEIGHTS).is_file():
        raise CheckpointError(f"{directory}: no text_encoder/{WEIGHTS} (fewstep loads safetensors only)")
    try:
        # the fast tokenizer where its file is there (a family always has it): the API counts prompts with the same file
        fast = (directory / "tokenizer" / "tokenizer.json").is_file()
        tokenizer = (CLIPTokenizerFast if fast else CLIPTokenizer).from_pretrained(str(directory / "tokenizer"), local_files_only=True)
        model = CLIPTextModel.from_pretrained(str(directory / "text_encoder"), use_safetensors=True, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory}: the CLIP text encoder or its tokenizer does not load ({exc})") from exc
    return tokenizer, model.eval().requires_grad_(False).to(device)


class ClipTextEncoder(CachedTextEncoder):
    def __init__(self, directory: Path, max_length: int = 77, cache_size: int = 4096, device=None, fixed_batch: int | None = None, on_device: bool = False):
        self.tokenizer, self.model = load_clip(directory, device or "cpu")
        self.dim = int(self.model.config.hidden_size)
        self._setup(max_length, cache_size, device, fixed_batch, on_device)

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_all(prompts), torch.ones(len(prompts), self.max_length, dtype=torch.bool, device=self.out_device)

    @torch.no_grad()
    def encode_all(self, prompts: list[str]) -> torch.Tensor:
        """Token states of `prompts` as the teacher's pipeline computes them, the empty prompt included."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt").input_ids
        return self.model(ids.to(self.device)).last_hidden_state.float().to(self.out_device)
