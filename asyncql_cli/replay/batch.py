"""A sampled minibatch, as the samplers hand it to a learner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

FIELDS = ("obs", "action", "reward", "next_obs", "discount")


@dataclass
class Batch:
    """(s, a, R, s', gamma^k) rows; `discount` is gamma^k for a k-step bootstrap, 0 at termination.

    `index`: the storage slots (host). Prioritized batches also carry `weight`, the importance
    weights, and `logical`, each row's logical position when drawn (so a new priority lands only
    on a slot that still holds the row it was computed for)."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    discount: torch.Tensor
    index: torch.Tensor
    weight: Optional[torch.Tensor] = None
    logical: Optional[np.ndarray] = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The fields a learner reads on its device: all but the host-side bookkeeping."""
        fields = {name: getattr(self, name) for name in FIELDS}
        if self.weight is not None:
            fields["weight"] = self.weight
        return fields

    def to(self, device: torch.device, staging: Optional[dict[str, torch.Tensor]] = None) -> Batch:
        """This batch on `device`; `index` and `logical` stay on the host.

        `staging`: host tensors shaped like `tensors()` (pinned, for CUDA). The fields are copied
        into them first, because a non_blocking copy to the device is asynchronous only from
        pinned memory; the caller must not rewrite them until that copy has run. On a CPU device
        the returned batch reads the staging tensors themselves."""
        fields = self.tensors()
        if staging is not None:
            fields = {name: staging[name].copy_(value) for name, value in fields.items()}
        moved = {name: value.to(device, non_blocking=True) for name, value in fields.items()}
        weight = moved.pop("weight", None)
        return Batch(**moved, index=self.index, weight=weight, logical=self.logical)
