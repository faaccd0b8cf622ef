"""Weight publishing from the learner to actors and the evaluator, without tearing.

Memory (allocated in the main process, shared with every child once at spawn):
- `flat`: float32 CPU tensor holding all Q-network parameters back to back.
- `meta`: int64 CPU tensor `[version, updates]`.

Exactly one writer, the learner: it makes `version` odd, copies, records the update count,
then makes `version` even again (a seqlock). Readers (actors, the main process) copy only
when they see the same even version before and after their copy, so a reader never acts
with half of one update and half of another. Readers never block the writer.
CUDA tensors are never shared: a GPU learner copies its weights to this CPU tensor.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

VERSION, UPDATES = 0, 1


class ParameterStore:
    def __init__(self, num_params: int):
        self.flat = torch.zeros(num_params, dtype=torch.float32).share_memory_()
        self.meta = torch.zeros(2, dtype=torch.int64).share_memory_()

    @property
    def version(self) -> int:
        return int(self.meta[VERSION])

    @property
    def published_updates(self) -> int:
        return int(self.meta[UPDATES])

    def publish(self, model: nn.Module, updates: int) -> None:
        """Learner only. Copy `model`'s parameters in, bracketed by the version counter."""
        params = list(model.parameters())
        meta = self._meta_view()
        meta[VERSION] += 1
        with torch.no_grad():
            if all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params):
                torch._foreach_copy_(self._views(params), params)  # one call, no intermediate vector
            else:  # a GPU learner: one device-to-host copy of the whole vector
                self.flat.copy_(parameters_to_vector(params).detach().to("cpu", torch.float32))
        meta[UPDATES] = updates
        meta[VERSION] += 1

    def _views(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """`flat` cut into tensors shaped like `params` (made once per writer process and shapes)."""
        shapes = [p.shape for p in params]
        if getattr(self, "_param_views", None) is None or [v.shape for v in self._param_views] != shapes:
            chunks = self.flat.split([p.numel() for p in params])
            self._param_views = [chunk.view(shape) for chunk, shape in zip(chunks, shapes)]
        return self._param_views

    def _meta_view(self) -> Any:
        """`meta` as a numpy array over the same shared memory: scalar reads and writes there cost
        a fraction of a tensor's indexing (the writer publishes every few updates)."""
        if getattr(self, "_meta_np", None) is None:
            self._meta_np = self.meta.numpy()
        return self._meta_np

    def _read_buffer(self) -> torch.Tensor:
        """A private copy target, allocated once per reader process (not pickled along)."""
        if getattr(self, "_buffer", None) is None:
            self._buffer = torch.empty_like(self.flat)
        return self._buffer

    def __getstate__(self) -> dict:
        """Shared tensors only: per-process buffers and views are made again where used."""
        state = dict(self.__dict__)
        for private in ("_buffer", "_param_views", "_meta_np"):
            state.pop(private, None)
        return state

    def read_into(self, model: nn.Module, timeout: float = 1.0) -> Optional[int]:
        """Reader side. Load a consistent copy into `model`; return the learner update count
        the weights belong to, or None if nothing has been published yet (or no consistent
        copy could be taken within `timeout`)."""
        deadline = time.monotonic() + timeout
        buffer = self._read_buffer()
        while True:
            before = int(self.meta[VERSION])
            if before > 0 and before % 2 == 0:
                buffer.copy_(self.flat)
                updates = int(self.meta[UPDATES])
                if int(self.meta[VERSION]) == before:
                    with torch.no_grad():
                        vector_to_parameters(buffer, model.parameters())
                    return updates
            elif before == 0:
                return None
            if time.monotonic() > deadline:
                return None
            time.sleep(0)
