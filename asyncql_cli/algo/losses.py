"""TD targets and losses for n-step (double) DQN, named as in the papers.

For a stored transition (s_t, a_t, R_t^(n), s_{t+n}, gamma_t^(n)) where
R_t^(n) = sum_{k<n} gamma^k r_{t+k} and gamma_t^(n) = gamma^n (0 if the episode terminated,
gamma^k if it was truncated after k < n steps, so truncation still bootstraps):

    DQN:         y = R + gamma^(n) * max_a Q^-(s', a)
    Double DQN:  y = R + gamma^(n) * Q^-(s', argmax_a Q(s', a))      (van Hasselt et al. 2016)
    loss = mean_i w_i * rho(y_i - Q(s_i, a_i)),  rho = Huber or squared error

Under mixed precision (the learner's `algo.amp`) the networks' heads still return float32
Q-values (algo/networks.py), and the argmax, targets, TD errors (priorities) and the loss are
computed in float32 whatever a network returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from asyncql_cli.compat import foreach_copy_, foreach_lerp_


@dataclass
class TDOutput:
    loss: torch.Tensor
    td_error: torch.Tensor
    q_mean: torch.Tensor


def td_target(
    q_net: nn.Module,
    target_net: nn.Module,
    reward: torch.Tensor,
    next_obs: torch.Tensor,
    discount: torch.Tensor,
    double: bool,
) -> torch.Tensor:
    with torch.no_grad():
        next_q_target = target_net(next_obs).float()  # the target math in float32, also under autocast
        if double:
            next_action = q_net(next_obs).float().argmax(dim=1, keepdim=True)
        else:
            next_action = next_q_target.argmax(dim=1, keepdim=True)
        next_value = next_q_target.gather(1, next_action).squeeze(1)
        return reward.float() + discount.float() * next_value


def td_loss(
    q_net: nn.Module,
    target_net: nn.Module,
    obs: torch.Tensor,
    action: torch.Tensor,
    reward: torch.Tensor,
    next_obs: torch.Tensor,
    discount: torch.Tensor,
    double: bool,
    loss: str,
    huber_delta: float,
    weight: Optional[torch.Tensor] = None,
) -> TDOutput:
    y = td_target(q_net, target_net, reward, next_obs, discount, double)
    q = q_net(obs).float().gather(1, action.unsqueeze(1)).squeeze(1)
    td_error = y - q
    if loss == "huber":
        per_sample = F.huber_loss(q, y, reduction="none", delta=huber_delta)
    else:
        per_sample = F.mse_loss(q, y, reduction="none")
    if weight is not None:
        per_sample = per_sample * weight
    return TDOutput(loss=per_sample.mean(), td_error=td_error.detach(), q_mean=q.detach().mean())


def update_target(q_net: nn.Module, target_net: nn.Module, tau: float) -> None:
    """Hard copy for tau == 1, Polyak averaging Q^- <- tau Q + (1 - tau) Q^- otherwise."""
    targets, onlines = list(target_net.parameters()), list(q_net.parameters())
    with torch.no_grad():  # one call for all parameters: with Polyak it runs on every update
        if tau >= 1.0:
            foreach_copy_(targets, onlines)
        else:
            foreach_lerp_(targets, onlines, tau)
