"""From a data Batch to what the denoiser sees: x in z-space and a Cond (with condition dropout)."""

from __future__ import annotations

import torch

from model.autoencoder import encode_inpaint_context
from model.conditioning import Cond, full_mask_context
from model.text_encoder import TextEncoder

from .data import Batch

CAPTION_CACHE = 16384  # distinct captions kept encoded (384 x text_len floats each)
ENCODE_ROWS = 64
WARM_BYTES = 256 * 2**20  # a caption vocabulary is encoded up front only if its embeddings fit in this


class Preparer:
    def __init__(self, dataset, autoencoder, text_len: int, device, p_inpaint: float, text_encoder="builtin"):
        """`text_encoder`: "builtin" (all-MiniLM-L6-v2 when the data has captions), None, or an
        encoder (an imported teacher's CLIP, model/clip_text_encoder.py)."""
        self.dataset = dataset
        self.autoencoder = autoencoder
        self.device = device
        self.p_inpaint = p_inpaint if dataset.has_inpainting else 0.0
        # the encoder and its cache live on the training device: a step's captions are cached
        # embeddings gathered there, not encoded on the CPU and copied
        # misses are encoded in chunks of exactly ENCODE_ROWS (padded), so a caption's embedding
        # does not depend on which captions missed the cache with it: a resumed run, whose cache
        # starts cold, sees the same embeddings as an uninterrupted one
        if text_encoder == "builtin":
            text_encoder = TextEncoder(max_length=text_len, cache_size=CAPTION_CACHE, device=device, on_device=True, fixed_batch=ENCODE_ROWS) if dataset.has_text else None
        self.text_encoder = text_encoder

    def warm_vocabulary(self, steps: int) -> bool:
        """Before a stage of `steps` steps: encode every caption the data can draw, when the
        cache holds them all, they take at most WARM_BYTES, and encoding them takes no more
        encoder calls than the stage has steps.
        Met one batch at a time instead, nearly every step would miss a caption, and pay a
        whole chunk of ENCODE_ROWS for it, until the vocabulary is seen. The embeddings are
        those the steps would have encoded (the encoder's chunks of fixed rows). True when it is cached."""
        vocabulary = getattr(self.dataset, "caption_vocabulary", None)
        if self.text_encoder is None or vocabulary is None or not self.dataset.has_text:
            return False
        captions = vocabulary()
        enc = self.text_encoder
        size = len(captions) * enc.max_length * enc.dim * 4  # float32 token states
        calls = -(-len(captions) // enc.chunk_rows)  # the encoder calls it takes
        if not captions or len(captions) > enc.cache_size or size > WARM_BYTES or calls > steps:
            return False
        self.text_encoder.warm(captions)
        return True

    def warm(self, batch: Batch) -> None:
        """Encode the batch's captions into the cache ahead of its step (the prefetch thread)."""
        if self.text_encoder is not None and batch.captions is not None:
            self.text_encoder(batch.captions)

    @property
    def is_image(self) -> bool:
        return self.dataset.resolution is not None

    def cond(self, batch: Batch, g: torch.Generator | None, *, p_uncond: float = 0.0, p_drop_each: float = 0.0, drop_both: bool = True, labels_only: bool = False) -> Cond:
        """Cond for a batch. Dropout: with p_uncond the whole condition; else class and caption each
        with p_drop_each (never both when drop_both is False)."""
        n = batch.x.shape[0]
        labels = batch.labels.to(self.device) if (batch.labels is not None and self.dataset.num_classes) else None
        text = text_mask = None
        if self.text_encoder is not None and batch.captions is not None:
            text, text_mask = self.text_encoder(batch.captions)
            if labels_only:
                text_mask = torch.zeros_like(text_mask)
        context = None
        if self.is_image and self.dataset.has_inpainting:
            use_mask = (torch.rand(n, generator=g) < self.p_inpaint) if g is not None and self.p_inpaint else torch.zeros(n, dtype=torch.bool)
            context = self.plain_context(n)  # nothing kept; only the masked rows' kept parts are encoded
            if batch.masks is not None and use_mask.any():
                rows = use_mask.nonzero()[:, 0]
                with torch.no_grad():
                    context[rows.to(self.device)] = encode_inpaint_context(self.autoencoder, batch.x[rows].to(self.device), batch.masks[rows].to(self.device))
        cond = Cond(labels=labels, text=text, text_mask=text_mask, context=context)
        if g is not None and (p_uncond or p_drop_each):
            uncond = torch.rand(n, generator=g) < p_uncond
            drop_l = uncond | (torch.rand(n, generator=g) < p_drop_each)
            drop_t = uncond | (torch.rand(n, generator=g) < p_drop_each)
            if not drop_both and labels is not None and text is not None:
                drop_t = drop_t & ~drop_l  # distillation: keep at least one of the two
            cond = cond.drop(drop_l, drop_t)
        return cond

    def x(self, batch: Batch) -> torch.Tensor:
        if not self.is_image:
            return batch.x.to(self.device)
        with torch.no_grad():
            if self.autoencoder.cfg.kind != "identity" and batch.index is not None and hasattr(self.dataset, "images"):
                return self._latents()[batch.index.to(self.device)]
            return self.autoencoder.encode(batch.x.to(self.device))

    def _latents(self) -> torch.Tensor:
        """Every image of an in-memory dataset encoded once, in chunks of ENCODE_ROWS (the same
        chunks on every run, so a resumed run sees the same latents); redone when the
        autoencoder changes (the latent recipe trains it first)."""
        if getattr(self, "_latent_cache", (None, None))[0] is not self.autoencoder:
            z = torch.cat([self.autoencoder.encode(c.to(self.device)) for c in self.dataset.images.split(ENCODE_ROWS)])
            self._latent_cache = (self.autoencoder, z)
        return self._latent_cache[1]

    def plain_context(self, n: int) -> torch.Tensor | None:
        if not (self.is_image and self.dataset.has_inpainting):
            return None
        ae = self.autoencoder.cfg
        side = self.dataset.resolution // ae.downsample
        return full_mask_context(n, ae.latent_channels, side, side, device=self.device)

    @property
    def text_dim(self) -> int:
        return self.text_encoder.dim if self.text_encoder is not None else 0

    @classmethod
    def for_family(cls, dataset, family, device, p_inpaint: float = 0.0) -> "Preparer":
        """A preparer with the family's own text encoder (evaluation and reports)."""
        encoder = None
        if family.info.text_encoder:
            from model.text_encoder import build_text_encoder

            encoder = build_text_encoder(family.info.text_encoder, family.directory, max_length=family.info.text_len, cache_size=CAPTION_CACHE, device=device, on_device=True, fixed_batch=ENCODE_ROWS)
        return cls(dataset, family.autoencoder, family.info.text_len, device, p_inpaint, text_encoder=encoder)
