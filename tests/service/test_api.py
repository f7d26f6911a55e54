"""End to end: a real uvicorn server (`python -m service`) and a real Redis."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from service.testing import metric

SIDE = 16  # the built-in family's resolution


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def source_image(side: int = 64) -> Image.Image:
    img = Image.new("RGB", (side, side), (255, 255, 255))
    for x in range(side // 4, 3 * side // 4):
        for y in range(side // 4, 3 * side // 4):
            img.putpixel((x, y), (220, 20, 20))
    return img


def repaint_mask(side: int = 64) -> Image.Image:
    mask = Image.new("L", (side, side), 0)
    for x in range(side // 2):
        for y in range(side):
            mask.putpixel((x, y), 255)
    return mask


def post(svc, path, body, **kw) -> httpx.Response:
    return httpx.post(svc.url + path, json=body, timeout=60, **kw)


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/generate", {"class_label": 4}),
        ("/v1/generate", {"class_label": "green triangle", "steps": 1}),
        ("/v1/generate", {"prompt": "a yellow circle", "steps": 8, "n": 3}),
        ("/v1/txt2img", {"prompt": "a red square on a black background", "steps": 2, "guidance": 0.3}),
        ("/v1/txt2img", {"prompt": "a blue cross", "steps": 4, "stochastic": True, "n": 2}),
        ("/v1/img2img", {"prompt": "a green circle", "image": png_b64(source_image()), "strength": 0.5}),
        ("/v1/inpaint", {"prompt": "a blue square", "image": png_b64(source_image()), "mask": png_b64(repaint_mask())}),
    ],
)
def test_every_endpoint_returns_images_of_the_model_size(service, path, body):
    r = post(service, path, body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["images"]) == body.get("n", 1)
    assert len(out["seeds"]) == len(out["images"])
    for img in out["images"]:
        assert pixels(img).shape == (SIDE, SIDE, 3)


def test_inpainting_keeps_unmasked_pixels(service):
    src = source_image()
    r = post(service, "/v1/inpaint", {"prompt": "a blue square", "image": png_b64(src), "mask": png_b64(repaint_mask()), "seed": 5})
    assert r.status_code == 200, r.text
    out = pixels(r.json()["images"][0])
    expected = np.asarray(src.resize((SIDE, SIDE), Image.Resampling.BOX))
    assert np.array_equal(out[:, SIDE // 2 :], expected[:, SIDE // 2 :])  # right half: not masked


@pytest.mark.parametrize("fmt,magic", [("png", b"\x89PNG"), ("jpeg", b"\xff\xd8"), ("webp", b"RIFF")])
def test_accept_header_returns_the_image_itself(service, fmt, magic):
    r = post(service, "/v1/txt2img", {"prompt": "a red circle", "seed": 1}, headers={"Accept": f"image/{fmt}"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == f"image/{fmt}"
    assert r.content.startswith(magic)
    assert Image.open(io.BytesIO(r.content)).size == (SIDE, SIDE)


def test_json_format_field(service):
    r = post(service, "/v1/generate", {"class_label": 0, "format": "jpeg"})
    assert r.status_code == 200
    assert base64.b64decode(r.json()["images"][0]).startswith(b"\xff\xd8")


def test_same_seed_same_pixels_alone_and_in_a_mixed_batch(service):
    mine = {"prompt": "a green square", "seed": 1234, "guidance": 2.0, "steps": 4}
    alone = post(service, "/v1/txt2img", mine).json()["images"][0]
    others = [{"class_label": k % 14, "seed": k, "guidance": 0.3 * (k % 5), "steps": 4} for k in range(11)]
    shared = 0
    for _ in range(5):  # on a busy machine the worker may take it alone; then submit the group again
        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(post, service, "/v1/generate", o) for o in others[:6]]
            mixed = pool.submit(post, service, "/v1/txt2img", mine)
            futures += [pool.submit(post, service, "/v1/generate", o) for o in others[6:]]
            batched = mixed.result().json()
            assert all(f.result().status_code == 200 for f in futures)
        assert np.array_equal(pixels(alone), pixels(batched["images"][0]))
        shared = max(shared, batched["batch_requests"])
        if shared > 1:
            break
    assert shared > 1, "the request never shared a batch in 5 tries; the test proves nothing"


def test_concurrent_requests_share_batches(service):
    before = httpx.get(service.url + "/metrics").text
    bodies = [{"prompt": f"a {c} circle", "seed": k, "steps": 2} for k, c in enumerate(["red", "green", "blue", "yellow"] * 4)]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda b: post(service, "/v1/txt2img", b), bodies))
    assert all(r.status_code == 200 for r in responses)
    after = httpx.get(service.url + "/metrics").text
    batches = metric(after, "fewstep_batch_size_count") - metric(before, "fewstep_batch_size_count")
    requests = metric(after, "fewstep_batch_size_sum") - metric(before, "fewstep_batch_size_sum")
    assert requests == 16
    assert batches < 16, f"16 concurrent requests ran in {batches} batches"


def test_openai_client_works_unchanged(service):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=service.url + "/v1", api_key="unused")
    out = client.images.generate(prompt="a yellow square", n=2, response_format="b64_json", extra_body={"seed": 7})
    assert len(out.data) == 2 and pixels(out.data[0].b64_json).shape == (SIDE, SIDE, 3)

    rgba = source_image().convert("RGBA")
    mask = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    for x in range(32):
        for y in range(64):
            mask.putpixel((x, y), (0, 0, 0, 0))  # transparent = repaint
    buf_i, buf_m = io.BytesIO(), io.BytesIO()
    rgba.save(buf_i, "PNG")
    mask.save(buf_m, "PNG")
    edit = client.images.edit(image=("image.png", buf_i.getvalue(), "image/png"), mask=("mask.png", buf_m.getvalue(), "image/png"), prompt="a green circle")
    assert pixels(edit.data[0].b64_json).shape == (SIDE, SIDE, 3)
    from model.builtin import builtin_families

    assert {m.id for m in client.models.list()} == set(builtin_families())
    with pytest.raises(openai.BadRequestError):
        client.images.generate(prompt="a red circle", size="1024x1024")


def test_jobs_lifecycle(service):
    r = post(service, "/v1/jobs", {"endpoint": "txt2img", "request": {"prompt": "a red cross", "seed": 3, "n": 2}})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["queue_position"] >= 0
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    for _ in range(200):
        status = httpx.get(service.url + f"/v1/jobs/{job['id']}").json()
        if status["status"] == "succeeded":
            break
    assert status["status"] == "succeeded"
    assert len(status["result"]["images"]) == 2
    # a finished job cannot be cancelled; an unknown one is 404
    assert httpx.delete(service.url + f"/v1/jobs/{job['id']}").status_code == 409
    assert httpx.get(service.url + "/v1/jobs/nope").status_code == 404
    assert httpx.delete(service.url + "/v1/jobs/nope").status_code == 404


def test_a_retried_job_with_an_idempotency_key_is_queued_once(service):
    body = {"endpoint": "txt2img", "request": {"prompt": "a red cross", "seed": 5}}
    key = {"Idempotency-Key": "client-retry-7f3a"}
    executed = metric(httpx.get(service.url + "/metrics").text, "fewstep_jobs_executed_total")
    first = httpx.post(service.url + "/v1/jobs", json=body, headers=key, timeout=30)
    again = httpx.post(service.url + "/v1/jobs", json=body, headers=key, timeout=30)  # the answer was lost: retry
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    for _ in range(200):
        if httpx.get(service.url + f"/v1/jobs/{first.json()['id']}").json()["status"] == "succeeded":
            break
    assert metric(httpx.get(service.url + "/metrics").text, "fewstep_jobs_executed_total") - executed == 1
    other = httpx.post(service.url + "/v1/jobs", json=body, headers={"Idempotency-Key": "another"}, timeout=30)
    assert other.json()["id"] != first.json()["id"]
    bad = httpx.post(service.url + "/v1/jobs", json=body, headers={"Idempotency-Key": "x" * 300}, timeout=30)
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["detail"]


def test_models_health_ready_metrics(service):
    models = httpx.get(service.url + "/v1/models").json()["data"]
    shapes = next(m for m in models if m["id"] == "shapes")
    assert shapes["default"] and sum(m["default"] for m in models) == 1
    assert shapes["steps"] == [1, 2, 4, 8] and shapes["stochastic_steps"] == [2, 4, 8]
    assert shapes["resolution"] == SIDE and shapes["guidance_range"] == [0.0, 4.0]
    assert set(shapes["conditioning"]) == {"class", "text", "img2img", "inpaint"}
    assert httpx.get(service.url + "/healthz").status_code == 200
    assert httpx.get(service.url + "/readyz").json() == {"status": "ready"}
    post(service, "/v1/generate", {"class_label": 1, "steps": 1})
    text = httpx.get(service.url + "/metrics").text
    for name in (
        "fewstep_request_duration_seconds_bucket",
        "fewstep_queue_wait_seconds_count",
        "fewstep_batch_size_count",
        "fewstep_batch_model_seconds_count",
        "fewstep_images_generated_total",
        "fewstep_queue_depth",
        "fewstep_live_workers",
    ):
        assert name in text, name
    assert metric(text, "fewstep_live_workers") == 1
    assert metric(text, "fewstep_request_duration_seconds_count", {"endpoint": "/v1/generate", "steps": "1"}) >= 1


def test_img2img_follows_the_strength_at_one_step(service):
    """A 1-step student starts where the strength says (one stage-1 step to t = 0), not from
    pure noise: the output stays near the input at low strength and moves away as it grows."""
    src = source_image()
    expected = np.asarray(src.resize((SIDE, SIDE), Image.Resampling.BOX)).astype(float)
    dist, evals = {}, {}
    for strength in (0.1, 0.5, 1.0):
        r = post(service, "/v1/img2img", {"class_label": "red square", "image": png_b64(src), "strength": strength, "steps": 1, "seed": 3, "n": 4})
        assert r.status_code == 200, r.text
        dist[strength] = np.mean([np.sqrt(((pixels(b).astype(float) - expected) ** 2).mean()) for b in r.json()["images"]])
        evals[strength] = r.json()["network_evaluations"]
    assert dist[0.1] < dist[0.5] < dist[1.0], dist
    assert dist[0.1] < 0.5 * dist[1.0], dist
    assert evals == {0.1: 1, 0.5: 1, 1.0: 1}
    r = post(service, "/v1/img2img", {"class_label": "red square", "image": png_b64(src), "strength": 0.6, "steps": 4})
    assert r.json()["network_evaluations"] == 3  # two grid steps below t = 0.6, plus the partial step to t = 0.5


@pytest.mark.slow  # draws and compares hundreds of images
def test_guidance_steers_what_the_4_step_student_draws(service):
    """What a user relies on: asking for more guidance gets images that follow the class more,
    as the teacher's do. Over HTTP, the 4-step student's adherence (the family's own evaluator)
    rises from gamma 0 to gamma 4 by at least half the teacher's rise in metrics.json (the first
    built-in students did not rise at all, 0.815 -> 0.804; the previous ones rose 0.48 of it;
    the current ones 0.80, on these 448 images per gamma)."""
    import json as _json

    from model.builtin import BUILTIN_DIR
    from training.config import DataConfig
    from training.data.shapes import COLOURS, SHAPES, ShapesDataset
    from training.evaluator import adherence, load_or_train_evaluator

    family_dir = BUILTIN_DIR / "shapes"
    dataset = ShapesDataset(DataConfig(kind="shapes", resolution=SIDE))
    evaluator = load_or_train_evaluator(family_dir, dataset, 600)
    result = {}
    for gamma in (0.0, 4.0):
        images, asked = [], []
        for k, (colour, shape) in enumerate(dataset.combos):
            for part in range(4):  # 32 images per class, 448 per gamma
                r = post(service, "/v1/generate", {"class_label": k, "guidance": gamma, "steps": 4, "seed": 1000 + 32 * k + 8 * part, "n": 8})
                assert r.status_code == 200, r.text
                images += [pixels(b) for b in r.json()["images"]]
                asked += [[SHAPES.index(shape), COLOURS.index(colour), -1, -1, -1]] * 8
        x = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        result[gamma] = adherence(evaluator.classify(x), torch.tensor(asked))
    metrics = _json.loads((family_dir / "metrics.json").read_text())
    ref = {r["guidance"]: r["adherence"] for r in metrics["rows"] if r["sampler"] == "teacher-ddim" and r["steps"] == metrics["reference"]["steps"]}
    teacher_gain = ref[4.0] - ref[0.0]
    assert teacher_gain > 0.05, ref  # the teacher itself responds to guidance
    print(f"[steering] 4-step adherence over HTTP: gamma 0 {result[0.0]:.3f}, gamma 4 {result[4.0]:.3f}; "
          f"gain {result[4.0] - result[0.0]:.3f} = {(result[4.0] - result[0.0]) / teacher_gain:.2f} of the teacher's {teacher_gain:.3f}")
    assert result[4.0] - result[0.0] >= 0.5 * teacher_gain, (result, ref)
