"""`python -m training data emoji`: colour emoji rendered from a font, captioned by name, with
held-out names whose words all appear in training names."""

from __future__ import annotations

import hashlib
import json

import numpy as np
from PIL import Image

from training.config import DataConfig
from training.data.imagefolder import ImageFolderDataset
from tests.training.test_diffusers_teacher import cli


def test_the_emoji_folder_trains_as_an_imagefolder_and_holds_out_recombined_names(tmp_path):
    out = tmp_path / "emoji"
    proc = cli("data", "emoji", "--out", out, "--size", "16")
    assert "training and" in proc.stdout
    train = [json.loads(line) for line in (out / "train" / "metadata.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (out / "held_out" / "metadata.jsonl").read_text().splitlines()]
    assert len(train) >= 1000 and 0.08 <= len(held) / (len(train) + len(held)) <= 0.12
    assert all(r["text"] == f"an emoji of {r['name']}" for r in train + held)
    train_words = {w for r in train for w in r["name"].split()}
    assert all(set(r["name"].split()) <= train_words for r in held)  # new combinations of known words
    assert not {r["name"] for r in train} & {r["name"] for r in held}
    apple = {r["name"] for r in train + held if r["name"].endswith("apple")}
    assert {"red apple", "green apple"} <= apple
    pixels = np.stack([np.asarray(Image.open(out / "train" / r["file_name"])) for r in train[:200]])
    assert pixels.shape[1:] == (16, 16, 3)
    colourful = (pixels.max(-1).astype(int) - pixels.min(-1).astype(int)).mean(axis=(1, 2))
    assert (colourful > 10).mean() > 0.8  # colour glyphs, not blank squares or black outlines
    data = ImageFolderDataset(DataConfig(kind="imagefolder", root=str(out / "train"), resolution=16))
    batch = data.batch(8, (0, 0))
    assert batch.x.shape == (8, 3, 16, 16) and all(c.startswith("an emoji of ") for c in batch.captions)
    # deterministic: the same font gives the same images
    again = tmp_path / "again"
    cli("data", "emoji", "--out", again, "--size", "16")
    digest = lambda d: hashlib.sha256(b"".join((d / "train" / r["file_name"]).read_bytes() for r in train[:50])).hexdigest()  # noqa: E731
    assert digest(out) == digest(again)


def test_bad_emoji_requests_exit_2(tmp_path):
    proc = cli("data", "emoji", "--out", tmp_path / "x", "--font", tmp_path / "nope.ttf", check=False)
    assert proc.returncode == 2 and "no font at" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("x")
    proc = cli("data", "emoji", "--out", tmp_path / "full", check=False)
    assert proc.returncode == 2 and "not empty" in proc.stderr
    proc = cli("data", "emoji", "--out", tmp_path / "y", "--size", "4", check=False)
    assert proc.returncode == 2 and "--size" in proc.stderr
