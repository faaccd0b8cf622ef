"""Adam for the learners: torch's fused Adam kernel, without torch.optim's per-call overhead.

    m <- beta1 m + (1 - beta1) g,   v <- beta2 v + (1 - beta2) g^2,   t <- t + 1
    theta <- theta - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
(Kingma & Ba 2015; one fused-kernel call does it for every parameter, `compat.fused_adam_`.)

Why not `torch.optim.Adam(fused=True)`, which runs the same kernel: for a small Q-network its
`step()` spends more time in per-call bookkeeping (hooks, profiler spans, re-collecting the
state, grouping tensors by device and dtype) than in the kernel, and building one imports
torch._dynamo on every learner's way to its first update (benchmarks/RESULTS.md has both
costs). `Adam` below makes only the kernel call, holds its state from the start (zeros, as
torch.optim.Adam's first step would make them), and reads and writes torch.optim.Adam's
`state_dict` format, so checkpoints of either load into the other.

Hogwild (algo/hogwild.py) moves the state to shared memory (`share_memory_`), so every process
updates the same moments in place.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from asyncql_cli.compat import fused_adam_

GROUP_DEFAULTS: dict[str, Any] = {  # the keys torch.optim.Adam's param group has, as we run them
    "weight_decay": 0.0, "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
    "differentiable": False, "fused": True, "decoupled_weight_decay": False,
}


class Adam:
    """Adam over one list of parameters on one device. `param_groups[0]["lr"]` may be changed
    between steps (learning-rate schedules), as with torch optimizers."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, eps: float = 1e-8,
                 betas: tuple[float, float] = (0.9, 0.999)):
        self.params = list(params)
        self.param_groups = [{"params": self.params, "lr": lr, "betas": tuple(betas), "eps": eps,
                              **GROUP_DEFAULTS}]
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        # the fused kernel reads the step count from a float32 tensor on the parameter's device
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    def share_memory_(self) -> Adam:
        for tensor in (*self.exp_avgs, *self.exp_avg_sqs, *self.steps):
            tensor.share_memory_()
        return self

    def step(self) -> None:
        """One Adam step from the parameters' `.grad` (every parameter must have one)."""
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        fused_adam_(self.params, [p.grad for p in self.params], self.exp_avgs, self.exp_avg_sqs, self.steps,
                    lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"])

    def state_dict(self) -> dict[str, Any]:
        """torch.optim.Adam's format: per-parameter state by index, and the param group."""
        state = {index: {"step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
                 for index, (step, exp_avg, exp_avg_sq) in enumerate(zip(self.steps, self.exp_avgs, self.exp_avg_sqs))}
        group = {key: value for key, value in self.param_groups[0].items() if key != "params"}
        return {"state": state, "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Copy a saved state in place (shared tensors stay shared). Like torch.optim, the saved
        group's hyperparameters (lr, betas, eps) replace the current ones. A parameter without
        saved state (a checkpoint taken before the first step) keeps zeros."""
        groups = saved["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError("optimizer state does not match this network's parameters")
        for position, index in enumerate(groups[0]["params"]):
            entry = saved["state"].get(index)
            if entry is None:
                continue
            for tensor, key in ((self.steps[position], "step"), (self.exp_avgs[position], "exp_avg"),
                                (self.exp_avg_sqs[position], "exp_avg_sq")):
                value = torch.as_tensor(entry[key])
                if key != "step" and value.shape != tensor.shape:
                    raise ValueError(f"optimizer state {key} of parameter {index} has shape "
                                     f"{tuple(value.shape)}, expected {tuple(tensor.shape)}")
                tensor.copy_(value.reshape(tensor.shape))
        for key in ("lr", "betas", "eps"):
            if key in groups[0]:
                self.param_groups[0][key] = tuple(groups[0][key]) if key == "betas" else groups[0][key]
