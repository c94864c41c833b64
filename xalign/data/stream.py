"""Deterministic, sharded, resumable sample order.

The sample a worker sees is a pure function of (seed, position, rank): position ``p`` (a
global micro-batch counter) covers offsets ``[p*G, (p+1)*G)`` of an endless stream of
per-epoch permutations, G the global batch, and rank ``r`` takes its slice of width B. So a
run resumed at step s reads exactly what an uninterrupted run would have read: nothing lost,
nothing repeated, whatever the number of restarts.

Grouping by length (``group_window`` W > 0, HF Trainer's ``group_by_length`` idea): the
stream is cut into windows of W global micro-batches; inside a window the W*G samples are
sorted by length (longest first), cut into W global micro-batches, and those are put in a
seeded random order. A micro-batch then holds samples of similar length (less padding),
every sample is still read once per epoch, and the order is still a pure function of the
position, so resumption is unchanged.
"""

from __future__ import annotations

import numpy as np


class ShardedOrder:
    def __init__(self, size: int, *, seed: int, local_batch: int, world_size: int = 1, rank: int = 0,
                 lengths=None, group_window: int = 0):
        if size <= 0:
            raise ValueError("cannot draw batches from an empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
        if group_window and (lengths is None or len(lengths) != size):
            raise ValueError(f"group_window={group_window} needs one length per sample ({size}), got "
                             f"{None if lengths is None else len(lengths)}")
        self.size, self.seed = size, seed
        self.local_batch, self.world_size, self.rank = local_batch, world_size, rank
        self.group_window = group_window
        self.lengths = np.asarray(lengths, dtype=np.int64) if lengths is not None else None
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)
        self._window, self._window_order = -1, np.empty(0, dtype=np.int64)

    @property
    def global_batch(self) -> int:
        return self.local_batch * self.world_size

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            self._epoch = epoch
        return self._perm

    def _stream(self, start: int, stop: int) -> list[int]:
        """Dataset indices at offsets [start, stop) of the endless stream of permutations."""
        out = []
        for offset in range(start, stop):
            epoch, i = divmod(offset, self.size)
            out.append(int(self._permutation(epoch)[i]))
        return out

    def _grouped(self, window: int) -> np.ndarray:
        """The W*G indices of a window: sorted by length, cut into global micro-batches,
        those in a seeded order (cached: consecutive positions share a window)."""
        if window != self._window:
            g, w = self.global_batch, self.group_window
            idx = np.asarray(self._stream(window * w * g, (window + 1) * w * g), dtype=np.int64)
            idx = idx[np.argsort(-self.lengths[idx], kind="stable")].reshape(w, g)
            order = np.random.default_rng([self.seed, window, 1]).permutation(w)
            self._window, self._window_order = window, idx[order].reshape(-1)
        return self._window_order

    def indices(self, position: int) -> list[int]:
        """Dataset indices of this rank's slice of global micro-batch ``position``."""
        if not self.group_window:
            start = position * self.global_batch + self.rank * self.local_batch
            return self._stream(start, start + self.local_batch)
        window, slot = divmod(position, self.group_window)
        start = slot * self.global_batch + self.rank * self.local_batch
        return [int(i) for i in self._grouped(window)[start: start + self.local_batch]]
