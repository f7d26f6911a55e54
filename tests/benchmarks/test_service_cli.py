"""`python -m benchmarks.service` refuses bad arguments before it starts measuring."""

import subprocess
import sys

import pytest

from service.testing import ROOT


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "tpu"], "--device must be auto, cpu or cuda"),
        (["--set", "torch_threads"], "--set takes KEY=VALUE"),
        (["--concurrency", "0"], "--concurrency levels must be at least 1"),
        (["--set", "dtype=float8"], "FEWSTEP_DTYPE must be auto, float16, bfloat16 or float32"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, message):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.service", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
