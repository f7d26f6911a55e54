"""Data batches drawn ahead of the training step by a background thread, so that an accelerator
does not wait for the CPU to render and caption the next batch.

Exact: step k's batch comes from the same seed as without prefetching, the first draw of the
step's own generator step_generator(seed, stage, k, rank) (Chain._batch draws it too, and
checks it), so a resumed run draws what an uninterrupted one would. Torch releases the GIL in
its kernels, so the thread renders while the main thread trains.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch

from .data import step_generator


def batch_seed(g: torch.Generator) -> int:
    """The first draw of a step's generator: the seed of its data batch."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=g))


class Prefetcher:
    """Batches of `size` for steps k, k+1, ... of one stage, `depth` steps ahead."""

    def __init__(self, dataset, size: int, seed: int, stage_id: int, rank: int, depth: int, warm=None):
        """`warm(batch)`, when given, runs in the thread after each draw: the caption encoder, so
        that the training step finds the batch's embeddings cached (their bits do not depend on
        where they were encoded: model/text_encoder.py, fixed_batch)."""
        self.dataset, self.size, self.seed, self.stage_id, self.rank, self.depth = dataset, size, seed, stage_id, rank, depth
        self.warm = warm
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fewstep-prefetch")
        self.futures: dict[int, Future] = {}

    def _draw(self, step: int):
        data_seed = batch_seed(step_generator(self.seed, self.stage_id, step, self.rank))
        batch = self.dataset.batch(self.size, (data_seed, self.rank))
        if self.warm is not None:
            self.warm(batch)
        return data_seed, batch

    def get(self, step: int, data_seed: int):
        """Step `step`'s batch (its seed must be `data_seed`); the next `depth` are queued."""
        for k in range(step, step + self.depth + 1):
            if k not in self.futures:
                self.futures[k] = self.pool.submit(self._draw, k)
        for k in [k for k in self.futures if k < step]:  # a skipped step (none in training)
            self.futures.pop(k).cancel()
        got_seed, batch = self.futures.pop(step).result()
        if got_seed != data_seed:  # cannot happen unless the seeding changed: be exact anyway
            return self.dataset.batch(self.size, (data_seed, self.rank))
        return batch

    def close(self) -> None:
        for f in self.futures.values():
            f.cancel()
        self.pool.shutdown(wait=True)
