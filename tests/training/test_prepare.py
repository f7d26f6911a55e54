"""The caption vocabulary a run encodes before its steps (training/prepare.py)."""

import json

import torch

from training.config import DataConfig
from training.data import build_dataset
from training.prepare import ENCODE_ROWS, Preparer


def test_the_shapes_vocabulary_holds_every_caption_a_batch_draws():
    data = build_dataset(DataConfig(kind="shapes", resolution=8))
    vocabulary = set(data.caption_vocabulary())
    drawn = {c for k in range(40) for c in data.batch(64, (k,)).captions}
    assert drawn <= vocabulary
    assert len(vocabulary) == 14 * 3 * 6 * 4  # seen pairs x (no size, 2) x (no position, 5) x (no background, 3)
    assert not any("blue triangle" in c or "yellow cross" in c for c in vocabulary)  # held out: never trained on


def test_data_without_captions_encodes_no_vocabulary():
    data = build_dataset(DataConfig(kind="shapes", resolution=8))
    prep = Preparer(data, torch.nn.Identity(), 8, "cpu", 0.0)
    data.has_text = False  # classes only (data.text=false): its steps draw no captions
    assert not prep.warm_vocabulary(steps=1000) and not prep.text_encoder._cache


def _folder(tmp_path, captions):
    from PIL import Image

    lines = []
    for k, text in enumerate(captions):
        Image.new("RGB", (8, 8), (40 * k % 255, 0, 0)).save(tmp_path / f"{k}.png")
        lines.append(json.dumps({"file_name": f"{k}.png", "text": text}))
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines))
    return build_dataset(DataConfig(kind="imagefolder", root=str(tmp_path), resolution=8))


def test_a_stage_starts_with_its_vocabulary_cached_when_that_is_cheaper(tmp_path):
    data = _folder(tmp_path, ["a red apple", "a red apple", "a black cat", "a rocket"])
    assert data.caption_vocabulary() == ["a black cat", "a red apple", "a rocket"]
    prep = Preparer(data, torch.nn.Identity(), 8, "cpu", 0.0)
    assert prep.warm_vocabulary(steps=1)
    assert set(prep.text_encoder._cache) == {"a black cat", "a red apple", "a rocket"}


def test_no_vocabulary_is_encoded_when_the_stage_is_shorter_or_the_cache_too_small(tmp_path):
    captions = [f"picture number {k}" for k in range(ENCODE_ROWS + 1)]  # two encoder calls
    data = _folder(tmp_path, captions)
    prep = Preparer(data, torch.nn.Identity(), 8, "cpu", 0.0)
    assert not prep.warm_vocabulary(steps=1) and not prep.text_encoder._cache
    prep.text_encoder.cache_size = ENCODE_ROWS
    assert not prep.warm_vocabulary(steps=100) and not prep.text_encoder._cache
    prep.text_encoder.cache_size = 4 * ENCODE_ROWS
    prep.text_encoder.max_length = 4096  # 65 x 4096 tokens x 384 floats: over WARM_BYTES
    assert not prep.warm_vocabulary(steps=100) and not prep.text_encoder._cache
    prep.text_encoder.max_length = 8
    assert prep.warm_vocabulary(steps=2) and len(prep.text_encoder._cache) == ENCODE_ROWS + 1
