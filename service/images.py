"""Uploaded images, with Pillow only (the API imports no torch): size caps checked before
decoding, then resized to the family's resolution and shipped on the queue as PNG bytes."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from PIL import Image

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class ImageError(ValueError):
    """A bad upload; `status` is the HTTP status to answer with, `field` the upload at fault."""

    def __init__(self, message: str, status: int = 422, field: str | None = None):
        super().__init__(message)
        self.status, self.field = status, field


def b64decode(text: str, field: str, max_bytes: int) -> bytes:
    """Base64 (optionally a data: URL) -> bytes, refusing more than max_bytes before decoding."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > (max_bytes + 2) // 3 * 4 + 4:
        raise ImageError(f"{field} is larger than {max_bytes} bytes", status=413, field=field)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"{field} is not valid base64 ({exc})", field=field) from None


def open_image(data: bytes, field: str, max_bytes: int, max_side: int) -> Image.Image:
    """Decode image bytes; the header's width and height are checked before any pixel is decoded."""
    if len(data) > max_bytes:
        raise ImageError(f"{field} is larger than {max_bytes} bytes", status=413, field=field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width > max_side or height > max_side:
                raise ImageError(f"{field} is {width}x{height}; the largest accepted side is {max_side} pixels", status=413, field=field)
            image.load()
            image = _eight_bit(image, field)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{field} is too large to decode ({exc})", status=413, field=field) from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for bad bytes
        raise ImageError(f"{field} is not a readable image ({type(exc).__name__})", field=field) from None
    if width < 1 or height < 1:
        raise ImageError(f"{field} is empty", field=field)
    return image


def _eight_bit(image: Image.Image, field: str) -> Image.Image:
    """The image in a mode of 8 bits per channel that converts to RGB and greyscale, as the
    models read images: 16-bit greyscale (PNG, TIFF) scaled to 8 bits, where Pillow's own
    conversion would clip it at 255 (a nearly white image); colour spaces Pillow converts
    wrongly or not at all (LAB, HSV) refused with a reason."""
    if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit PNG, TIFF (I;16) and PGM (I); 32-bit integer TIFF (I)
        levels = np.asarray(image.convert("I"), dtype=np.int64)
        if image.mode == "I" and levels.max(initial=0) <= 255:
            return image.convert("L")  # 8-bit values in a 32-bit image: read as they are
        return Image.fromarray(((np.clip(levels, 0, 65535) + 128) // 257).astype(np.uint8), "L")
    if image.mode not in ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "F"):
        raise ImageError(f"{field} is in the colour mode {image.mode}; send an RGB, RGBA or greyscale image", status=415, field=field)
    return image


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def resized_rgb(image: Image.Image, side: int) -> bytes:
    """RGB PNG of (side, side), resized with an area filter."""
    return png_bytes(image.convert("RGB").resize((side, side), Image.Resampling.BOX))


def mask_of(image: Image.Image) -> np.ndarray:
    """(H, W) bool from a mask image: True (white) = repaint."""
    return np.asarray(image.convert("L")) > 127


def resized_mask(mask: np.ndarray, side: int) -> bytes:
    """(H, W) bool, True = repaint -> greyscale PNG of (side, side), white = repaint; a pixel is
    repainted if any source pixel under it is."""
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((side, side), Image.Resampling.BOX)
    return png_bytes(Image.fromarray((np.asarray(resized) > 0).astype(np.uint8) * 255))
