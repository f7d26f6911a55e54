import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, check=True, timeout=900, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "training", *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"training {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def shared_run(tmp_path_factory, name: str) -> Path:
    """`training run` once for the whole test session, also across `pytest -n` workers: the
    first worker to ask trains it under a lock, in the folder the workers share; the others
    wait for it and reuse it (a run that failed is started afresh)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-of-USER/pytest-N, above every worker's own folder
    out = root / f"shared-{name}" / "family"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not (out / "family.json").is_file() or not (out / "metrics.json").is_file():
            if out.exists():
                shutil.rmtree(out)
            cli("run", name, "--out", out)
    return out


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory) -> Path:
    """The `quick` recipe, run once for the whole session: every stage and the evaluation."""
    return shared_run(tmp_path_factory, "quick")


@pytest.fixture(scope="session")
def toy2d_run(tmp_path_factory) -> Path:
    return shared_run(tmp_path_factory, "toy2d")


def read_metrics(directory: Path) -> dict:
    return json.loads((directory / "metrics.json").read_text())


def saved_step(state_root: Path) -> int:
    """The step of the newest saved training state of a stage (training/state_store.py), 0 if none."""
    try:
        steps = sorted(state_root.glob("step-*"))
        return json.loads((steps[-1] / "config.json").read_text())["step"] if steps else 0
    except (OSError, ValueError, KeyError):
        return 0
