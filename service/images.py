"""Image bytes in and out: size caps checked before decoding, tensors in [-1, 1]."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
import torch
from PIL import Image

FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class ImageError(ValueError):
    """A bad upload; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def b64decode(text: str, field: str, max_bytes: int) -> bytes:
    """Base64 (optionally a data: URL) -> bytes, refusing more than max_bytes before decoding."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > (max_bytes + 2) // 3 * 4 + 4:
        raise ImageError(f"{field} is larger than {max_bytes} bytes", status=413)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"{field} is not valid base64 ({exc})") from None


def open_image(data: bytes, field: str, max_bytes: int, max_side: int) -> Image.Image:
    """Decode image bytes; the header's width and height are checked before any pixel is decoded."""
    if len(data) > max_bytes:
        raise ImageError(f"{field} is larger than {max_bytes} bytes", status=413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width > max_side or height > max_side:
                raise ImageError(f"{field} is {width}x{height}; the largest accepted side is {max_side} pixels", status=413)
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{field} is too large to decode ({exc})", status=413) from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for bad bytes
        raise ImageError(f"{field} is not a readable image ({type(exc).__name__})") from None
    if width < 1 or height < 1:
        raise ImageError(f"{field} is empty")
    return image


def to_tensor(image: Image.Image, side: int) -> torch.Tensor:
    """RGB (3, side, side) in [-1, 1], resized with an area filter."""
    rgb = image.convert("RGB").resize((side, side), Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def mask_to_tensor(mask: np.ndarray, side: int) -> torch.Tensor:
    """(H, W) bool, True = repaint -> (side, side) float; a pixel is repainted if any source pixel under it is."""
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((side, side), Image.Resampling.BOX)
    return torch.from_numpy((np.asarray(resized) > 0).astype(np.float32))


def encode(image: torch.Tensor, fmt: str) -> bytes:
    """(3, H, W) in [-1, 1] -> image file bytes."""
    pixels = ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=FORMATS[fmt], **({"quality": 95} if fmt != "png" else {}))
    return buf.getvalue()


def png_b64(tensor: torch.Tensor) -> str:
    """A lossless carrier for preprocessed inputs on the queue (uint8 PNG)."""
    return base64.b64encode(encode(tensor, "png")).decode()


def from_png_b64(text: str) -> torch.Tensor:
    rgb = Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()
