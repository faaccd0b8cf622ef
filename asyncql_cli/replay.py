"""Shared-memory replay: one storage, written by actors in batches, read by samplers.

Memory ownership (Sample Factory style):
- The main process allocates every tensor below once, before spawning, and fills them
  with sentinels (NaN observations, action -1) so a read of an unwritten slot is obvious.
- The storage is split into one ring segment per actor. Actor i is the only writer of
  segment i and of `cursors[i]`, the number of transitions it has committed.
- Learners (and the main process, for `size`) only read.

No lock is taken. An actor writes a batch of at most `write_batch` rows into the slots
after its cursor and only then advances the cursor (the commit). A sampler draws logical
positions among committed rows, leaving out the `write_batch` oldest ones (the slots the
next batch may overwrite), gathers them, then re-reads the cursors and redraws any row that
a write started meanwhile could have touched. So a sampled row is never half-written,
even when the ring wraps or an actor dies in the middle of a batch.

The samplers serve any storage with this interface (`frame_replay.FrameStorage` too): a
storage whose rows read `lookback` older rows (a frame stack) and `lookahead` newer ones
(s_{t+k}) keeps that many rows away from each end, and one with an `unusable(slots)` check
has the rows it flags redrawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

FIELDS = ("obs", "action", "reward", "next_obs", "discount")
# a draw whose rows keep being torn or unusable this many times in a row is given up (None)
MAX_REDRAW_ROUNDS = 100


@dataclass
class Batch:
    """A sampled minibatch; `discount` is gamma^k for a k-step bootstrap, 0 at termination."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    discount: torch.Tensor
    index: torch.Tensor
    weight: Optional[torch.Tensor] = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The fields a learner reads on its device: all but `index` (and `weight` when None)."""
        fields = {name: getattr(self, name) for name in FIELDS}
        if self.weight is not None:
            fields["weight"] = self.weight
        return fields

    def to(self, device: torch.device, staging: Optional[dict[str, torch.Tensor]] = None) -> Batch:
        """This batch on `device`; `index` stays on the host, where the samplers use it.

        `staging`: host tensors shaped like `tensors()` (pinned, for CUDA). The fields are
        copied into them first, because a non_blocking copy to the device is asynchronous only
        from pinned memory; the caller must not rewrite them until that copy has run. On a CPU
        device the returned batch reads the staging tensors themselves."""
        fields = self.tensors()
        if staging is not None:
            fields = {name: staging[name].copy_(value) for name, value in fields.items()}
        moved = {name: value.to(device, non_blocking=True) for name, value in fields.items()}
        weight = moved.pop("weight", None)
        return Batch(**moved, index=self.index, weight=weight)


def replay_bytes(capacity: int, obs_shape: tuple[int, ...], obs_dtype: str) -> int:
    """Bytes of shared memory the storage will allocate."""
    obs_bytes = int(np.prod(obs_shape)) * torch.empty((), dtype=_torch_dtype(obs_dtype)).element_size()
    return capacity * (2 * obs_bytes + 8 + 4 + 4)


def _torch_dtype(obs_dtype: str) -> torch.dtype:
    return torch.uint8 if obs_dtype == "uint8" else torch.float32


class SegmentedRings:
    """What every shared storage has: one ring segment per writer, a committed-count cursor
    per segment, and batched writes that commit only once the data is in place. A subclass
    allocates its `columns` (plus `priority`) as shared tensors of `capacity` rows."""

    columns: tuple[str, ...] = ()
    lookback = 0  # older rows a row's transition reads (a frame stack)
    lookahead = 0  # newer rows it reads (s_{t+k} stored later)

    def __init__(self, capacity: int, num_segments: int, write_batch: int):
        self.segment_size = capacity // num_segments
        self.num_segments = num_segments
        self.write_batch = write_batch
        # initial |TD error| per row, computed by the writing actor (read by prioritized samplers)
        self.priority = torch.ones(self.capacity).share_memory_()
        self.cursors = torch.zeros(num_segments, dtype=torch.int64).share_memory_()

    @property
    def capacity(self) -> int:
        return self.segment_size * self.num_segments

    def size(self) -> int:
        """Committed rows currently held (all segments)."""
        return int(self.cursors.clamp(max=self.segment_size).sum())

    def write(self, segment: int, rows: dict[str, torch.Tensor]) -> None:
        """Writer of `segment` only. Store rows (in time order) in chunks of at most `write_batch`."""
        count = rows["action"].shape[0]
        for begin in range(0, count, self.write_batch):
            end = min(begin + self.write_batch, count)
            start = int(self.cursors[segment])
            slots = segment * self.segment_size + (torch.arange(start, start + end - begin) % self.segment_size)
            for name in (*self.columns, "priority"):
                if name in rows:
                    getattr(self, name).index_copy_(0, slots, rows[name][begin:end])
            self.cursors[segment] = start + end - begin  # commit after the data is in place


class ReplayStorage(SegmentedRings):
    """Preallocated shared n-step transitions (s, a, R, s', gamma^k), one segment per actor."""

    columns = FIELDS  # what `save_replay` writes

    def __init__(
        self,
        capacity: int,
        num_segments: int,
        write_batch: int,
        obs_shape: tuple[int, ...],
        obs_dtype: str = "float32",
    ):
        super().__init__(capacity, num_segments, write_batch)
        size = self.capacity
        dtype = _torch_dtype(obs_dtype)
        sentinel = 0 if dtype == torch.uint8 else float("nan")
        self.obs = torch.full((size, *obs_shape), sentinel, dtype=dtype).share_memory_()
        self.next_obs = torch.full((size, *obs_shape), sentinel, dtype=dtype).share_memory_()
        self.action = torch.full((size,), -1, dtype=torch.int64).share_memory_()
        self.reward = torch.full((size,), float("nan")).share_memory_()
        self.discount = torch.full((size,), float("nan")).share_memory_()

    def gather(self, slots: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).index_select(0, slots) for name in FIELDS}


class UniformSampler:
    """Uniform sampling over every committed, not-being-overwritten row of the storage.

    Index arithmetic is done in numpy on a copy of the cursors (a handful of rows: numpy's
    per-call cost is a fraction of torch's, and this runs once per update)."""

    def __init__(self, storage: ReplayStorage, seed: int):
        self.storage = storage
        self.generator = torch.Generator().manual_seed(seed)
        self.unusable = getattr(storage, "unusable", None)

    def _window(self, cursors: np.ndarray) -> np.ndarray:
        """Rows per segment that may be sampled: committed ones minus the in-flight margin."""
        s = self.storage
        return np.maximum(np.minimum(cursors, s.segment_size - s.write_batch - s.lookback) - s.lookahead, 0)

    def _draw(self, count: int, cursors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Uniform (segment, logical position) pairs among the sampleable rows."""
        ends = self._window(cursors).cumsum()
        draw = torch.randint(int(ends[-1]), (count,), generator=self.generator).numpy()
        segment = np.searchsorted(ends, draw, side="right")
        logical = cursors[segment] - self.storage.lookahead - ends[segment] + draw
        return segment, logical

    def _slots(self, segment: np.ndarray, logical: np.ndarray) -> torch.Tensor:
        size = self.storage.segment_size
        return torch.from_numpy(segment * size + logical % size)

    def _flag(self, slots: torch.Tensor) -> np.ndarray:
        """Rows the storage says start no transition (all False for a storage without the check)."""
        if self.unusable is None:
            return np.zeros(slots.numel(), dtype=bool)
        return self.unusable(slots)

    def sample(self, batch_size: int) -> Optional[Batch]:
        storage = self.storage
        size, margin, lookback = storage.segment_size, storage.write_batch, storage.lookback
        cursors = storage.cursors.numpy().copy()
        if int(self._window(cursors).sum()) == 0:
            return None
        segment, logical = self._draw(batch_size, cursors)
        slots = self._slots(segment, logical)
        rows = storage.gather(slots)
        # judged now, on what was just gathered: once the cursors below are re-read, a writer may
        # already have replaced the row, and its new content says nothing about the gathered one
        flagged = self._flag(slots)
        for _ in range(MAX_REDRAW_ROUNDS):
            after = storage.cursors.numpy().copy()
            # A row is safe if no write begun by now (up to cursor + write_batch) reaches it
            # (nor the oldest frame of its stack); a safe row read before now is the committed one.
            bad = (logical - lookback < after[segment] + margin - size) | flagged
            torn = np.flatnonzero(bad)
            if torn.size == 0:
                break
            # Redraw from the current window: a writer that moved on by more than the window
            # has overwritten every row of the old one, and redrawing there would never end.
            segment[torn], logical[torn] = self._draw(torn.size, after)
            redrawn = torch.from_numpy(torn)
            slots[redrawn] = self._slots(segment[torn], logical[torn])
            for name, value in storage.gather(slots[redrawn]).items():
                rows[name][redrawn] = value
            flagged[torn] = self._flag(slots[redrawn])
        else:
            return None  # nearly every row is unusable (only final rows so far): try later
        return Batch(**rows, index=slots)
