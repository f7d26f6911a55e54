"""imagefolder: a user's folder of images plus metadata.jsonl (the Hugging Face imagefolder layout).

Each metadata line is a JSON object with `file_name` and `text` (a caption) and/or `label`
(a class name or id). Every image is opened, checked, centre-cropped and resized up front,
so a broken file fails the run at once with its name, before any training.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from . import Attribute, Batch, random_box_masks, step_generator

MAX_IMAGE_PIXELS = 64_000_000


class DataError(ValueError):
    """The user's dataset is missing, malformed or holds a broken file."""


def load_image(path: Path, resolution: int) -> torch.Tensor:
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DataError(f"imagefolder: cannot read image {path}: {exc}") from exc
    w, h = im.size
    side = min(w, h)
    im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    im = im.resize((resolution, resolution), Image.BICUBIC)
    x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).reshape(resolution, resolution, 3)
    return x.permute(2, 0, 1).float() / 127.5 - 1.0


class ImageFolderDataset:
    kind = "imagefolder"
    channels = 3
    has_inpainting = True

    def __init__(self, cfg):
        self.cfg = cfg
        self.resolution = cfg.resolution
        root = Path(cfg.root or "")
        if not cfg.root or not root.is_dir():
            raise DataError(f"imagefolder: {cfg.root!r} is not a directory")
        meta = root / "metadata.jsonl"
        if not meta.is_file():
            raise DataError(f"imagefolder: {meta} is missing; it needs one JSON line per image with 'file_name' and 'text' or 'label'")
        rows = []
        for n, line in enumerate(meta.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"imagefolder: {meta}:{n} is not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or "file_name" not in row or not ("text" in row or "label" in row):
                raise DataError(f"imagefolder: {meta}:{n} needs 'file_name' and 'text' or 'label'")
            rows.append(row)
        if not rows:
            raise DataError(f"imagefolder: {meta} lists no images")
        names = sorted({str(r["label"]) for r in rows if "label" in r})
        self.class_names = names
        self.num_classes = len(names) if cfg.classes and names and all("label" in r for r in rows) else 0
        self.has_text = cfg.text and all("text" in r for r in rows)
        if not self.num_classes and not self.has_text:
            raise DataError("imagefolder: every line needs a 'text' (or every line a 'label') for conditioning")
        images = []
        for r in rows:
            path = (root / r["file_name"]).resolve()
            if root.resolve() not in path.parents:
                raise DataError(f"imagefolder: file_name {r['file_name']!r} points outside the folder")
            images.append(load_image(path, self.resolution))
        self.images = torch.stack(images)
        self.labels = torch.tensor([names.index(str(r["label"])) for r in rows]) if self.num_classes else None
        self.captions = [str(r["text"]) for r in rows] if self.has_text else None
        self.attributes = [Attribute("class", tuple(names))] if self.num_classes else []

    def caption_vocabulary(self) -> list[str]:
        """Every caption a training batch can carry: the folder's, each once."""
        return sorted(set(self.captions or []))

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, size: int, seed_parts: tuple[int, ...]) -> Batch:
        g = step_generator(self.cfg.seed, *seed_parts)
        idx = torch.randint(0, len(self), (size,), generator=g)
        x = self.images[idx]
        labels = self.labels[idx] if self.labels is not None else None
        return Batch(
            x=x,
            labels=labels,
            captions=[self.captions[i] for i in idx] if self.captions else None,
            attrs=labels[:, None].clone() if labels is not None else None,
            masks=random_box_masks(size, self.resolution, g),
            index=idx,
        )
