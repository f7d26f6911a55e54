"""`python -m benchmarks.first_start`: the two settings alternate, bad arguments are refused
with a message, its verdict and ratio agree with the figures it prints, and it reads the
worker's warm-up times, not its helpers'."""

import math
import subprocess
import sys

from benchmarks.first_start import SETTINGS, WARMED, order, report
from benchmarks.hardware import cpu_seconds
from service.testing import ROOT

SIDE, ONE = SETTINGS


def test_the_settings_alternate_so_a_drift_weighs_on_both():
    assert order(3) == [SIDE, ONE, ONE, SIDE, SIDE, ONE]
    assert order(1) == [SIDE, ONE]


def run(first: float, restart: float = 10.0, cpu: float = 80.0) -> dict:
    return {"first": first, "restart": restart, "first_cpu": cpu, "first_families": {"emoji": first - 6, "shapes": 2.0}, "restart_families": {}}


def test_the_report_prints_each_run_the_means_and_a_verdict_that_agrees_with_them():
    text = report([(SIDE, run(44.0, cpu=82.0)), (ONE, run(58.0, cpu=70.0)), (ONE, run(56.0)), (SIDE, run(46.0, cpu=86.0))], cores=2)
    assert "| 1 | side by side (the default) | 44.0 | 82.0 | 38.0 | 2.0 | 10.0 |" in text
    assert "Mean first start: 45.0 s side by side (the default), 57.0 s one after the other (FEWSTEP_COMPILE_PROCESSES=1) (0.79x the time)" in text
    assert "CPU time of a first start side by side (the default): 84.0 s on average; on 2 cores no schedule of that work reaches /readyz in less than 42.0 s." in text
    assert "Target: a first start to /readyz <= 30 s: MISSED (45.0 s on average, side by side)." in text
    fast = report([(SIDE, run(29.0)), (ONE, run(40.0))], cores=2)
    assert "Target: a first start to /readyz <= 30 s: met (29.0 s on average, side by side)." in fast


def test_bad_arguments_exit_2_with_a_message():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.first_start", "--runs", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--runs must be at least 1" in proc.stderr and "Traceback" not in proc.stderr


def test_a_family_missing_from_a_runs_log_is_printed_as_nan_not_a_crash():
    partial = run(44.0)
    del partial["first_families"]["shapes"]
    text = report([(SIDE, partial), (ONE, run(58.0))], cores=2)
    assert "| 1 | side by side (the default) | 44.0 | 80.0 | 38.0 | nan | 10.0 |" in text


SPIN = "import time\nwhile time.process_time() < 0.6: pass"  # 0.6 s of CPU time, on any machine


def test_cpu_time_counts_the_children_a_process_started_running_or_ended():
    import os
    import time

    before = cpu_seconds(os.getpid())
    subprocess.run([sys.executable, "-c", SPIN], check=True, timeout=120)
    ended = cpu_seconds(os.getpid())
    assert ended - before >= 0.5, (before, ended)  # the child's loop, not this process's wait
    running = subprocess.Popen([sys.executable, "-c", SPIN + "\nprint('done', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert running.stdout.readline() == "done\n"
        assert cpu_seconds(os.getpid()) - ended >= 0.5  # still running, not yet waited for
    finally:
        running.kill()
        running.wait()
    assert math.isnan(cpu_seconds(2**22 + 12345))  # no such process


def test_the_warm_up_times_are_the_workers_not_its_helpers():
    log = ("2026-12-05 16:59:02,208 INFO fewstep.runner (helper): warmed up shapes in 18.3 s (compiled package)\n"
           "2026-12-05 16:59:40,100 INFO fewstep.runner: warmed up emoji in 38.3 s (compiled package)\n"
           "2026-12-05 16:59:42,900 INFO fewstep.runner: warmed up shapes in 2.6 s (compiled package)\n")
    assert WARMED.findall(log) == [("emoji", "38.3"), ("shapes", "2.6")]
