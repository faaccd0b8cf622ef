"""One gradient step on a TD loss, shared by every learner and actor-learner:

    g     = grad loss                     (scaled by a GradScaler under fp16)
    g     <- g * min(1, max_norm / |g|)   (clipping by the global L2 norm)
    theta <- optimizer(theta, g)

queued without waiting for the device; a NaN/inf loss is caught before it reaches the weights.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from asyncql_cli.compat import foreach_mul_, total_norm

CLIP_EPSILON = 1e-6  # added to the norm before dividing, as torch.nn.utils.clip_grad_norm_ does


class NonFiniteLoss(RuntimeError):
    pass


def loss_is_finite(loss: float, update: int, policy: str) -> bool:
    """False for a NaN/inf loss under policy "skip"; raises under "stop"."""
    if math.isfinite(loss):
        return True
    if policy == "stop":
        raise NonFiniteLoss(f"non-finite loss ({loss}) at update {update}; "
                            "weights seen by actors are from the last finite update")
    return False


def clip_gradients(grads: list[torch.Tensor], max_norm: Optional[float]) -> torch.Tensor:
    """Scale grads so their global L2 norm is at most max_norm; return the norm before."""
    norm = total_norm(grads)
    if max_norm is not None:
        foreach_mul_(grads, torch.clamp(max_norm / (norm + CLIP_EPSILON), max=1.0))
    return norm


def gradient_step(params: list[torch.nn.Parameter], optimizer: Any, loss: torch.Tensor,
                  max_grad_norm: Optional[float], scaler: Optional[torch.amp.GradScaler] = None) -> torch.Tensor:
    """theta <- optimizer(theta, clip(grad loss)); returns the gradient norm before clipping (a
    tensor on the parameters' device). With a GradScaler (fp16) the loss is scaled for backward,
    the gradients are unscaled before clipping, and a step whose gradients overflowed is skipped
    on the device (the scaler lowers its scale)."""
    for param in params:  # zero_grad(set_to_none=True), without its profiler hook
        param.grad = None
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    norm = clip_gradients([p.grad for p in params if p.grad is not None], max_grad_norm)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    return norm
