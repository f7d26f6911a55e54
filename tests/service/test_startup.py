"""A starting service says what each family is doing: /readyz answers 503 with each family's
stage and the seconds since the start until every family is warm, then 200."""

from __future__ import annotations

import threading
import time
import uuid

from service import worker as worker_module
from service.settings import Settings
from service.startup import Startup


class Runner:
    def run(self, jobs, on_event=None):
        raise AssertionError("no batch runs in this test")


def test_readyz_shows_each_familys_stage_until_the_service_is_ready(redis_server, monkeypatch):
    from starlette.testclient import TestClient

    from service.app import create_app

    compiling, finish = threading.Event(), threading.Event()

    def build_runner(settings, paths, *, beside_api=False, on_stage=None):  # a warm-up that goes on until the test lets it finish
        names = sorted(paths)
        on_stage(names[0], "compiling")
        on_stage(names[1], "compiling in a helper process")
        compiling.set()
        assert finish.wait(30)
        for name in names:
            on_stage(name, "warm (compiled package)")
        return Runner()

    monkeypatch.setattr(worker_module, "build_runner", build_runner)
    settings = Settings(queue_prefix=f"startup-{uuid.uuid4().hex[:8]}")
    with TestClient(create_app(settings, redis_url=redis_server.url, workers=1)) as client:
        assert compiling.wait(30)
        r = client.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "loading" and body["families"] == {"emoji": "compiling", "shapes": "compiling in a helper process"}
        time.sleep(0.3)
        assert client.get("/readyz").json()["elapsed_s"] >= body["elapsed_s"] + 0.2
        finish.set()
        deadline = time.monotonic() + 30
        while (r := client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.05)
        assert r.json() == {"status": "ready"}


def test_every_family_is_loading_until_the_warm_up_says_otherwise():
    startup = Startup(["emoji", "shapes"])
    assert startup.describe()["families"] == {"emoji": "loading", "shapes": "loading"}
    startup.stage("shapes", "warm (eager)")
    assert startup.describe()["families"] == {"emoji": "loading", "shapes": "warm (eager)"}
