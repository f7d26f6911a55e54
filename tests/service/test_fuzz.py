"""Fuzzing the OpenAPI schema (schemathesis) finds no 5xx."""

from __future__ import annotations

import pytest
import shutil
import subprocess
import sys
from pathlib import Path

pytestmark = pytest.mark.slow  # fuzzes the API from its OpenAPI schema


def test_schema_fuzzing_finds_no_server_error(service, tmp_path):
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert exe, "schemathesis is a dev dependency"
    proc = subprocess.run(
        [exe, "run", service.url + "/openapi.json", "--checks", "not_a_server_error", "--max-examples", "30", "--seed", "1", "--no-color", "--report-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout.split("SUMMARY")[-1]
