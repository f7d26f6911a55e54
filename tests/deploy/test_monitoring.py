"""Prometheus: the config passes promtool; a real Prometheus scrapes a running service and every
dashboard panel's query returns data after some traffic."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from service.testing import free_port

pytestmark = pytest.mark.slow  # runs a real Prometheus against the service

ROOT = Path(__file__).resolve().parents[2]
needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None or shutil.which("promtool") is None, reason="Debian package prometheus is not installed (.ci/run installs it)")


@needs_prometheus
def test_promtool_accepts_the_scrape_config():
    proc = subprocess.run(["promtool", "check", "config", str(ROOT / "docker/prometheus/prometheus.yml")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((ROOT / "docker/grafana/dashboards/fewstep.json").read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


@needs_prometheus
def test_every_dashboard_query_has_data(service, tmp_path):
    port = free_port()
    target = service.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: fewstep-api\n    static_configs:\n      - targets: ['{target}']\n")
    check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                up = httpx.get(f"{api}/query", params={"query": "up"}).json()["data"]["result"]
                if up and up[0]["value"][1] == "1":
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            assert time.monotonic() < deadline, "Prometheus never scraped the service"
            time.sleep(0.5)
        # traffic for a few scrapes: every endpoint kind, several step counts, and some errors
        bodies = [("/v1/generate", {"class_label": k % 14, "steps": [1, 2, 4, 8][k % 4]}) for k in range(24)]
        bodies += [("/v1/txt2img", {"prompt": "a red circle", "steps": 4}), ("/v1/generate", {"class_label": 1, "steps": 3})]
        end = time.monotonic() + 6
        with ThreadPoolExecutor(8) as pool:
            while time.monotonic() < end:
                list(pool.map(lambda pb: httpx.post(service.url + pb[0], json=pb[1], timeout=60), bodies))
        time.sleep(3)  # two more scrapes
        empty = []
        for title, expr in dashboard_queries():
            result = httpx.get(f"{api}/query", params={"query": expr}).json()["data"]["result"]
            values = [r["value"][1] for r in result]
            if not values or all(v == "NaN" for v in values):
                empty.append(f"{title}: {expr}")
        assert empty == [], "panels without data:\n" + "\n".join(empty)
    finally:
        proc.terminate()
        proc.wait(10)
