"""The built-in `emoji` family, as a user meets it: found without configuration, the default
for prompts (classes stay with `shapes`), 64x64 images decoded by its autoencoder, that follow
the name a prompt gives and change with the guidance asked for."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from model.builtin import builtin_families
from service.testing import RedisServer, Service

pytestmark = pytest.mark.skipif("emoji" not in builtin_families(), reason="the emoji family is not installed")


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(float)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    redis = RedisServer()
    svc = Service(redis.url, log_dir=tmp_path_factory.mktemp("emoji-svc"), env={"FEWSTEP_DEFAULT_TEXT_MODEL": "emoji"})  # the shipped default
    yield svc
    svc.stop()
    redis.stop()


def post(svc, path, body) -> httpx.Response:
    return httpx.post(svc.url + path, json=body, timeout=120)


def test_prompts_go_to_emoji_and_classes_to_shapes_by_default(service):
    models = {m["id"]: m for m in httpx.get(service.url + "/v1/models", timeout=30).json()["data"]}
    assert models["emoji"]["default_for"] == ["prompt"] and models["shapes"]["default_for"] == ["class"]
    assert models["emoji"]["resolution"] == 64 and "text" in models["emoji"]["conditioning"]
    r = post(service, "/v1/txt2img", {"prompt": "an emoji of rocket", "steps": 4, "seed": 3})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "emoji" and pixels(r.json()["images"][0]).shape == (64, 64, 3)
    r = post(service, "/v1/generate", {"class_label": "red circle", "steps": 4})
    assert r.status_code == 200 and r.json()["model"] == "shapes" and pixels(r.json()["images"][0]).shape == (16, 16, 3)
    r = post(service, "/v1/txt2img", {"model": "emoji", "prompt": "an emoji of rocket", "steps": 8})
    assert r.status_code == 422 and "available" in r.text  # the shipped students: 1, 2 and 4 steps (and stochastic 4)


def _colour(svc, prompt: str, gamma: float) -> np.ndarray:
    """Mean colour of the non-white pixels of four seeds."""
    r = post(svc, "/v1/txt2img", {"prompt": prompt, "steps": 4, "guidance": gamma, "seed": 11, "n": 4})
    assert r.status_code == 200, r.text
    x = np.stack([pixels(b) for b in r.json()["images"]])
    ink = x.min(-1) < 200
    return x[ink].mean(0)


def test_the_named_colour_is_drawn_and_guidance_changes_the_images(service):
    apple = _colour(service, "an emoji of red apple", 2.0)
    assert apple[0] > apple[1] + 40 and apple[0] > apple[2] + 40, apple  # red apple: red ink
    r = post(service, "/v1/txt2img", {"prompt": "an emoji of rocket", "steps": 4, "guidance": 2.0, "seed": 11, "n": 4})
    q = post(service, "/v1/txt2img", {"prompt": "an emoji of red apple", "steps": 4, "guidance": 2.0, "seed": 11, "n": 4})
    rocket, red = (np.stack([pixels(b) for b in x.json()["images"]]) for x in (r, q))
    assert np.abs(rocket - red).mean() > 30  # another name, another picture from the same seeds
    a = post(service, "/v1/txt2img", {"prompt": "an emoji of red apple", "steps": 4, "guidance": 0.0, "seed": 5}).json()["images"][0]
    b = post(service, "/v1/txt2img", {"prompt": "an emoji of red apple", "steps": 4, "guidance": 4.0, "seed": 5}).json()["images"][0]
    assert np.abs(pixels(a) - pixels(b)).mean() > 2.0  # gamma 0 and 4 draw visibly different images
    again = post(service, "/v1/txt2img", {"prompt": "an emoji of red apple", "steps": 4, "guidance": 4.0, "seed": 5}).json()["images"][0]
    assert again == b  # the same seed gives the same pixels
