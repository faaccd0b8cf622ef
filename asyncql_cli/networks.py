"""Q-networks: an MLP torso with a plain or dueling head.

Dueling (Wang et al. 2016): Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a').
Every process builds its network from the same plain arguments, so weights published
as one flat tensor line up everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
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
        self.dueling = dueling
        self.advantage = nn.Linear(width, num_actions)
        self.value = nn.Linear(width, 1) if dueling else None

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        features = self.torso(obs.float())
        advantage = self.advantage(features)
        if self.value is None:
            return advantage
        return self.value(features) + advantage - advantage.mean(dim=1, keepdim=True)


def build_network(network: dict, obs_shape: Sequence[int], num_actions: int) -> QNetwork:
    """Build from the plain `network` config section and the env's shapes."""
    return QNetwork(int(obs_shape[0]), num_actions, list(network["hidden"]), bool(network["dueling"]))


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
