"""GET /v1/jobs/{id}/events: server-sent progress of a job, over HTTP with a real worker."""

from __future__ import annotations

import base64
import io
import json

import httpx
from PIL import Image

from tests.service.test_api import pixels, post


def events(svc, job_id: str) -> list[tuple[str, dict]]:
    """The whole stream of a job, as (event, data) pairs."""
    out, kind = [], None
    with httpx.stream("GET", f"{svc.url}/v1/jobs/{job_id}/events", timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append((kind, json.loads(line[6:])))
    return out


def test_a_4_step_job_streams_4_step_previews_in_order_then_its_result(service):
    r = post(service, "/v1/jobs", {"endpoint": "generate", "request": {"class_label": 2, "steps": 4, "seed": 11}})
    assert r.status_code == 202, r.text
    stream = events(service, r.json()["id"])
    kinds = [k for k, _ in stream]
    assert kinds[-1] == "done" and "started" in kinds
    steps = [d for k, d in stream if k == "step"]
    assert [s["step"] for s in steps] == [1, 2, 3, 4] and all(s["steps"] == 4 for s in steps)
    assert kinds.index("started") < kinds.index("step")
    previews = [pixels(s["preview"]) for s in steps]
    assert all(p.shape == (16, 16, 3) for p in previews)
    final = pixels(stream[-1][1]["result"]["images"][0])
    # the last step's clean-image prediction is what the sampler returns
    assert abs(previews[-1].astype(int) - final.astype(int)).max() <= 1
    assert (abs(previews[0].astype(int) - final.astype(int)).mean()) > (abs(previews[-1].astype(int) - final.astype(int)).mean())


def test_a_cancelled_job_ends_its_stream_with_cancelled(service):
    backlog = [post(service, "/v1/jobs", {"endpoint": "generate", "request": {"class_label": 1, "steps": 8, "n": 8}}).json()["id"] for _ in range(6)]
    for _ in range(5):
        job = post(service, "/v1/jobs", {"endpoint": "generate", "request": {"class_label": 1, "steps": 8}}).json()["id"]
        if httpx.delete(f"{service.url}/v1/jobs/{job}", timeout=30).status_code == 200:
            break
    else:
        raise AssertionError("no job could be cancelled before a worker took it")
    stream = events(service, job)
    assert stream[-1] == ("cancelled", {})
    assert "step" not in [k for k, _ in stream]
    for b in backlog:  # the backlog still finishes
        assert events(service, b)[-1][0] == "done"


def test_events_of_an_unknown_job_are_a_404(service):
    r = httpx.get(f"{service.url}/v1/jobs/nope/events", timeout=30)
    assert r.status_code == 404 and "no job" in r.json()["detail"]
