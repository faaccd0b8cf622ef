"""Shared n-step transitions (s, a, R, s', gamma^k): one ring segment per actor.

Memory: allocated by the main process before spawning, filled with sentinels (NaN
observations, action -1) so a read of an unwritten slot is obvious. Actor i is the only writer
of segment i and its cursor (`shm.rings` has the commit protocol); learners and the main process
only read.
"""

from __future__ import annotations

import numpy as np
import torch

from asyncql_cli.replay.batch import FIELDS
from asyncql_cli.shm.rings import SegmentedRings, shared_full

INDEX_BYTES = 8 + 4 + 4  # action (int64), reward, discount (float32)
PRIORITY_BYTES = 4


class ReplayStorage(SegmentedRings):
    columns = FIELDS  # what a replay snapshot holds

    def __init__(self, capacity: int, num_segments: int, write_batch: int, obs_shape: tuple[int, ...]):
        super().__init__(capacity, num_segments, write_batch)
        size = self.capacity
        self.obs = shared_full((size, *obs_shape), float("nan"))
        self.next_obs = shared_full((size, *obs_shape), float("nan"))
        self.action = shared_full((size,), -1, torch.int64)
        self.reward = shared_full((size,), float("nan"))
        self.discount = shared_full((size,), float("nan"))

    @staticmethod
    def bytes_needed(capacity: int, obs_shape: tuple[int, ...]) -> int:
        """Bytes of shared memory a storage of this capacity allocates."""
        obs_bytes = int(np.prod(obs_shape)) * 4
        return capacity * (2 * obs_bytes + INDEX_BYTES + PRIORITY_BYTES)

    def gather(self, slots: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).index_select(0, slots) for name in FIELDS}

    def describe(self) -> str:
        return f"replay: {self.capacity:,} rows in {self.num_segments} segments"
