"""OpenAI's image event stream (`stream: true`, `partial_images`) through the official client."""

from __future__ import annotations

import io

import numpy as np
import openai
from PIL import Image

from service.openai_routes import partial_steps
from tests.service.test_api import pixels, source_image


def test_partial_steps_are_spread_before_the_last():
    assert partial_steps(4, 0) == []
    assert partial_steps(4, 1) == [2]
    assert partial_steps(4, 3) == [1, 2, 3]
    assert partial_steps(8, 2) == [3, 5]
    assert partial_steps(2, 3) == [1]  # no more previews than steps before the last
    assert partial_steps(1, 2) == []


def test_a_streamed_generation_sends_partial_images_then_the_same_image(service):
    client = openai.OpenAI(base_url=service.url + "/v1", api_key="unused")
    extra = {"steps": 8, "seed": 21, "guidance": 2.0}
    events = list(client.images.generate(model="shapes", prompt="a green triangle", stream=True, partial_images=2, extra_body=extra))
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image", "image_generation.partial_image", "image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    assert all(pixels(e.b64_json).shape == (16, 16, 3) for e in events)
    plain = client.images.generate(model="shapes", prompt="a green triangle", extra_body=extra)
    assert np.array_equal(pixels(events[-1].b64_json), pixels(plain.data[0].b64_json))


def test_a_streamed_edit_ends_with_completed(service):
    client = openai.OpenAI(base_url=service.url + "/v1", api_key="unused")
    rgba = source_image().convert("RGBA")
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[:, :32] = 0  # repaint the left half
    rgba.putalpha(Image.fromarray(alpha))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    events = list(client.images.edit(image=("in.png", buf.getvalue(), "image/png"), prompt="a blue square", stream=True, partial_images=1, extra_body={"steps": 4, "seed": 2}))
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
