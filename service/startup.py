"""What a starting service is doing, family by family: `/readyz` shows it while it answers 503.

A first start on a CPU compiles each family's networks (tens of seconds for the built-in ones
on two cores); a restart loads them from torch's compile cache in seconds. Every family is
"loading" while the service imports torch and builds its models; then `Runner.warm_up`
(service/runner.py) reports "waiting" (for its turn), "compiling", "compiling in a helper
process", "waiting (compiled in a helper process)", "waiting (its helper failed)", "loading from
the compile cache", "compiling, or loading from the compile cache" (where the service keeps no
record of its compiles: off the CPU, or after a fall back), "running once" (eager networks), and
at last "warm (<how it runs>)".
"""

from __future__ import annotations

import threading
import time
from typing import Iterable


class Startup:
    def __init__(self, families: Iterable[str]):
        self.started = time.monotonic()
        self._stages = {name: "loading" for name in families}
        self._lock = threading.Lock()  # stages are set on the model thread, read on the event loop's

    def stage(self, family: str, stage: str) -> None:
        with self._lock:
            self._stages[family] = stage

    def describe(self) -> dict:
        """Seconds since the start and each family's stage, for `/readyz`."""
        with self._lock:
            stages = dict(self._stages)
        return {"elapsed_s": round(time.monotonic() - self.started, 1), "families": stages}
