"""Which queued requests share a forward pass.

Requests share a batch when they need the same checkpoint: same family, step count and
sampler. Prompts, classes, gamma, seeds and endpoints (generation, img2img, inpainting)
may all differ inside one batch. Arrival order is kept within and across batches.

With a fixed row count per network call (FEWSTEP_FIXED_BATCH), a batch's calls run one
after the other, so a worker cuts it into runs of at most that many rows (`cut_rows`), each
drawn and answered on its own: the first requests do not wait for the last call's.
"""

from __future__ import annotations

from typing import Callable

from .contract import Job


def batch_key(job: Job) -> tuple:
    return (job.model, job.steps, job.stochastic)


def plan_batches(jobs: list, max_batch_size: int, key=batch_key) -> list[list]:
    """Group jobs by checkpoint, at most max_batch_size per batch, ordered by their first arrival."""
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be at least 1")
    groups: dict[tuple, list] = {}
    for job in jobs:
        groups.setdefault(key(job), []).append(job)
    return [group[i : i + max_batch_size] for group in groups.values() for i in range(0, len(group), max_batch_size)]


def cut_rows(batch: list, rows: Callable[[object], int], size: int) -> list[list]:
    """Cut a batch into runs of at most `size` rows (`rows(job)`: a job's images), in arrival
    order; a job of more rows than `size` runs alone."""
    if size < 1:
        raise ValueError("size must be at least 1")
    runs: list[list] = []
    filled = 0
    for job in batch:
        n = rows(job)
        if not runs or filled + n > size:
            runs.append([])
            filled = 0
        runs[-1].append(job)
        filled += n
    return runs
