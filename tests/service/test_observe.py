"""The request metrics and access log middleware (service/app.py: Observe), as plain ASGI."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from service.app import Observe


def sample(name: str, labels: dict) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def app_that(path: str, status: int = 200, chunks: int = 1, pause: float = 0.0, fail: BaseException | None = None):
    """An inner app that the router matched to `path`, answering `status` in `chunks` body parts
    `pause` seconds apart (a stream), or raising `fail` before it answers."""

    async def app(scope, receive, send):
        scope["route"] = SimpleNamespace(path=path)
        scope.setdefault("state", {})["steps"] = 3
        if fail is not None:
            raise fail
        await send({"type": "http.response.start", "status": status, "headers": []})
        for k in range(chunks):
            await asyncio.sleep(pause)
            await send({"type": "http.response.body", "body": b"x", "more_body": k < chunks - 1})

    return app


def call(app) -> None:
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    asyncio.run(Observe(app)({"type": "http", "method": "POST", "path": "/x", "headers": []}, receive, send))


def test_a_request_is_counted_by_endpoint_status_and_steps():
    before = sample("fewstep_request_duration_seconds_count", {"endpoint": "/v1/observe-a", "steps": "3"})
    errors = sample("fewstep_errors_total", {"status": "422"})
    call(app_that("/v1/observe-a", status=422))
    assert sample("fewstep_request_duration_seconds_count", {"endpoint": "/v1/observe-a", "steps": "3"}) == before + 1
    assert sample("fewstep_requests_total", {"endpoint": "/v1/observe-a", "status": "422"}) >= 1
    assert sample("fewstep_errors_total", {"status": "422"}) == errors + 1


def test_a_stream_is_timed_to_its_first_byte_not_its_end():
    """An event stream that stays open for 0.6 s must not land in the slow latency buckets."""
    call(app_that("/v1/observe-stream", chunks=4, pause=0.15))
    total = sample("fewstep_request_duration_seconds_sum", {"endpoint": "/v1/observe-stream", "steps": "3"})
    assert 0 < total < 0.1


def test_an_exception_is_a_500_and_a_cancelled_request_is_no_error():
    errors = sample("fewstep_errors_total", {"status": "500"})
    with pytest.raises(RuntimeError):
        call(app_that("/v1/observe-fail", fail=RuntimeError("bug")))
    assert sample("fewstep_requests_total", {"endpoint": "/v1/observe-fail", "status": "500"}) == 1
    assert sample("fewstep_errors_total", {"status": "500"}) == errors + 1
    with pytest.raises(asyncio.CancelledError):
        call(app_that("/v1/observe-cancel", fail=asyncio.CancelledError()))
    assert sample("fewstep_requests_total", {"endpoint": "/v1/observe-cancel", "status": "499"}) == 1
    assert sample("fewstep_errors_total", {"status": "500"}) == errors + 1
