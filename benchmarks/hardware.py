"""What a generated benchmark document states about the machine it measured, and how it is written."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _stat(pid: int | str) -> list[str]:
    """/proc/PID/stat's fields after the command's name: [0] is stat(5)'s field 3 (state)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all cores) used so far by a process and everything it started:
    its own, its descendants' that are still running, and what each of them counted for the
    children it waited for (Linux's /proc); NaN where that cannot be read."""
    try:
        fields = {pid: _stat(pid)}
    except (OSError, IndexError):
        return float("nan")
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != pid:
            try:
                stat = _stat(entry.name)
                fields[int(entry.name)] = stat
                children.setdefault(int(stat[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass  # a process that ended meanwhile
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += sum(int(f) for f in fields[p][11:15])  # utime, stime, cutime, cstime (stat(5) fields 14-17)
        todo.extend(children.get(p, ()))
    return total / os.sysconf("SC_CLK_TCK")


def describe(device: str | None = None) -> str:
    """'Linux ..., <CPU model>, 16 cores, Python 3.x, torch 2.x, device cpu' (or the GPU's name)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name(0)})"
    return f"{platform.platform()}, {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, device {device}"


def run_line(command: str, device: str | None = None) -> str:
    """'`python -m COMMAND` on DATE: <the machine>': the first line of a written report."""
    return f"`python -m {command}` on {time.strftime('%Y-%m-%d')}: {describe(device)}"


def publish(text: str, out: Path | None, document: str | None = None) -> None:
    """Print a benchmark's tables; with `out`, also write `document` (default: the tables) there."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text if document is None else document)
