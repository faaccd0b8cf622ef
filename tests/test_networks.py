"""Q-network forward and the learner's gradient clipping against torch's reference versions."""

from __future__ import annotations

import pytest
import torch

from asyncql_cli.learner import clip_gradients
from asyncql_cli.networks import build_network


def _through_modules(net: torch.nn.Module, obs: torch.Tensor) -> torch.Tensor:
    features = net.torso(obs)
    advantage = net.advantage(features)
    if net.value is None:
        return advantage
    return net.value(features) + advantage - advantage.mean(1, keepdim=True)


@pytest.mark.parametrize("dueling", [False, True])
def test_forward_equals_the_module_graph(dueling: bool) -> None:
    """forward calls the torso's Linear layers directly; it must equal running the modules,
    also after new weights are loaded (load_state_dict copies into the same parameters)."""
    torch.manual_seed(0)
    net = build_network({"hidden": [32, 16], "dueling": dueling}, (5,), 3)
    obs = torch.randn(7, 5)
    assert torch.allclose(net(obs), _through_modules(net, obs), atol=1e-6)
    before = net(obs)
    net.load_state_dict({k: v + 0.1 for k, v in net.state_dict().items()})
    assert not torch.allclose(net(obs), before)
    assert torch.allclose(net(obs), _through_modules(net, obs), atol=1e-6)


@pytest.mark.parametrize("max_norm", [0.5, 1e6, None])
def test_clip_gradients_matches_clip_grad_norm(max_norm: float | None) -> None:
    torch.manual_seed(1)
    grads = [torch.randn(4, 3) * 3, torch.randn(5)]
    reference = [g.clone().requires_grad_(False) for g in grads]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in reference]
    for p, g in zip(params, reference):
        p.grad = g
    expected_norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))
    norm = clip_gradients(grads, max_norm)
    assert float(norm) == pytest.approx(float(expected_norm), rel=1e-6)
    for mine, theirs in zip(grads, reference):
        assert torch.allclose(mine, theirs, atol=1e-6)
    if max_norm == 0.5:
        assert float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))) == pytest.approx(0.5, rel=1e-4)
