"""One Q-network, its target and Adam statistics in shared memory, for Hogwild updates.

Used by `parallelism.learner_sharing=shared` (K learner processes) and by
`algo.mode=actor_learner` (Mnih et al. 2016: every actor-learner applies its own gradients).

Memory: the main process builds the network, the target network and the Adam state
(step, first and second moments) and moves them all to shared memory before spawning.
Writers: every updating process writes the online weights and the Adam state without a
lock (Hogwild, Recht et al. 2011); gradients stay private to each process (each one's
`.grad` tensors are allocated locally on its first backward pass). The target network has
one writer, the primary process (index 0). Readers of the weights for acting or
evaluation go through the parameter store, which the primary publishes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from asyncql_cli.algo.networks import build_network
from asyncql_cli.algo.optim import Adam
from asyncql_cli.config.schema import NetworkConfig


@dataclass
class SharedModel:
    q_net: nn.Module
    target_net: nn.Module
    optimizer: Adam


def shared_adam(params: Sequence[nn.Parameter], lr: float, eps: float) -> Adam:
    """Adam whose state (step, first and second moments) is in shared memory, so that every
    process updates the same moments."""
    return Adam(params, lr=lr, eps=eps).share_memory_()


def make_shared_model(network: NetworkConfig, obs_shape: Sequence[int], num_actions: int,
                      lr: float, eps: float, seed: int) -> SharedModel:
    torch.manual_seed(seed)
    q_net = build_network(network, obs_shape, num_actions)
    target_net = build_network(network, obs_shape, num_actions)
    target_net.load_state_dict(q_net.state_dict())
    target_net.requires_grad_(False)
    q_net.share_memory()
    target_net.share_memory()
    return SharedModel(q_net, target_net, shared_adam(list(q_net.parameters()), lr, eps))


def load_into_shared(shared: SharedModel, state: dict[str, Any]) -> None:
    """Copy a checkpoint into the shared tensors in place (their storage stays shared)."""
    with torch.no_grad():
        for name, tensor in shared.q_net.state_dict().items():
            tensor.copy_(state["q_net"][name])
        for name, tensor in shared.target_net.state_dict().items():
            tensor.copy_(state["target_net"][name])
    shared.optimizer.load_state_dict(state["optimizer"])  # in place: the moments stay shared
