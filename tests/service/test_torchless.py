"""The API process runs without torch. Its interpreter here can import only what the API image
installs (requirements/api.txt and what that pulls in; never torch, diffusers or
transformers): `import service.app` works, and a server lists models, refuses bad requests
(422) and queues good ones (202)."""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import subprocess
import sys
import textwrap

import httpx
import pytest
import redis
from packaging.requirements import Requirement

from service.contract import read_job
from service.testing import ROOT, Service

HEAVY = ("torch", "diffusers", "transformers")
BLOCKER = """
import sys
BLOCKED = set({blocked!r})
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the API image; blocked for this test)", name=name)
sys.meta_path.insert(0, _Blocked())
"""


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _closure(names: set[str] | dict[str, set[str]]) -> set[str]:
    """The distributions `names` pull in, recursively, as pip installs them on this platform:
    their requirements whose markers hold, with the extras asked for (a dict name -> extras)."""
    todo = list(names.items() if isinstance(names, dict) else ((n, set()) for n in names))
    seen, done = set(), set()
    while todo:
        name, extras = todo.pop()
        if (name, frozenset(extras)) in done:
            continue
        done.add((name, frozenset(extras)))
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                todo.append((_name(req.name), {e.lower() for e in req.extras}))
    return seen


def _extras(line: str) -> set[str]:
    """The extras a requirement line asks for: uvicorn[standard] -> {"standard"}."""
    return {e.lower() for e in Requirement(line).extras}


def api_lines() -> list[str]:
    lines = (ROOT / "requirements/api.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.strip() and not line.startswith("#")]


def api_requirements() -> set[str]:
    return {_name(line) for line in api_lines()}


@pytest.fixture(scope="module")
def blocker_dir(tmp_path_factory):
    """A sitecustomize that makes every installed module outside the API image unimportable."""
    covered = _closure({_name(line): _extras(line) for line in api_lines()}) | {"fewstep"}
    blocked = {m for m, dists in md.packages_distributions().items() if not any(_name(d) in covered for d in dists)}
    blocked |= set(HEAVY)
    d = tmp_path_factory.mktemp("torchless")
    (d / "sitecustomize.py").write_text(BLOCKER.format(blocked=sorted(blocked)))
    return d


def test_import_service_app_with_only_what_the_api_image_installs(blocker_dir):
    probe = textwrap.dedent(
        """
        import json, sys
        before = set(sys.modules)
        import service.app, service.__main__, uvicorn, multipart
        print(json.dumps(sorted({m.split(".")[0] for m in set(sys.modules) - before})))
        """
    )
    env = {"PYTHONPATH": f"{blocker_dir}:{ROOT}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    assert {"fastapi", "redis", "service", "model"} <= loaded and not loaded & set(HEAVY)
    listed = api_requirements()
    assert not _closure({_name(line): _extras(line) for line in api_lines()}) & set(HEAVY)
    declared = {_name(r) for r in md.requires("fewstep") if "extra ==" not in r}
    assert listed <= declared, "every API requirement is also a dependency of the package"
    installs = [line for line in (ROOT / "docker/Dockerfile.api").read_text().splitlines() if "pip install" in line]
    assert installs and all("torch" not in line for line in installs)
    assert any("-r requirements/api.txt" in line for line in installs) and any("--no-deps" in line for line in installs)


def test_a_server_without_torch_validates_and_queues(redis_server, blocker_dir, tmp_path):
    env = {"PYTHONPATH": f"{blocker_dir}:{ROOT}"}
    svc = Service(redis_server.url, log_dir=tmp_path, args=("--workers", "0"), queue_prefix="torchless", env=env)
    try:
        models = httpx.get(svc.url + "/v1/models").json()["data"]
        from model.builtin import builtin_families

        by_id = {m["id"]: m for m in models}
        assert set(by_id) == set(builtin_families()) and by_id["shapes"]["steps"] == [1, 2, 4, 8]
        r = httpx.post(svc.url + "/v1/generate", json={"class_label": 1, "guidance": 9.0})
        assert r.status_code == 422 and "outside the trained range" in r.json()["detail"]
        r = httpx.post(svc.url + "/v1/jobs", json={"endpoint": "generate", "request": {"class_label": "red circle", "steps": 2, "seed": 5}})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert httpx.get(svc.url + f"/v1/jobs/{job_id}").json()["status"] == "queued"
        client = redis.Redis.from_url(redis_server.url)
        (entry,) = [fields for _, fields in client.xrange("torchless:requests") if json.loads(fields[b"job"])["id"] == job_id]
        job = read_job(entry[b"job"])  # what a worker will read: a checked job of the current format
        assert (job.steps, job.items[0].class_label, job.items[0].seed, job.items[0].guidance) == (2, 0, 5, 1.0)
        assert "torch" not in svc.log.read_text()
    finally:
        svc.stop()
