"""Guidance sweeps and the settings carried in returned PNGs (POST /v1/png-info), over HTTP."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
from PIL import Image

from tests.service.test_api import pixels, png_b64, post, source_image

GAMMAS = [0.0, 0.5, 1.0, 2.0, 4.0]


def test_a_sweep_equals_separate_requests_with_the_same_seed(service):
    body = {"class_label": 3, "steps": 4, "seed": 1234}
    r = post(service, "/v1/generate", {**body, "guidance": GAMMAS})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["guidance"] == GAMMAS and out["seeds"] == [1234] * 5 and len(out["images"]) == 5
    for gamma, image in zip(GAMMAS, out["images"]):
        alone = post(service, "/v1/generate", {**body, "guidance": gamma})
        assert alone.status_code == 200, alone.text
        assert np.array_equal(pixels(image), pixels(alone.json()["images"][0])), f"gamma {gamma} differs from its own request"
    assert not np.array_equal(pixels(out["images"][0]), pixels(out["images"][-1]))  # the sweep does sweep


def test_bad_sweeps_are_refused_with_the_field_named(service):
    for body, needle in [
        ({"class_label": 1, "guidance": [0.0] * 9}, "1 to 8 values"),
        ({"class_label": 1, "guidance": []}, "1 to 8 values"),
        ({"class_label": 1, "guidance": [0.0, 9.0]}, "outside the trained range"),
        ({"class_label": 1, "guidance": [0.0, 1.0], "n": 2}, "n must be 1"),
    ]:
        r = post(service, "/v1/generate", body)
        assert r.status_code == 422, r.text
        assert needle in r.text


def test_png_settings_round_trip_through_png_info(service):
    asks = [
        ("/v1/generate", {"class_label": 5, "steps": 2, "seed": 77, "guidance": 2.5}),
        ("/v1/txt2img", {"prompt": "a red circle", "steps": 4, "stochastic": True, "seed": 9}),
        ("/v1/img2img", {"prompt": "a green square", "image": png_b64(source_image()), "strength": 0.5, "seed": 3}),
    ]
    for path, body in asks:
        image = post(service, path, body).json()["images"][0]
        r = post(service, "/v1/png-info", {"image": image})
        assert r.status_code == 200, r.text
        got = r.json()["settings"]
        assert got["endpoint"] == path.rsplit("/", 1)[1] and got["model"] == "shapes"
        for key in ("steps", "seed", "guidance", "class_label", "prompt", "strength", "stochastic"):
            if key in body:
                assert got[key] == body[key], key
        assert Image.open(io.BytesIO(base64.b64decode(image))).text["seed"] == str(body["seed"])  # plain chunks too


def _with_settings(text: bytes) -> str:
    """A PNG whose fewstep text chunk holds `text` (base64)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("fewstep", text.decode("latin-1"))
    buf = io.BytesIO()
    source_image().save(buf, "PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode()


def test_png_info_refuses_what_it_cannot_read(service):
    jpeg = io.BytesIO()
    source_image().save(jpeg, "JPEG")
    cases = [
        (base64.b64encode(jpeg.getvalue()).decode(), 415),  # not a PNG
        (png_b64(source_image()), 422),  # a PNG without settings
        (base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"junk" * 10).decode(), 422),  # a broken PNG
        ("A" * (6 * 2**20), 413),  # over the upload cap, refused before decoding
        (_with_settings(b"[" * 50000 + b"]" * 50000), 422),  # nested too deep for the JSON parser
        (_with_settings(b'{"a": ' + b"[" * 300 + b"]" * 300 + b"}"), 422),  # parsed, but too deep for the answer's serializer
        (_with_settings(b'{"prompt": "\\ud800"}'), 422),  # a lone surrogate: no answer could carry it
        (_with_settings(b'{"guidance": NaN}'), 422),
    ]
    for image, status in cases:
        r = httpx.post(service.url + "/v1/png-info", json={"image": image}, timeout=60)
        assert r.status_code == status, (status, r.text[:200])
        assert "detail" in r.json()
