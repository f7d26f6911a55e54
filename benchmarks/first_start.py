"""First-start benchmark: a compiled service's start to /readyz with an empty compile cache, its
families compiled side by side (the default) against one after the other, alternated.

    python -m benchmarks.first_start [--runs 3] [--out FILE.md]

Each run starts `python -m service` (compiled, on the CPU, where helpers apply; on its own redis-server) with a new, empty
`TORCHINDUCTOR_CACHE_DIR`, as on a new machine, once with FEWSTEP_COMPILE_PROCESSES at its
default (the cores) and once at 1, in the order default, 1, 1, default, default, 1, ... so that a
drift of the machine's speed weighs on both alike; then it restarts each on what it cached.
The service's `TMPDIR` is that folder too: torch keeps some of what it
compiles (precompiled headers) under the temporary folder rather than the cache folder, so each
run pays all that a new machine compiles. Printed per run: start to /readyz, each family's warm-up from the
service's log, the CPU time the service and the processes it started (helpers, compilers, running
or ended) had used by then, and the restart; then the means, their ratio, and the least time that CPU work
allows on this machine's cores (its CPU time divided by the cores: the floor of any schedule).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.hardware import cpu_seconds, publish, run_line
from service.precompile import available_cores
from service.testing import RedisServer, Service

SETTINGS = {"side by side (the default)": {"compile_processes": ""}, "one after the other (FEWSTEP_COMPILE_PROCESSES=1)": {"compile_processes": "1"}}
WARMED = re.compile(r"^(?!.*\(helper\)).*warmed up (\S+) in ([0-9.]+) s", re.MULTILINE)  # the worker's lines, not its helpers'


def order(runs: int) -> list[str]:
    """The settings' labels, alternated A, B, B, A, A, B, ... (`runs` of each)."""
    a, b = SETTINGS
    pairs = [(a, b) if k % 2 == 0 else (b, a) for k in range(runs)]
    return [label for pair in pairs for label in pair]


def start(redis_url: str, logs: Path, cache: str, overrides: dict) -> dict:
    """One start on `cache` and one restart on it: seconds to /readyz and each family's warm-up."""
    out = {}
    env = {"TORCHINDUCTOR_CACHE_DIR": cache, "TMPDIR": cache}  # torch keeps its precompiled headers under the temporary folder
    for key in ("first", "restart"):
        svc = Service(redis_url, log_dir=logs, threads=None, env=env, queue_prefix="first-start", device="cpu", compile="1", **overrides)
        if key == "first":
            out["first_cpu"] = cpu_seconds(svc.proc.pid)  # at /readyz
        svc.stop()
        out[key] = svc.start_s
        out[f"{key}_families"] = {name: float(s) for name, s in WARMED.findall(svc.log.read_text())}
    return out


def report(results: list[tuple[str, dict]], cores: int) -> str:
    families = sorted({name for _, r in results for name in r["first_families"]})
    head = ("| run | families compiled | start to /readyz (s) | CPU time by then (s) | " + " | ".join(f"`{f}` warmed up (s)" for f in families)
            + " | restarted: to /readyz (s) |")
    lines = [head, "|" + "---|" * (5 + len(families))]
    for k, (label, r) in enumerate(results, 1):
        warm = " | ".join(f"{r['first_families'].get(f, float('nan')):.1f}" for f in families)
        lines.append(f"| {k} | {label} | {r['first']:.1f} | {r['first_cpu']:.1f} | {warm} | {r['restart']:.1f} |")
    means = {label: statistics.mean(r["first"] for lab, r in results if lab == label) for label in SETTINGS}
    restarts = {label: statistics.mean(r["restart"] for lab, r in results if lab == label) for label in SETTINGS}
    a, b = SETTINGS
    cpu = statistics.mean(r["first_cpu"] for lab, r in results if lab == a)
    lines += ["", f"Mean first start: {means[a]:.1f} s {a}, {means[b]:.1f} s {b} ({means[a] / means[b]:.2f}x the time); "
                  f"mean restart: {restarts[a]:.1f} s and {restarts[b]:.1f} s.",
              f"CPU time of a first start {a}: {cpu:.1f} s on average; on {cores} cores no schedule of that work reaches /readyz "
              f"in less than {cpu / cores:.1f} s.",
              f"Target: a first start to /readyz <= 30 s: {'met' if means[a] <= 30 else 'MISSED'} ({means[a]:.1f} s on average, side by side)."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.first_start", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="first starts of each setting (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if available_cores() < 2:
        parser.error("families compile side by side on two cores or more; this process may use one")
    redis_server = RedisServer()
    logs = Path(tempfile.mkdtemp(prefix="fewstep-first-start-"))
    results = []
    try:
        for label in order(args.runs):
            with tempfile.TemporaryDirectory(prefix="fewstep-compile-cache-") as cache:
                results.append((label, start(redis_server.url, logs, cache, SETTINGS[label])))
            print(f"{label}: {results[-1][1]['first']:.1f} s, restarted {results[-1][1]['restart']:.1f} s", file=sys.stderr, flush=True)
    finally:
        redis_server.stop()
    text = report(results, available_cores())
    publish(text, args.out, f"{run_line('benchmarks.first_start', 'cpu')}.\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
