"""Prioritized sampling (Schaul et al. 2016, Ape-X) over a shared replay storage.

    P(i) = p_i^alpha / sum_k p_k^alpha,   w_i = (N P(i))^-beta / max_j w_j

Ownership: the sum tree lives in the learner process and has one writer, the learner. Writers
of the storage never touch it: they store rows with an initial priority (their own |TD error|,
as in Ape-X) and commit them. Before each draw the sampler ingests every row committed since
its last look (acquire loads of the cursors make those priorities visible): the slot gets its
writer's priority, and the `write_batch` slots after each cursor (the ones the next write may be
overwriting) get priority zero.

A row's probability and logical position are taken when it is drawn and travel with the batch:
a later ingest may zero or replace that slot (its writer moved on), but the weight is computed
from what was drawn, and a new priority lands only on a slot still holding the drawn row. Rows a
write may have reached during the gather are drawn again (at most MAX_REDRAW_ROUNDS rounds), as
in the uniform sampler.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from asyncql_cli.replay.batch import Batch
from asyncql_cli.replay.uniform import MAX_REDRAW_ROUNDS, overwritable


class SumTree:
    """Array-backed binary sum tree with vectorized updates and prefix-sum queries."""

    def __init__(self, capacity: int):
        self.leaves = 1 << max(1, (capacity - 1).bit_length())
        self.tree = np.zeros(2 * self.leaves, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def set(self, index: np.ndarray, value: np.ndarray | float) -> None:
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
    def __init__(self, storage: Any, seed: int, alpha: float, priority_eps: float):
        self.storage = storage
        self.alpha = alpha
        self.priority_eps = priority_eps
        self.tree = SumTree(storage.capacity)
        self.rng = np.random.default_rng(seed)
        self.seen = np.zeros(storage.num_segments, dtype=np.int64)  # cursors already ingested
        self.slot_logical = np.full(storage.capacity, -1, dtype=np.int64)
        self.raw_priority = np.zeros(storage.capacity, dtype=np.float32)  # |delta| (snapshots save it)
        self.in_write_window = np.zeros(storage.capacity, dtype=bool)  # zeroed: the next write may reach it
        self.held = 0  # slots that ever held a row: N in the importance weights
        self.unusable = getattr(storage, "unusable", None)
        self.redraws = 0  # rows drawn again because a write could have reached them (for tests)

    def _scaled(self, raw: np.ndarray) -> np.ndarray:
        return (np.abs(raw) + self.priority_eps) ** self.alpha

    def _set(self, slots: np.ndarray, raw: np.ndarray) -> None:
        self.raw_priority[slots] = raw
        self.tree.set(slots, self._scaled(raw))

    def ingest(self) -> None:
        """Bring the tree up to the storage's committed cursors."""
        s = self.storage
        cursors = s.committed()
        size = s.segment_size
        # rows whose s_{t+k} is not written yet wait `lookahead` rows before they are drawable
        usable = np.maximum(cursors - s.lookahead, 0)
        for segment in np.flatnonzero(usable != self.seen):
            start = max(self.seen[segment], usable[segment] - size)
            logical = np.arange(start, usable[segment])
            slots = segment * size + logical % size
            self.held += int(np.count_nonzero(self.slot_logical[slots] < 0))
            self._set(slots, s.priority.numpy()[slots])
            self.slot_logical[slots] = logical
            self.in_write_window[slots] = False
            self.seen[segment] = usable[segment]
            # rows the segment's next write may overwrite (or the oldest frame of whose stack it
            # may) are not drawn meanwhile
            ahead = np.arange(cursors[segment], cursors[segment] + s.write_batch + s.lookback) - size
            ahead = segment * size + ahead[ahead >= 0] % size
            if ahead.size:
                self.tree.set(ahead, 0.0)
                self.in_write_window[ahead] = True

    def _draw(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Stratified draw of `count` slots (one from each of `count` equal slices of the total
        mass) and their probabilities at this moment."""
        total = self.tree.total
        edges = np.linspace(0.0, total, count + 1)
        mass = self.rng.uniform(edges[:-1], edges[1:])
        slots = self.tree.find(np.minimum(mass, np.nextafter(total, 0)))
        return slots, self.tree.get(slots) / total

    def sample(self, batch_size: int, beta: float) -> Optional[Batch]:
        s = self.storage
        self.ingest()
        if self.tree.total <= 0:
            return None
        slots = np.zeros(batch_size, dtype=np.int64)
        probability = np.zeros(batch_size)
        logical = np.zeros(batch_size, dtype=np.int64)
        rows: dict[str, torch.Tensor] = {}
        pending = np.arange(batch_size)
        for _ in range(MAX_REDRAW_ROUNDS):
            drawn, drawn_probability = self._draw(pending.size)
            slots[pending], probability[pending] = drawn, drawn_probability
            logical[pending] = self.slot_logical[drawn]
            index = torch.from_numpy(drawn)
            gathered = s.gather(index)
            flagged = self.unusable(index) if self.unusable is not None else np.zeros(drawn.size, dtype=bool)
            for name, value in gathered.items():
                if name not in rows:
                    rows[name] = torch.empty((batch_size, *value.shape[1:]), dtype=value.dtype)
                rows[name][torch.from_numpy(pending)] = value
            after = s.recheck()
            unsafe = overwritable(s, drawn // s.segment_size, logical[pending], after) | (drawn_probability <= 0)
            never = flagged & ~unsafe
            if never.any():
                self.tree.set(drawn[never], 0.0)  # starts no transition: not drawn again
            retry = unsafe | never
            self.redraws += int(np.count_nonzero(unsafe))
            pending = pending[retry]
            if pending.size == 0:
                weight = (max(1, self.held) * probability) ** (-beta)
                return Batch(**rows, index=torch.from_numpy(slots), logical=logical,
                             weight=torch.as_tensor(weight / weight.max(), dtype=torch.float32))
            self.ingest()
            if self.tree.total <= 0:
                return None
        return None

    def update_priorities(self, index: torch.Tensor, td_error: torch.Tensor, logical: np.ndarray) -> None:
        """After a learner step: new priority |delta| for slots still holding the sampled rows and
        not in a writer's window (ingested since the draw: they stay at zero until rewritten)."""
        slots = index.numpy()
        keep = (self.slot_logical[slots] == logical) & ~self.in_write_window[slots]
        if keep.any():
            self._set(slots[keep], np.abs(td_error.detach().cpu().numpy()[keep]))

    def state(self) -> dict[str, torch.Tensor]:
        """What a replay snapshot needs to restore learned priorities: slot -> logical, |delta|."""
        return {"slot_logical": torch.from_numpy(self.slot_logical.copy()),
                "raw_priority": torch.from_numpy(self.raw_priority.copy())}
