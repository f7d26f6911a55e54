"""The service's own PNG writer: what PIL (and so any PNG reader) reads back from it."""

from __future__ import annotations

import io
import json
import zlib

import numpy as np
import pytest
from PIL import Image

from service.png import write_png
from service.png_info import CHUNK, png_text, read_settings


@pytest.mark.parametrize("shape", [(1, 1), (16, 16), (64, 64), (7, 33)])
def test_pixels_read_back_exactly(shape):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    with Image.open(io.BytesIO(write_png(pixels))) as image:
        image.load()  # PIL checks every chunk's CRC and inflates the pixel data
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (shape[1], shape[0])
        assert np.array_equal(np.asarray(image), pixels)


def test_a_strided_view_is_written_as_its_pixels():
    planar = np.random.default_rng(0).integers(0, 256, size=(3, 8, 5), dtype=np.uint8)
    view = planar.transpose(1, 2, 0)  # as torch's permute hands them over: not contiguous
    with Image.open(io.BytesIO(write_png(view))) as image:
        assert np.array_equal(np.asarray(image), view)


def test_settings_chunks_read_back_with_any_text():
    settings = {"model": "shapes", "prompt": "un chat noir, 猫, \"quoted\"\nsecond line", "seed": 7, "guidance": 2.5, "stochastic": False}
    data = write_png(np.zeros((4, 4, 3), np.uint8), png_text(settings))
    with Image.open(io.BytesIO(data)) as image:
        info = dict(image.info)
    assert info["prompt"] == settings["prompt"] and info["seed"] == "7" and json.loads(info[CHUNK]) == settings
    assert read_settings(data) == settings


def test_the_pixel_data_is_compressed():
    flat = np.full((64, 64, 3), 200, np.uint8)
    data = write_png(flat)
    assert len(data) < 200  # 12 KB of pixels
    idat = data.index(b"IDAT")
    length = int.from_bytes(data[idat - 4 : idat], "big")
    assert len(zlib.decompress(data[idat + 4 : idat + 4 + length])) == 64 * (1 + 64 * 3)


@pytest.mark.parametrize("pixels", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4), np.uint8)])
def test_other_arrays_are_refused(pixels):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        write_png(pixels)


@pytest.mark.parametrize("key", ["", "k" * 80, "a\0b", "键"])
def test_bad_keywords_are_refused(key):
    with pytest.raises(ValueError, match="keyword"):
        write_png(np.zeros((2, 2, 3), np.uint8), {key: "x"})
