"""Which queued requests share a forward pass.

Requests share a batch when they need the same checkpoint: same family, step count and
sampler. Prompts, classes, gamma, seeds and endpoints (generation, img2img, inpainting)
may all differ inside one batch. Arrival order is kept within and across batches.
"""

from __future__ import annotations

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
