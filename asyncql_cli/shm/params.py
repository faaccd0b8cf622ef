"""Weight publishing from a learner to actors and the evaluator, without tearing.

Memory (allocated by the main process, shared with every child at spawn):
- `flat`: float32 CPU tensor holding all Q-network parameters back to back;
- `meta`: int64 `[version, updates]`.

One writer (a learner, or the primary of Hogwild learners) and any number of readers, as a
seqlock in the C11 model (shm.sync):
- writer: version <- v + 1 (odd, relaxed), `fence_release()` (the odd version is visible
  before any weight changes), copy the weights, updates <- n (relaxed), then
  `store_release(version, v + 2)` (every weight and the count are visible before the even one);
- reader: `load_acquire(version)` (pairs with the writer's store_release: the copy that follows
  sees that publish's weights); skip if odd or 0; copy; `fence_acquire()` (the copy's loads stay
  before the re-read); `load_relaxed(version)`: unchanged means no write overlapped the copy.
Readers never block the writer. CUDA tensors are never shared: a GPU learner hands this store a
CPU copy of its weights (workers/learner.py).
"""

from __future__ import annotations

import time
from typing import Optional

import torch
from torch import nn

from asyncql_cli.compat import foreach_copy_
from asyncql_cli.shm.sync import AtomicInt64Array, fence_acquire, fence_release

VERSION, UPDATES = 0, 1


class ParameterStore:
    def __init__(self, num_params: int):
        self.flat = torch.zeros(num_params, dtype=torch.float32).share_memory_()
        self.meta = AtomicInt64Array(torch.zeros(2, dtype=torch.int64).share_memory_())
        self.torn_reads = 0  # reads that saw a write overlap their copy and tried again (this process)
        self._buffer: Optional[torch.Tensor] = None  # a reader's private copy target, made on first read

    def __getstate__(self) -> dict:
        return {"flat": self.flat, "meta": self.meta}

    def __setstate__(self, state: dict) -> None:
        self.flat, self.meta, self.torn_reads, self._buffer = state["flat"], state["meta"], 0, None

    @property
    def version(self) -> int:
        return self.meta.load_acquire(VERSION)

    @property
    def published_updates(self) -> int:
        return self.meta.load_relaxed(UPDATES)

    def publish_tensors(self, tensors: list[torch.Tensor], updates: int) -> None:
        """Writer only. Copy CPU float32 `tensors` (the parameters, in order) in."""
        version = self.meta.load_relaxed(VERSION)
        self.meta.store_relaxed(VERSION, version + 1)
        fence_release()
        with torch.no_grad():
            foreach_copy_(split_like(self.flat, tensors), tensors)
        self.meta.store_relaxed(UPDATES, updates)
        self.meta.store_release(VERSION, version + 2)

    def publish(self, model: nn.Module, updates: int) -> None:
        """Writer only, for a model whose parameters are CPU float32."""
        self.publish_tensors([p.detach() for p in model.parameters()], updates)

    def read_into(self, model: nn.Module, timeout: float = 1.0) -> Optional[int]:
        """Reader. Load a consistent copy into `model`'s parameters (in place); return the
        learner update count of those weights, or None if nothing is published yet (or no
        consistent copy could be taken within `timeout` seconds)."""
        buffer = self._read_buffer()
        updates = self.copy_into(buffer, timeout)
        if updates is not None:
            params = list(model.parameters())
            with torch.no_grad():
                foreach_copy_(params, split_like(buffer, params))
        return updates

    def read_flat(self, timeout: float = 1.0) -> Optional[tuple[torch.Tensor, int]]:
        """Reader. A consistent copy of the flat vector and its update count (to ship elsewhere)."""
        copy = torch.empty_like(self.flat)
        updates = self.copy_into(copy, timeout)
        return None if updates is None else (copy, updates)

    def copy_into(self, out: torch.Tensor, timeout: float = 1.0) -> Optional[int]:
        """Reader. The seqlock read: `out` <- a consistent copy of `flat`; its update count."""
        deadline = time.monotonic() + timeout
        while True:
            before = self.meta.load_acquire(VERSION)
            if before == 0:
                return None
            if before % 2 == 0:
                out.copy_(self.flat)
                updates = self.meta.load_relaxed(UPDATES)
                fence_acquire()
                if self.meta.load_relaxed(VERSION) == before:
                    return updates
                self.torn_reads += 1
            if time.monotonic() > deadline:
                return None
            time.sleep(0)

    def _read_buffer(self) -> torch.Tensor:
        if self._buffer is None:
            self._buffer = torch.empty_like(self.flat)
        return self._buffer


def split_like(flat: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """`flat` cut into views shaped like `tensors`, in order."""
    chunks = flat.split([t.numel() for t in tensors])
    return [chunk.view(t.shape) for chunk, t in zip(chunks, tensors)]
