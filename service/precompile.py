"""Compiling families side by side: helper processes compile some families' networks into
torch's compile cache folder on disk (on a CPU, their compiled packages: model/compiled_package.py)
while the service compiles another; the service then loads them from that folder instead of
compiling them one after the other.

On a CPU a family's first compile is mostly one process's work (inductor generates the C++ code
in Python, then one compiler process builds it), so with two families on two cores a first
start took the sum of the two compiles, one core idle. A helper is `python -m service.compile_helper`:
it builds the same networks for the same batch shape, dtype and thread count (the generated
kernels depend on all three), runs the family's warm-up once and exits. A helper that fails
costs nothing but its time: the service then compiles that family itself, as without helpers.
"""

from __future__ import annotations

import contextvars
import logging
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger("fewstep.precompile")


def available_cores() -> int:
    """The cores this process may run on (its affinity, where the platform tells it): how many
    families compile at once by default."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def helper_command(path: Path, *, dtype: str, fixed_batch: int, threads: int, cpp_wrapper: bool) -> list[str]:
    """The command line of a helper that compiles the family at `path`."""
    cmd = [sys.executable, "-m", "service.compile_helper", str(path), "--dtype", dtype, "--fixed-batch", str(fixed_batch), "--threads", str(threads)]
    return cmd + ([] if cpp_wrapper else ["--python-wrapper"])


def _record(command: list[str]) -> Path:
    """Where a successful compile of `command`'s family is recorded: in torch's compile cache
    folder, so that emptying the cache forgets it too."""
    import hashlib
    import json

    from torch._inductor.runtime.cache_dir_utils import cache_dir

    from model.compiled_package import build_environment

    args = command[command.index("service.compile_helper") + 1:]  # the family's folder, then its options
    # what a compile's output depends on beyond its arguments, as the compiled packages' names say
    key = json.dumps([args, (Path(args[0]) / "family.json").read_text(), build_environment()])
    return Path(cache_dir()) / "fewstep-compiled" / hashlib.sha256(key.encode()).hexdigest()


PYTHON_WRAPPER_RECORD = "python wrapper"  # what a record holds when the compiled package failed to build


def compiled_before(command: list[str]) -> bool:
    """Whether this cache holds the family's compiled networks already (a restart): then loading
    them takes seconds, less than starting a helper would."""
    try:
        return _record(command).is_file()
    except OSError:
        return False


def record_compiled(command: list[str], *, python_wrapper: bool = False) -> None:
    """Record that `command`'s family compiled; `python_wrapper`: with inductor's Python wrapper,
    its compiled package having failed to build (a restart then goes straight to the Python wrapper)."""
    try:
        path = _record(command)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PYTHON_WRAPPER_RECORD if python_wrapper else "")
    except OSError as exc:  # a read-only cache: restarts start helpers again, nothing worse
        log.debug("could not record the compile (%s)", exc)


def compiled_with_python_wrapper(command: list[str]) -> bool:
    """Whether the family's recorded compile fell back to inductor's Python wrapper."""
    try:
        return _record(command).read_text() == PYTHON_WRAPPER_RECORD
    except OSError:
        return False


def probe_vector_isa_in_background(pick: Callable[[], object] | None = None) -> threading.Thread | None:
    """Prepare inductor's choice of the CPU's vector instructions for a first compile: the base
    sets torch's CPU detection reports are trusted (`trust_reported_vector_isa`), and the probes
    left, a few small `g++` builds each loaded in a subprocess, start on a thread, so they run
    while this process traces its first network in Python rather than after it; inductor then
    finds their results cached (its own probe takes the same file locks). The thread runs with the
    caller's inductor settings (recent torch keeps them per thread). Returns the thread, or None
    when inductor cannot be imported; a failure leaves the probing to inductor, as before.
    `pick`: what the thread calls, inductor's `pick_vec_isa` unless given (tests)."""
    try:
        # imported here, on the caller's thread: importing inductor on one thread while torch.compile
        # imports dynamo on another can fail halfway (the two import each other)
        import torch._inductor.codecache  # noqa: F401 - the probes build through it
        from torch._inductor.cpu_vec_isa import pick_vec_isa
        pick = pick or pick_vec_isa
        trust_reported_vector_isa()
    except Exception as exc:  # noqa: BLE001 - no inductor here (or not the one expected): nothing to probe for
        log.debug("not probing the CPU's vector instructions (%s)", exc)
        return None

    def probe() -> None:
        try:
            pick()
        except Exception as exc:  # noqa: BLE001 - inductor probes again when it compiles
            log.debug("probing the CPU's vector instructions in the background failed (%s)", exc)

    settings = contextvars.copy_context()  # the caller's, the trust included
    thread = threading.Thread(target=settings.run, args=(probe,), daemon=True, name="fewstep-vector-isa-probe")
    thread.start()
    return thread


VEC_ISA_VARIABLE = "TORCHINDUCTOR_VEC_ISA_OK"  # set to anything: inductor's own choice ("0": no vector instructions; "1": trusted; other values: probed)


def trust_reported_vector_isa() -> bool:
    """On an x86 CPU, let inductor take the base vector instruction sets (AVX2, AVX-512) that
    torch's CPU detection reports, without first building a test program with each set's compiler
    flags and loading it in a subprocess: with an empty compile cache those probes cost about 4-6 s
    of `g++` on 2 cores, where a first start took 0.90x the time without them
    (docs/benchmarks/service.md). The extensions inductor checks beside them (AVX-512 VNNI and bf16,
    AMX on CPUs that report it) are still built and loaded. Set on the calling thread (recent torch
    keeps inductor's settings per thread). Left to inductor when TORCHINDUCTOR_VEC_ISA_OK is set, to
    any value (`auto`: inductor probes as it would without this service), or when the setting is
    chosen already. A compiler that cannot build the reported set fails the compile instead of
    falling back to a smaller set; the warm-up then falls back as for any failed compile (inductor's
    Python wrapper, then eager, each with a warning), and `TORCHINDUCTOR_VEC_ISA_OK=auto` restores
    the probes. Returns whether it trusted them."""
    from torch._inductor import config

    if VEC_ISA_VARIABLE in os.environ or config.cpp.vec_isa_ok is not None or platform.machine() not in ("x86_64", "AMD64"):
        return False
    config.cpp.vec_isa_ok = True
    return True


PARENT_VARIABLE = "FEWSTEP_COMPILE_HELPER_OF"  # the service's pid: a helper exits once that process is gone
PYTHON_WRAPPER_EXIT = 3  # a helper's exit status: compiled, but with the Python wrapper (the compiled package failed to build)
HELPER_TIMEOUT_S = 1800.0  # a helper still compiling after this long is taken as hung: stopped, its family left to the service


class Helpers:
    """Helper processes for the families at the end of the warm-up order, `slots` at a time.
    The service warms up the families in that order and calls `claim(name)` before each: a family
    no helper has started is the service's to compile; one a helper compiles is waited for. A
    slot a helper frees is refilled at once (a watcher thread), not only at the service's next
    claim: with more families than slots, the next helper starts while the service still compiles."""

    def __init__(self, commands: dict[str, list[str]], slots: int, timeout_s: float = HELPER_TIMEOUT_S, poll_s: float = 0.2,
                 on_start: Callable[[str], None] | None = None, on_exit: Callable[[str, int], None] | None = None):
        """`on_start(family)` is called when a helper starts compiling that family, `on_exit(family,
        status)` when the watcher sees it exit before the service claims it; both while holding the
        helpers' lock, on the service's thread or the watcher's (an exception they raise is logged)."""
        self.timeout_s = timeout_s
        self.on_start, self.on_exit = on_start, on_exit
        self.pending = list(commands)  # helpers take from the end, the service from the start
        self.commands = commands
        self.slots = slots
        self.running: dict[str, tuple[subprocess.Popen, float]] = {}  # name -> (helper, started)
        self.finished: dict[str, int] = {}  # name -> exit status: helpers that exited before their family's claim
        self._env = {**os.environ, PARENT_VARIABLE: str(os.getpid())}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._claimed = False  # the watcher refills only once the service has taken its first family
        with self._lock:
            self._fill()
        self._watcher = threading.Thread(target=self._watch, args=(poll_s,), daemon=True, name="fewstep-compile-helpers")
        self._watcher.start()

    def _fill(self) -> None:
        """Start helpers while a slot is free (call it holding the lock)."""
        while len(self.running) < self.slots and len(self.pending) > 1:  # the first pending family is the service's next
            name = self.pending.pop()
            try:
                proc = subprocess.Popen(self.commands[name], stdin=subprocess.DEVNULL, env=self._env)
            except OSError as exc:
                log.warning("could not start a helper to compile %s (%s); the service compiles it", name, exc)
                continue
            self.running[name] = (proc, time.perf_counter())
            log.info("compiling %s in a helper process (pid %d)", name, proc.pid)
            _tell(self.on_start, name)

    def _watch(self, poll_s: float) -> None:
        """Move helpers that exited to `finished` and refill their slots, until no family is left
        for a helper to take. A failure here leaves the refills to the claims, as without it."""
        try:
            while not self._closed.wait(poll_s):
                with self._lock:
                    if not self._claimed:
                        continue
                    for name, (proc, _) in list(self.running.items()):
                        if proc.poll() is not None:
                            del self.running[name]
                            self.finished[name] = proc.returncode
                            _tell(self.on_exit, name, proc.returncode)
                    self._fill()
                    if len(self.pending) <= 1 and not self.running:  # nothing a helper could still take or end: claims do the rest
                        return
        except Exception:  # noqa: BLE001 - never let it end the service's warm-up
            log.exception("the compile helpers' watcher stopped; freed slots are refilled at the service's next family")

    def claim(self, name: str) -> int | None:
        """Before the service warms up `name`: wait for its helper, if one compiles it, and return
        the helper's exit status (None when no helper compiled it)."""
        code = proc = None
        with self._lock:
            self._claimed = True
            if name in self.pending:
                self.pending.remove(name)
            elif name in self.finished:
                code = self.finished.pop(name)
                _report(name, code, None)
            elif name in self.running:
                proc, started = self.running.pop(name)
        if proc is not None:
            waited = time.perf_counter()
            try:
                code = proc.wait(max(0.0, started + self.timeout_s - time.perf_counter()))
            except subprocess.TimeoutExpired:
                _stop(proc)
                log.warning("the helper compiling %s was still running after %.0f s; stopped, the service compiles it", name, self.timeout_s)
            else:
                _report(name, code, time.perf_counter() - waited)
        with self._lock:
            self._fill()
        return code

    def close(self) -> None:
        """Stop the helpers still running (the warm-up failed or was interrupted)."""
        self._closed.set()
        self._watcher.join()
        with self._lock:
            for proc, _ in self.running.values():
                _stop(proc)
            self.running.clear()
            self.pending.clear()


def _tell(callback: Callable | None, *args) -> None:
    """Call a progress callback; what it raises is logged, never the helpers' business."""
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:  # noqa: BLE001 - a progress report must not stop compiles or leave helpers running
        log.exception("a compile-helper progress callback failed")


def _report(name: str, code: int, waited: float | None) -> None:
    """Log a helper's outcome; `waited`: how long the service waited for it (None: it had exited)."""
    wait = "it had finished" if waited is None else f"waited {waited:.1f} s for it"
    if code == 0:
        log.info("a helper compiled %s (%s)", name, wait)
    elif code == PYTHON_WRAPPER_EXIT:
        log.info("a helper compiled %s, with inductor's Python wrapper: its compiled package failed to build (%s)", name, wait)
    else:
        log.warning("the helper compiling %s failed (exit status %d); the service compiles it", name, code)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
