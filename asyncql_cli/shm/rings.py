"""Segmented rings: what every shared replay storage is built on.

Memory (allocated by the main process before any child starts): `capacity` rows of the
storage's columns plus `priority`, split into one ring segment per writer, and one cursor per
segment, the count of rows that writer has committed. The writer of segment i (one actor, or
one node agent for a remote actor) is its only writer; samplers only read.

The protocol, in the C11 model (shm.sync), with W the writer of a segment and R any reader:
- W, per batch: `fence_release()`, then the rows at positions cursor .. cursor+n-1 (mod the
  segment size), then `store_release(cursor + n)`. The fence orders the previous commit before
  this batch's row writes: a reader that sees any row of this batch and then re-reads the
  cursor sees at least the previous commit, so it knows the batch had begun.
- R: `committed()` (acquire loads: pairs with W's store_release, so every row below the cursor
  read is fully written and visible), read rows, then `recheck()` (an acquire fence, then the
  cursors again with acquire loads: the fence keeps the row reads before the re-read). A row whose logical
  position is below recheck + write_batch - segment_size may have been overwritten meanwhile
  and is drawn again; every other row read is the committed one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from asyncql_cli.shm.sync import AtomicInt64Array, fence_acquire, fence_release


def shared_full(shape: tuple[int, ...], fill: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A shared tensor filled with a sentinel, so a read of an unwritten slot is obvious."""
    return torch.full(shape, fill, dtype=dtype).share_memory_()


class SegmentedRings:
    """One ring segment per writer and a committed-row cursor per segment. A subclass allocates
    its `columns` as shared tensors of `capacity` rows."""

    columns: tuple[str, ...] = ()
    lookback = 0  # older rows a row's transition reads (a frame stack)
    lookahead = 0  # newer rows it reads (s_{t+k} stored later)

    def __init__(self, capacity: int, num_segments: int, write_batch: int):
        self.segment_size = capacity // num_segments
        self.num_segments = num_segments
        self.write_batch = write_batch
        # initial |TD error| per row, computed by the writer (read by prioritized samplers)
        self.priority = torch.ones(self.capacity).share_memory_()
        self.cursors = AtomicInt64Array(torch.zeros(num_segments, dtype=torch.int64).share_memory_())

    @property
    def capacity(self) -> int:
        return self.segment_size * self.num_segments

    def size(self) -> int:
        """Committed rows currently held (all segments)."""
        return int(np.minimum(self.cursors.load_all_relaxed(), self.segment_size).sum())

    def cursor(self, segment: int) -> int:
        return self.cursors.load_acquire(segment)

    def committed(self) -> np.ndarray:
        """Reader: every segment's cursor; rows below them are written and visible."""
        return self.cursors.load_all_acquire()

    def recheck(self) -> np.ndarray:
        """Reader, after reading rows: the cursors again, ordered after those reads (and, like
        `committed()`, acquiring what they cover, for rows drawn again from them)."""
        fence_acquire()
        return self.cursors.load_all_acquire()

    def write(self, segment: int, rows: dict[str, torch.Tensor]) -> None:
        """Writer of `segment` only. Store rows (in time order) in chunks of at most `write_batch`."""
        count = rows["action"].shape[0]
        for begin in range(0, count, self.write_batch):
            end = min(begin + self.write_batch, count)
            start = self.cursors.load_relaxed(segment)  # our own cursor: we are its only writer
            slots = segment * self.segment_size + (torch.arange(start, start + end - begin) % self.segment_size)
            fence_release()  # the previous commit is visible before any row of this batch
            for name in (*self.columns, "priority"):
                if name in rows:
                    getattr(self, name).index_copy_(0, slots, rows[name][begin:end])
            self.cursors.store_release(segment, start + end - begin)  # the commit: rows first
