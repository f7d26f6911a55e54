"""What the API process holds while it runs: settings, the model registry, the queue, readiness."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .queue import RedisQueue
from .registry import Registry
from .settings import Settings
from .startup import Startup


@dataclass
class State:
    settings: Settings
    registry: Registry
    queue: RedisQueue
    workers: int = 0  # in-process workers
    ready: bool = False
    startup_error: str | None = None
    startup: Startup | None = None  # what the in-process workers' warm-up is doing, until ready
    tasks: list = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def workers_stopped(self) -> bool:
        """In-process workers were started and none is running any more."""
        return self.workers > 0 and bool(self.tasks) and all(t.done() for t in self.tasks) and not self.stop.is_set()
