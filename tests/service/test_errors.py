"""Bad input gets a 4xx with a message that names the problem, never a 5xx."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import httpx
import pytest
from PIL import Image

from .test_api import png_b64, repaint_mask, source_image


def huge_png_header(side: int = 60000) -> bytes:
    """A PNG whose header claims side x side pixels, with almost no data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")


IMG = png_b64(source_image())
MASK = png_b64(repaint_mask())
SMALL_MASK = png_b64(repaint_mask(32))

CASES = [
    ("/v1/img2img", {"prompt": "a red circle", "image": "not base64 !!"}, 422, "base64"),
    ("/v1/img2img", {"prompt": "a red circle", "image": base64.b64encode(b"hello, not an image").decode()}, 422, "not a readable image"),
    ("/v1/img2img", {"prompt": "a red circle", "image": base64.b64encode(huge_png_header(5000)).decode()}, 413, "largest accepted side"),
    ("/v1/img2img", {"prompt": "a red circle", "image": base64.b64encode(huge_png_header(60000)).decode()}, 413, "too large to decode"),
    ("/v1/inpaint", {"prompt": "a red circle", "image": IMG, "mask": SMALL_MASK}, 422, "same size"),
    ("/v1/generate", {"class_label": 1, "guidance": 9.0}, 422, "outside the trained range"),
    ("/v1/generate", {"class_label": 1, "guidance": -1}, 422, "outside the trained range"),
    ("/v1/generate", {"class_label": 1, "steps": 3}, 422, "available: [1, 2, 4, 8]"),
    ("/v1/generate", {"class_label": 1, "stochastic": True, "steps": 1}, 422, "at least 2 steps"),
    ("/v1/generate", {"class_label": 1, "prompt": "a red circle"}, 422, "not both"),
    ("/v1/generate", {}, 422, "give a prompt or a class_label"),
    ("/v1/generate", {"class_label": 1, "n": 0}, 422, "greater than or equal to 1"),
    ("/v1/generate", {"class_label": 1, "n": 9}, 422, "less than or equal to 8"),
    ("/v1/generate", {"class_label": 1, "model": "sdxl"}, 404, "not found"),
    ("/v1/generate", {"class_label": "purple hexagon"}, 422, "unknown class"),
    ("/v1/generate", {"class_label": 99}, 422, "out of range"),
    ("/v1/generate", {"class_label": 1, "format": "gif"}, 422, "png"),
    ("/v1/generate", {"class_label": 1, "colour": "red"}, 422, "Extra inputs"),
    ("/v1/txt2img", {"prompt": "   "}, 422, "blank"),
    ("/v1/img2img", {"prompt": "a red circle", "image": IMG, "strength": 0}, 422, "strength must lie in (0, 1]"),
    ("/v1/generate", {"class_label": 1, "steps": 100}, 422, "available: [1, 2, 4, 8]"),
    ("/v1/jobs", {"endpoint": "upscale", "request": {}}, 422, "endpoint"),
    ("/v1/jobs", {"endpoint": "txt2img", "request": {"prompt": "x", "n": 9}}, 422, "less than or equal to 8"),
]


@pytest.mark.parametrize("path,body,status,message", CASES)
def test_bad_input_is_a_clear_4xx(service, path, body, status, message):
    r = httpx.post(service.url + path, json=body, timeout=30)
    assert r.status_code == status, r.text
    assert message in r.text


# Bodies as sent on the wire: JSON's parser takes NaN, 1e999 (infinity) and a lone surrogate's
# escape, which no JSON answer can carry back, nor Redis, nor the tokenizer
RAW = [
    ("/v1/generate", '{"class_label": 1, "seed": NaN}', 422, "seed"),
    ("/v1/generate", '{"class_label": 1, "steps": 1e999}', 422, "steps"),
    ("/v1/txt2img", '{"prompt": 1e999}', 422, "prompt"),
    ("/v1/jobs", '{"endpoint": NaN, "request": {}}', 422, "endpoint"),
    ("/v1/txt2img", '{"prompt": "a red \\ud800 circle"}', 422, "surrogate"),
    ("/v1/generate", '{"class_label": "\\udfff"}', 422, "surrogate"),
    ("/v1/generate", '{"class_label": 1, "format": "\\ud800"}', 422, "format"),
    ("/v1/images/generations", '{"prompt": "a red \\ud800 circle"}', 400, "surrogate"),
    ("/v1/txt2img", '{"prompt": "a red circle \\ud83d\\ude00"}', 200, ""),  # a surrogate pair is an emoji: text
    ("/v1/generate", '{"class_label": "\u00b2"}', 422, "unknown class"),  # a digit to str.isdigit, not to int
    ("/v1/generate", '{"class_label": "' + "1" * 5000 + '"}', 422, "unknown class"),
]


@pytest.mark.parametrize("path,text,status,message", RAW)
def test_bodies_json_cannot_answer_with_are_a_clear_4xx(service, path, text, status, message):
    r = httpx.post(service.url + path, content=text.encode(), headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == status, r.text[:500]
    assert message in r.text and r.json()  # an answer that parses


def test_body_over_the_cap_is_refused_before_parsing(service):
    r = httpx.post(service.url + "/v1/img2img", content=b"{" + b" " * (9 * 2**20) + b"}", headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413
    assert "larger than" in r.json()["detail"]


def test_malformed_json(service):
    r = httpx.post(service.url + "/v1/txt2img", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_accept_image_with_several_images_is_406(service):
    r = httpx.post(service.url + "/v1/generate", json={"class_label": 1, "n": 2}, headers={"Accept": "image/png"})
    assert r.status_code == 406 and "n=1" in r.json()["detail"]
    r = httpx.post(service.url + "/v1/generate", json={"class_label": 1, "guidance": [0, 1, 4]}, headers={"Accept": "image/png"})
    assert r.status_code == 406 and "sweep" in r.json()["detail"]  # not the first of three images, the others dropped


def test_uploads_in_colour_modes_without_a_conversion_are_refused(service):
    lab = io.BytesIO()
    Image.new("LAB", source_image().size, (50, 10, 10)).save(lab, "TIFF")
    r = httpx.post(service.url + "/v1/inpaint", json={"prompt": "a red circle", "image": IMG, "mask": base64.b64encode(lab.getvalue()).decode()}, timeout=30)
    assert r.status_code == 415 and "colour mode LAB" in r.json()["detail"]


def test_a_16_bit_greyscale_upload_is_read_at_its_grey_level():
    import numpy as np

    from service.images import open_image

    grey = io.BytesIO()
    Image.fromarray(np.full((64, 64), 32768, dtype=np.uint16)).save(grey, "PNG")  # mid-grey in 16 bits
    rgb = np.asarray(open_image(grey.getvalue(), "image", 2**20, 2048).convert("RGB"))
    assert abs(rgb.mean() - 128) < 1  # Pillow's own conversion clips it to 255: white
    eight_bit_values = io.BytesIO()
    Image.fromarray(np.full((64, 64), 200, dtype=np.int32), "I").save(eight_bit_values, "TIFF")  # a 32-bit image of 8-bit values
    assert np.asarray(open_image(eight_bit_values.getvalue(), "image", 2**20, 2048).convert("L")).mean() == 200


def openai_error(r: httpx.Response) -> dict:
    """The OpenAI error shape, exactly: {"error": {"message", "type", "param", "code"}}."""
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_openai_routes_answer_errors_in_openais_shape(service):
    opaque = io.BytesIO()
    source_image().save(opaque, "PNG")
    files = {"image": ("i.png", opaque.getvalue(), "image/png")}
    r = httpx.post(service.url + "/v1/images/edits", files=files, data={"prompt": "a red circle"})
    assert r.status_code == 400 and "alpha" in openai_error(r)["message"] and openai_error(r)["param"] == "image"
    r = httpx.post(service.url + "/v1/images/edits", files={"image": ("i.png", b"garbage", "image/png")}, data={"prompt": "x"})
    assert r.status_code == 400 and "not a readable image" in openai_error(r)["message"]
    r = httpx.post(service.url + "/v1/images/generations", json={"prompt": "x", "response_format": "url"})
    err = openai_error(r)
    assert r.status_code == 400 and "b64_json" in err["message"] and (err["type"], err["param"]) == ("invalid_request_error", "response_format")
    r = httpx.post(service.url + "/v1/images/generations", json={"prompt": "x", "guidance": 9})
    assert r.status_code == 400 and openai_error(r)["param"] == "guidance" and "trained range" in openai_error(r)["message"]
    r = httpx.post(service.url + "/v1/images/generations", json={"n": 2})  # no prompt: a validation error, OpenAI-shaped
    assert r.status_code == 400 and openai_error(r)["param"] == "prompt"
    r = httpx.post(service.url + "/v1/images/generations", json={"prompt": "x", "model": "dall-e-9"})
    assert r.status_code == 404 and openai_error(r)["code"] == "model_not_found"
    # fewstep's own routes keep FastAPI's shape
    r = httpx.post(service.url + "/v1/generate", json={"class_label": 1, "guidance": 9})
    assert r.status_code == 422 and set(r.json()) == {"detail"}


def test_the_openai_client_reads_the_error_message(service):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=service.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(prompt="a red circle", extra_body={"guidance": 9})
    assert "outside the trained range" in err.value.message
    assert err.value.param == "guidance" and err.value.type == "invalid_request_error"


def test_large_source_images_are_resized(service):
    # the image of an img2img request may be large: it is resized to the model's resolution
    big = Image.new("RGB", (1024, 768), (0, 0, 255))
    r = httpx.post(service.url + "/v1/img2img", json={"class_label": "blue square", "image": png_b64(big), "strength": 0.3}, timeout=30)
    assert r.status_code == 200, r.text
