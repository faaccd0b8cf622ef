"""Greedy evaluation: episode k is played from reset(seed + k) with greedy actions, so the
returns depend on the weights and seeds only, not on how many episodes are stepped together."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from asyncql_cli.evaluate import evaluate
from asyncql_cli.networks import build_network


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network({"name": "mlp", "hidden": [16], "dueling": False}, (4,), 2)


def _one_episode(net: torch.nn.Module, seed: int) -> tuple[float, int]:
    """The reference: one env, one episode, greedy, reset with this seed."""
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    total, length, done = 0.0, 0, False
    while not done:
        with torch.no_grad():
            action = int(net(torch.as_tensor(obs[None], dtype=torch.float32)).argmax(1))
        obs, reward, terminated, truncated, _ = env.step(action)
        total, length, done = total + float(reward), length + 1, terminated or truncated
    env.close()
    return total, length


def test_each_episode_is_the_greedy_episode_of_its_seed_whatever_the_lockstep_chunk() -> None:
    net, seed = _net(3), 500
    expected = [_one_episode(net, seed + k) for k in range(12)]
    assert len({length for _, length in expected}) > 1, "episodes of different lengths"
    for chunk in (1, 5, 12, 100):
        result = evaluate(net, "CartPole-v1", {}, None, 12, seed, chunk=chunk)
        assert list(zip(result.returns, result.lengths)) == expected, chunk
    assert np.isclose(result.mean, np.mean([r for r, _ in expected]))
