"""The compose file against the Compose Specification schema, and what scaling workers needs."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_follows_the_compose_spec():
    schema = json.loads((Path(__file__).parent / "compose_spec.json").read_text())
    errors = [f"{list(e.path)}: {e.message}" for e in jsonschema.Draft201909Validator(schema).iter_errors(compose())]
    assert errors == []


def test_the_schema_check_catches_mistakes():
    schema = json.loads((Path(__file__).parent / "compose_spec.json").read_text())
    doc = compose()
    doc["services"]["worker"]["ports"] = 8000  # must be a list
    doc["services"]["api"]["restart_policy"] = "always"
    assert len(list(jsonschema.Draft201909Validator(schema).iter_errors(doc))) == 2


def test_services_and_scaling():
    services = compose()["services"]
    assert set(services) == {"redis", "api", "worker", "prometheus", "grafana"}
    worker = services["worker"]
    # --scale worker=N: no fixed name or host port on the worker
    assert "container_name" not in worker and "ports" not in worker
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert services["api"]["environment"]["FEWSTEP_WORKERS"] == "0"
    assert services["api"]["environment"]["REDIS_URL"] == services["worker"]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert any(v.startswith("redis-data:") for v in services["redis"]["volumes"])  # persistent
    for name in ("api", "worker"):
        dockerfile = ROOT / services[name]["build"]["dockerfile"]
        text = dockerfile.read_text()
        assert "USER fewstep" in text and "HEALTHCHECK" in text, dockerfile
    assert "nvidia/cuda" in (ROOT / "docker/Dockerfile.worker").read_text()


def test_workers_keep_the_compiled_kernels_in_a_volume():
    """A restarted or scaled worker loads torch.compile's kernels instead of compiling again:
    the caches the worker image points at lie in a named volume, owned by its user."""
    doc = compose()
    mounts = {v.split(":")[1]: v.split(":")[0] for v in doc["services"]["worker"]["volumes"]}
    text = (ROOT / "docker/Dockerfile.worker").read_text()
    caches = [word.split("=", 1)[1] for line in text.splitlines() if line.startswith("ENV ") for word in line.split()[1:] if word.split("=")[0] in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")]
    assert len(caches) == 2
    for cache in caches:
        mount = next((m for m in mounts if cache.startswith(m.rstrip("/") + "/")), None)
        assert mount is not None, f"{cache} is not in a mounted volume"
        assert mounts[mount] in doc["volumes"], f"{mounts[mount]} is not a named volume"
        assert f"chown fewstep {mount}" in text  # the worker runs as fewstep and writes there


def test_grafana_provisioning_points_at_the_dashboard():
    services = compose()["services"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"] if v.startswith("./")}
    provider = yaml.safe_load((ROOT / "docker/grafana/provisioning/dashboards/fewstep.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert (ROOT / mounts[path] / "fewstep.json").is_file()
    datasource = yaml.safe_load((ROOT / "docker/grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    dashboard = json.loads((ROOT / mounts[path] / "fewstep.json").read_text())
    assert all(p["datasource"]["uid"] == datasource["uid"] for p in dashboard["panels"])
