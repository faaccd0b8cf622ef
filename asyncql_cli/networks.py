"""Q-networks: an MLP torso with a plain or dueling head.

Dueling (Wang et al. 2016): Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a').
Every process builds its network from the same plain arguments, so weights published
as one flat tensor line up everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class QNetwork(nn.Module):
    def __init__(self, obs_dim: int, num_actions: int, hidden: Sequence[int], dueling: bool):
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.torso = nn.Sequential(*layers)
        # the torso's Linear layers, called directly in forward: a small net's step time is
        # mostly per-module call overhead (the learner runs three passes per update)
        self._linears = [layer for layer in layers if isinstance(layer, nn.Linear)]
        self.dueling = dueling
        self.advantage = nn.Linear(width, num_actions)
        self.value = nn.Linear(width, 1) if dueling else None

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        features = obs.float()
        for linear in self._linears:  # same as self.torso(features)
            features = torch.relu(F.linear(features, linear.weight, linear.bias))
        advantage = F.linear(features, self.advantage.weight, self.advantage.bias)
        if self.value is None:
            return advantage
        value = F.linear(features, self.value.weight, self.value.bias)
        return value + advantage - advantage.mean(dim=1, keepdim=True)


def build_network(network: dict, obs_shape: Sequence[int], num_actions: int) -> QNetwork:
    """Build from the plain `network` config section and the env's shapes."""
    return QNetwork(int(obs_shape[0]), num_actions, list(network["hidden"]), bool(network["dueling"]))


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
