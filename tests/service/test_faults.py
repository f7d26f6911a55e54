"""Faults: a full queue, a deadline, Redis going away, a worker killed mid-batch, auth."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from service.testing import RedisServer, Service, WorkerProcess, free_port, metric

pytestmark = pytest.mark.slow  # kills workers and Redis under load


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("fault-logs")


def test_full_queue_gives_429_and_deadline_gives_504(redis_server, logs):
    # no worker: requests stay queued
    svc = Service(redis_server.url, log_dir=logs, args=("--workers", "0"), queue_prefix="full", queue_capacity=2, request_timeout_s=1)
    try:
        for _ in range(2):
            assert httpx.post(svc.url + "/v1/jobs", json={"endpoint": "generate", "request": {"class_label": 0}}).status_code == 202
        r = httpx.post(svc.url + "/v1/jobs", json={"endpoint": "generate", "request": {"class_label": 0}})
        assert r.status_code == 429 and r.headers["retry-after"] and "full" in r.json()["detail"]
        redis.Redis.from_url(redis_server.url).delete("full:requests")  # empty the queue
        start = time.monotonic()
        r = httpx.post(svc.url + "/v1/generate", json={"class_label": 0}, timeout=30)
        assert r.status_code == 504 and "no result within 1s" in r.json()["detail"]
        assert time.monotonic() - start < 10
        # the timed-out request was cancelled: it does not linger in the queue
        assert redis.Redis.from_url(redis_server.url).xlen("full:requests") == 0
    finally:
        svc.stop()


def test_redis_outage_gives_503_and_recovers(logs):
    server = RedisServer()
    svc = Service(server.url, log_dir=logs, queue_prefix="outage")
    try:
        assert httpx.post(svc.url + "/v1/generate", json={"class_label": 2, "steps": 1}, timeout=30).status_code == 200
        server.stop()
        r = httpx.post(svc.url + "/v1/generate", json={"class_label": 2, "steps": 1}, timeout=30)
        assert r.status_code == 503 and "unreachable" in r.json()["detail"] and r.headers["retry-after"]
        assert httpx.get(svc.url + "/readyz").status_code == 503
        assert httpx.get(svc.url + "/healthz").status_code == 200
        server.start()  # same port, empty: the worker recreates its consumer group
        deadline = time.monotonic() + 30
        while True:
            r = httpx.post(svc.url + "/v1/generate", json={"class_label": 2, "steps": 1}, timeout=30)
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert r.status_code == 200, r.text
        assert httpx.get(svc.url + "/readyz").status_code == 200
    finally:
        svc.stop()
        server.stop()


def test_a_worker_killed_mid_batch_loses_nothing(redis_server, logs):
    settings = {"queue_prefix": "failover", "torch_threads": 1}
    svc = Service(redis_server.url, log_dir=logs, args=("--workers", "0"), **settings)
    client = redis.Redis.from_url(redis_server.url)
    worker_a = WorkerProcess(redis_server.url, log_dir=logs, name="a", **settings)
    worker_b = None
    try:
        # heavy jobs (8 images x 8 steps each) so that worker A is surely mid-batch when killed
        ids = []
        for k in range(12):
            r = httpx.post(svc.url + "/v1/jobs", json={"endpoint": "txt2img", "request": {"prompt": f"a red circle {k}", "n": 8, "steps": 8, "seed": k}})
            assert r.status_code == 202
            ids.append(r.json()["id"])
        with ThreadPoolExecutor(2) as pool:
            waiting = [pool.submit(httpx.post, svc.url + "/v1/generate", json={"class_label": k, "n": 8, "steps": 8}, timeout=120) for k in range(2)]
            deadline = time.monotonic() + 30
            while client.xpending("failover:requests", "workers")["pending"] == 0:
                assert time.monotonic() < deadline, "worker A never took a request"
                time.sleep(0.01)
            worker_a.kill()
            left = client.xpending("failover:requests", "workers")
            assert left["pending"] > 0, "worker A finished before it was killed; the test proves nothing"
            worker_b = WorkerProcess(redis_server.url, log_dir=logs, name="b", claim_idle_ms=1000, **settings)
            assert all(f.result().status_code == 200 for f in waiting)
        deadline = time.monotonic() + 120
        for job_id in ids:
            while (status := httpx.get(svc.url + f"/v1/jobs/{job_id}").json())["status"] != "succeeded":
                assert status["status"] in ("queued", "running") and time.monotonic() < deadline, status
                time.sleep(0.2)
            assert len(status["result"]["images"]) == 8
        assert client.xlen("failover:requests") == 0
        assert "took over" in worker_b.log.read_text()
    finally:
        worker_a.kill()
        if worker_b:
            worker_b.kill()
        svc.stop()


def test_api_key_and_result_expiry(redis_server, logs):
    svc = Service(redis_server.url, log_dir=logs, queue_prefix="auth", api_key="s3cret-key-value", job_ttl_s=3)
    try:
        body = {"class_label": 0, "steps": 1}
        assert httpx.post(svc.url + "/v1/generate", json=body).status_code == 401
        assert httpx.post(svc.url + "/v1/generate", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.post(svc.url + "/v1/generate", json=body, headers={"Authorization": "Bearer s3cret-key-value"}).status_code == 200
        assert httpx.post(svc.url + "/v1/generate", json=body, headers={"X-API-Key": "s3cret-key-value"}).status_code == 200
        assert httpx.get(svc.url + "/healthz").status_code == 200  # probes need no key
        key = {"X-API-Key": "s3cret-key-value"}
        job = httpx.post(svc.url + "/v1/jobs", json={"endpoint": "generate", "request": body}, headers=key).json()
        deadline = time.monotonic() + 30
        while httpx.get(svc.url + f"/v1/jobs/{job['id']}", headers=key).json()["status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(4)  # FEWSTEP_JOB_TTL_S=3
        gone = httpx.get(svc.url + f"/v1/jobs/{job['id']}", headers=key)
        assert gone.status_code == 404 and "expired" in gone.json()["detail"]
    finally:
        svc.stop()
    assert "s3cret-key-value" not in svc.log.read_text()


def test_a_redis_refusing_writes_gives_503_not_500(logs):
    server = RedisServer()
    svc = Service(server.url, log_dir=logs, args=("--workers", "0"), queue_prefix="oom")
    try:
        client = redis.Redis.from_url(server.url)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
        r = httpx.post(svc.url + "/v1/jobs", json={"endpoint": "generate", "request": {"class_label": 0}})
        assert r.status_code == 503 and "refusing writes" in r.json()["detail"] and r.headers["retry-after"]
        r = httpx.post(svc.url + "/v1/images/generations", json={"prompt": "a red circle"})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        client.config_set("maxmemory", 0)
        assert httpx.post(svc.url + "/v1/jobs", json={"endpoint": "generate", "request": {"class_label": 0}}).status_code == 202
    finally:
        svc.stop()
        server.stop()


def test_slow_worker_processes_run_each_request_once(redis_server, logs):
    """Two worker processes whose batches (1 s) outlast the takeover time (0.4 s): every request
    still runs exactly once, counted from the workers' own metrics."""
    settings = {"queue_prefix": "slow", "claim_idle_ms": 400, "test_batch_delay_s": 1.0, "max_batch_size": 4, "torch_threads": 1}
    svc = Service(redis_server.url, log_dir=logs, args=("--workers", "0"), **settings)
    ports = [free_port(), free_port()]
    workers = [WorkerProcess(redis_server.url, log_dir=logs, name=f"slow-{k}", args=("--metrics-port", str(p)), **settings) for k, p in enumerate(ports)]
    try:
        bodies = [{"class_label": k % 14, "steps": [1, 2, 4, 8][k % 4], "seed": k} for k in range(12)]
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda b: httpx.post(svc.url + "/v1/generate", json=b, timeout=120), bodies))
        assert [r.status_code for r in answers] == [200] * 12
        executed = sum(metric(httpx.get(f"http://127.0.0.1:{p}/metrics").text, "fewstep_jobs_executed_total") for p in ports)
        assert executed == 12
    finally:
        for w in workers:
            w.kill()
        svc.stop()
