"""Job webhooks against a local receiver: signed deliveries, retries, refused hosts."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from service.testing import Service, free_port
from tests.service.test_api import pixels

SECRET = "webhook-test-secret"


class Receiver:
    """An HTTP server that answers 500 to the first `failures` deliveries, then 200."""

    def __init__(self, failures: int):
        self.failures, self.calls = failures, []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), body))
                self.send_response(500 if len(receiver.calls) <= receiver.failures else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def hooked_service(redis_server, tmp_path_factory):
    svc = Service(redis_server.url, log_dir=tmp_path_factory.mktemp("logs"), queue_prefix="hooks", webhook_hosts="127.0.0.1", webhook_secret=SECRET, webhook_backoff_s=0.2, torch_threads=1)
    yield svc
    svc.stop()


def create(svc, webhook, request=None) -> httpx.Response:
    body = {"endpoint": "generate", "request": request or {"class_label": 2, "steps": 2, "seed": 5}, "webhook": webhook}
    return httpx.post(svc.url + "/v1/jobs", json=body, timeout=30)


def test_a_receiver_that_fails_twice_gets_the_signed_result_on_the_third_try(hooked_service):
    receiver = Receiver(failures=2)
    try:
        r = create(hooked_service, receiver.url)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.time() + 60
        while len(receiver.calls) < 3 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # no fourth try after a 200
        assert len(receiver.calls) == 3
        headers, body = receiver.calls[-1]
        stamp = headers["X-Fewstep-Timestamp"]
        expected = "sha256=" + hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Fewstep-Signature"], expected)
        assert abs(time.time() - int(stamp)) < 120
        delivered = json.loads(body)
        assert delivered["id"] == job_id and delivered["status"] == "succeeded"
        polled = httpx.get(f"{hooked_service.url}/v1/jobs/{job_id}", timeout=30).json()
        assert delivered["result"] == polled["result"]
        assert pixels(delivered["result"]["images"][0]).shape == (16, 16, 3)
        forged = "sha256=" + hmac.new(b"another secret", stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert headers["X-Fewstep-Signature"] != forged
    finally:
        receiver.close()


@pytest.mark.parametrize(
    "url,needle",
    [
        ("http://10.0.0.7/hook", "not allowed"),
        ("http://169.254.169.254/latest/meta-data", "not allowed"),
        ("http://localhost:8080/hook", "not allowed"),
        ("ftp://127.0.0.1/hook", "http:// or https://"),
        ("http://user:pw@127.0.0.1/hook", "credentials"),
        ("not a url", "http:// or https://"),
        ("http://127.0.0.1/a\u0001b", "control characters"),  # once accepted, then refused by httpx at each delivery
        ("http://127.0.0.1/a b", "spaces"),
    ],
)
def test_refused_hosts_get_a_4xx_at_job_creation(hooked_service, url, needle):
    r = create(hooked_service, url)
    assert r.status_code == 422, r.text
    assert needle in r.text and "webhook" in r.text


def test_webhooks_are_off_without_their_settings(service):
    r = create(service, "http://127.0.0.1:9/hook")
    assert r.status_code == 422 and "webhooks are off" in r.text
