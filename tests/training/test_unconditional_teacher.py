"""An unconditional diffusers teacher (no class embeddings, no text encoder): nothing to guide,
so it is distilled to fewer steps only, evaluated without adherence, and served to requests
that name no class and no prompt."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from service.testing import RedisServer, Service
from tests.training.test_diffusers_teacher import _unet_folder, cli

pytestmark = pytest.mark.slow


def test_an_unconditional_teacher_is_distilled_evaluated_and_served_without_a_condition(tmp_path):
    teacher = _unet_folder(tmp_path, "uncond")  # random weights: what is checked is the path, not the quality
    run = tmp_path / "run"
    proc = cli("run", "quick", "--teacher", teacher, "--out", run, "--set", "distill_start_steps=2", "--set", "stochastic_steps=[]",
               "--set", "stage1.steps=4", "--set", "distill.steps=4", "--set", "stage1.batch_size=8", "--set", "distill.batch_size=8",
               "--set", "evaluation.reference_steps=16", "--set", "evaluation.teacher_steps=[1,2]", "--set", "evaluation.dpm_steps=[]")
    assert "unconditional" in proc.stdout
    info = json.loads((run / "family.json").read_text())
    assert info["class_names"] == [] and info["text_encoder"] is None
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["conditioning"] == "unconditional" and not metrics.get("gamma_response")
    assert {("distilled", 1), ("stage1", 16), ("teacher-ddim", 16)} <= {(r["sampler"], r["steps"]) for r in metrics["rows"]}
    for row in metrics["rows"]:
        assert row["fid"] is not None and row["adherence"] is None  # nothing was asked
        assert set(row["attribute_tv"]) == {"shape", "colour", "size", "position", "background"}  # every attribute as a distribution
        assert "gamma_response" not in row

    cli("export", run, "--to", tmp_path / "families" / "uncond", "--name", "uncond")
    redis = RedisServer()
    service = Service(redis.url, log_dir=tmp_path, models_dir=str(tmp_path / "families"))
    try:
        model = next(m for m in httpx.get(service.url + "/v1/models").json()["data"] if m["id"] == "uncond")
        assert "unconditional" in model["conditioning"] and "class" not in model["conditioning"] and "text" not in model["conditioning"]

        def post(**body):
            return httpx.post(service.url + "/v1/generate", json={"model": "uncond", "steps": 1, "seed": 3, **body}, timeout=120)

        r = post()
        assert r.status_code == 200, r.text
        image = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))))
        assert image.shape == (8, 8, 3)
        assert np.array_equal(image, np.asarray(Image.open(io.BytesIO(base64.b64decode(post().json()["images"][0])))))  # same seed, same pixels
        bad = post(class_label=1)
        assert bad.status_code == 422 and "takes no class labels" in bad.text
        bad = post(prompt="a red circle")
        assert bad.status_code == 422 and "takes no text prompts" in bad.text
    finally:
        service.stop()
        redis.stop()
