"""Deterministic, sharded, resumable sample order.

The sample a worker sees is a pure function of (seed, position, rank): position ``p`` (a
global micro-batch counter) covers offsets ``[p*G, (p+1)*G)`` of an endless stream of
per-epoch permutations, G the global batch, and rank ``r`` takes its slice of width B. So a
run resumed at step s reads exactly what an uninterrupted run would have read: nothing lost,
nothing repeated, whatever the number of restarts.
"""

from __future__ import annotations

import numpy as np


class ShardedOrder:
    def __init__(self, size: int, *, seed: int, local_batch: int, world_size: int = 1, rank: int = 0):
        if size <= 0:
            raise ValueError("cannot draw batches from an empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
        self.size, self.seed = size, seed
        self.local_batch, self.world_size, self.rank = local_batch, world_size, rank
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    @property
    def global_batch(self) -> int:
        return self.local_batch * self.world_size

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            self._epoch = epoch
        return self._perm

    def indices(self, position: int) -> list[int]:
        """Dataset indices of this rank's slice of global micro-batch ``position``."""
        start = position * self.global_batch + self.rank * self.local_batch
        out = []
        for offset in range(start, start + self.local_batch):
            epoch, i = divmod(offset, self.size)
            out.append(int(self._permutation(epoch)[i]))
        return out
