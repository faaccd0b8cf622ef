"""Prioritized sampling (Schaul et al. 2016, Ape-X) over the shared replay storage.

P(i) = p_i^alpha / sum_k p_k^alpha, importance weights w_i = (N P(i))^-beta / max_j w_j.

Ownership: the sum tree lives in the learner process and has exactly one writer, the
learner. Actors never touch it: they write rows together with an initial priority
(their own |TD error|, as in Ape-X) into the shared storage and advance their cursors. Before
each draw the sampler ingests every row committed since its last look: the slot gets the
actor's priority, and the `write_batch` slots just after each cursor (the ones the next
write may be overwriting) get priority zero. After gathering, rows that a concurrent write
could have touched are redrawn, exactly as in the uniform sampler.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from asyncql_cli.replay import Batch, ReplayStorage


class SumTree:
    """Array-backed binary sum tree with vectorized updates and prefix-sum queries."""

    def __init__(self, capacity: int):
        self.leaves = 1 << max(1, (capacity - 1).bit_length())
        self.tree = np.zeros(2 * self.leaves, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def set(self, index: np.ndarray, value: np.ndarray) -> None:
        node = np.asarray(index, dtype=np.int64) + self.leaves
        self.tree[node] = value
        node = np.unique(node // 2)
        while node[0] >= 1:
            self.tree[node] = self.tree[2 * node] + self.tree[2 * node + 1]
            if node[0] == 1:
                break
            node = np.unique(node // 2)

    def get(self, index: np.ndarray) -> np.ndarray:
        return self.tree[np.asarray(index, dtype=np.int64) + self.leaves]

    def find(self, mass: np.ndarray) -> np.ndarray:
        """Leaf index whose prefix-sum interval contains each value of `mass`."""
        node = np.ones(len(mass), dtype=np.int64)
        mass = mass.astype(np.float64).copy()
        while node[0] < self.leaves:
            left = self.tree[2 * node]
            right = mass >= left
            mass -= np.where(right, left, 0.0)
            node = 2 * node + right
        return node - self.leaves


class PrioritizedSampler:
    def __init__(self, storage: ReplayStorage, seed: int, alpha: float, priority_eps: float):
        self.storage = storage
        self.alpha = alpha
        self.priority_eps = priority_eps
        self.tree = SumTree(storage.capacity)
        self.rng = np.random.default_rng(seed)
        self.seen = np.zeros(storage.num_segments, dtype=np.int64)  # cursors already ingested
        self.slot_logical = np.full(storage.capacity, -1, dtype=np.int64)
        self.unusable = getattr(storage, "unusable", None)

    def _scaled(self, raw: np.ndarray) -> np.ndarray:
        return (np.abs(raw) + self.priority_eps) ** self.alpha

    def ingest(self) -> np.ndarray:
        """Bring the tree up to the storage's committed cursors; return the cursors used."""
        s = self.storage
        cursors = s.cursors.numpy().copy()
        size, margin = s.segment_size, s.write_batch
        # rows whose s_{t+k} is not written yet wait `lookahead` rows before they are drawable
        usable = np.maximum(cursors - s.lookahead, 0)
        for segment in np.flatnonzero(usable != self.seen):
            start = max(self.seen[segment], usable[segment] - size)
            logical = np.arange(start, usable[segment])
            slots = segment * size + logical % size
            self.tree.set(slots, self._scaled(s.priority.numpy()[slots]))
            self.slot_logical[slots] = logical
            self.seen[segment] = usable[segment]
            # rows the segment's next write may overwrite (or the oldest frame of whose stack
            # it may) are not sampled meanwhile
            ahead = np.arange(cursors[segment], cursors[segment] + margin + s.lookback) - size
            ahead = ahead[ahead >= 0]
            if ahead.size:
                self.tree.set(segment * size + ahead % size, 0.0)
        return cursors

    def sample(self, batch_size: int, beta: float) -> Optional[Batch]:
        s = self.storage
        self.ingest()
        total = self.tree.total
        if total <= 0:
            return None
        slots = np.empty(batch_size, dtype=np.int64)
        pending = np.arange(batch_size)
        rows: dict[str, torch.Tensor] = {}
        while pending.size:
            # stratified: one draw from each of len(pending) equal slices of the total mass
            edges = np.linspace(0.0, total, pending.size + 1)
            mass = self.rng.uniform(edges[:-1], edges[1:])
            drawn = self.tree.find(np.minimum(mass, np.nextafter(total, 0)))
            slots[pending] = drawn
            gathered = s.gather(torch.from_numpy(drawn))
            # judged before the cursors are re-read, so on the content just gathered (see replay.py)
            flagged = self.unusable(torch.from_numpy(drawn)) if self.unusable is not None else None
            for name, value in gathered.items():
                if name not in rows:
                    rows[name] = torch.empty((batch_size, *value.shape[1:]), dtype=value.dtype)
                rows[name][torch.from_numpy(pending)] = value
            after = s.cursors.numpy()
            segment = drawn // s.segment_size
            oldest_read = self.slot_logical[drawn] - s.lookback
            unsafe = oldest_read < after[segment] + s.write_batch - s.segment_size
            if flagged is not None:
                flagged &= ~unsafe
                if flagged.any():
                    self.tree.set(drawn[flagged], 0.0)  # never a transition: not drawn again
                    unsafe |= flagged
            pending = pending[unsafe]
            if pending.size:
                self.ingest()
                total = self.tree.total
                if total <= 0:
                    return None
        probability = self.tree.get(slots) / total
        held = max(1, int(np.count_nonzero(self.slot_logical >= 0)))
        weight = (held * probability) ** (-beta)
        weight = weight / weight.max()
        return Batch(**rows, index=torch.from_numpy(slots),
                     weight=torch.as_tensor(weight, dtype=torch.float32))

    def update_priorities(self, index: torch.Tensor, td_error: torch.Tensor, logical: np.ndarray) -> None:
        """After a learner step: new priority |delta| for rows still holding the sampled data."""
        slots = index.numpy()
        keep = self.slot_logical[slots] == logical
        if keep.any():
            self.tree.set(slots[keep], self._scaled(td_error.detach().cpu().numpy()[keep]))

    def logical_of(self, index: torch.Tensor) -> np.ndarray:
        return self.slot_logical[index.numpy()].copy()
