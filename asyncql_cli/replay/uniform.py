"""Uniform sampling over every committed row of a storage that no write can be touching.

A draw picks logical positions among committed rows (`committed()`), leaving out the
`write_batch` oldest of each segment (the slots the next batch may overwrite), gathers them,
then re-reads the cursors (`recheck()`, ordered after the gather) and redraws any row a write
begun meanwhile could have reached. Whether a row starts a transition (`unusable`, the frame
storage's check) is judged on the rows just gathered, before the re-read: once the cursors are
read again a writer may already have replaced the slot, and its new content says nothing about
the gathered one. Index arithmetic is numpy on a few cursors (cheaper than torch per call).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from asyncql_cli.replay.batch import Batch

# a draw whose rows keep being torn or unusable this many rounds in a row is given up (None)
MAX_REDRAW_ROUNDS = 100


def sampler_seed(seed: int, generation: int, index: int) -> int:
    """A sampler's RNG seed: different for every learner and every generation of a resumed run."""
    return int(np.random.SeedSequence([seed, generation, index]).generate_state(1)[0])


def overwritable(storage: Any, segment: np.ndarray, logical: np.ndarray, cursors: np.ndarray) -> np.ndarray:
    """Rows (or the oldest frame of their stack) a write begun by `cursors` may have reached."""
    return logical - storage.lookback < cursors[segment] + storage.write_batch - storage.segment_size


class UniformSampler:
    def __init__(self, storage: Any, seed: int):
        self.storage = storage
        self.generator = torch.Generator().manual_seed(seed)
        self.unusable = getattr(storage, "unusable", None)
        self.redraws = 0  # rows drawn again because a write could have reached them (for tests)

    def _window(self, cursors: np.ndarray) -> np.ndarray:
        """Rows per segment that may be drawn: committed ones minus the in-flight margin."""
        s = self.storage
        return np.maximum(np.minimum(cursors, s.segment_size - s.write_batch - s.lookback) - s.lookahead, 0)

    def _draw(self, count: int, cursors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Uniform (segment, logical position) pairs among the drawable rows."""
        ends = self._window(cursors).cumsum()
        draw = torch.randint(int(ends[-1]), (count,), generator=self.generator).numpy()
        segment = np.searchsorted(ends, draw, side="right")
        logical = cursors[segment] - self.storage.lookahead - ends[segment] + draw
        return segment, logical

    def _slots(self, segment: np.ndarray, logical: np.ndarray) -> torch.Tensor:
        size = self.storage.segment_size
        return torch.from_numpy(segment * size + logical % size)

    def _flag(self, slots: torch.Tensor) -> np.ndarray:
        if self.unusable is None:
            return np.zeros(slots.numel(), dtype=bool)
        return self.unusable(slots)

    def sample(self, batch_size: int) -> Optional[Batch]:
        storage = self.storage
        cursors = storage.committed()
        if int(self._window(cursors).sum()) == 0:
            return None
        segment, logical = self._draw(batch_size, cursors)
        slots = self._slots(segment, logical)
        rows = storage.gather(slots)
        flagged = self._flag(slots)
        for _ in range(MAX_REDRAW_ROUNDS):
            after = storage.recheck()
            torn = overwritable(storage, segment, logical, after)
            bad = np.flatnonzero(torn | flagged)
            if bad.size == 0:
                return Batch(**rows, index=slots, logical=logical)
            self.redraws += int(np.count_nonzero(torn))
            # redraw from the current window: a writer that moved on by more than the window has
            # overwritten every row of the old one, and redrawing there would never end
            segment[bad], logical[bad] = self._draw(bad.size, after)
            redrawn = torch.from_numpy(bad)
            slots[redrawn] = self._slots(segment[bad], logical[bad])
            for name, value in storage.gather(slots[redrawn]).items():
                rows[name][redrawn] = value
            flagged[bad] = self._flag(slots[redrawn])
        return None  # nearly every row is unusable (only final rows so far): try later
