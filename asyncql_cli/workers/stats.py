"""Learner statistics: means over a time window, sent to the main process on the stats queue."""

from __future__ import annotations

import time
from typing import Any

import torch


class UpdateStats:
    """Means of loss, Q and gradient norm over `interval_seconds`. Values may be device tensors:
    they are summed on the device and read once per window."""

    def __init__(self, index: int, interval_seconds: float, stats_queue: Any):
        self.index, self.interval, self.queue = index, interval_seconds, stats_queue
        self.sums: dict[str, Any] = {"loss": 0.0, "q_mean": 0.0, "grad_norm": 0.0}
        self.count = 0
        self.last = time.monotonic()

    def add(self, loss: float, q_mean: float | torch.Tensor, grad_norm: float | torch.Tensor,
            updates: int, skipped: int) -> None:
        for name, value in (("loss", loss), ("q_mean", q_mean), ("grad_norm", grad_norm)):
            self.sums[name] += value
        self.count += 1
        if time.monotonic() - self.last >= self.interval:
            self.flush(updates, skipped)

    def flush(self, updates: int, skipped: int) -> None:
        if self.count:
            means = {k: float(v) / self.count for k, v in self.sums.items()}
            self.queue.put(("learner", self.index, means, updates, skipped))
        self.sums = dict.fromkeys(self.sums, 0.0)
        self.count = 0
        self.last = time.monotonic()
