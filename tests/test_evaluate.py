"""Greedy evaluation: episode k is played from reset(seed + k) with greedy actions, so the
returns depend on the weights and seeds only, not on how many episodes are stepped together."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from asyncql_cli.algo.networks import build_network
from asyncql_cli.config.schema import EnvConfig, NetworkConfig
from asyncql_cli.evaluation.episodes import play_greedy
from asyncql_cli.evaluation.evaluate import evaluate

CARTPOLE = EnvConfig(id="CartPole-v1")


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(NetworkConfig(name="mlp", hidden=[16], dueling=False), (4,), 2)


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
    for chunk in (1, 5, 12, 100):  # evaluate()'s episodes are played by play_greedy, `lockstep` at a time
        returns, lengths = play_greedy(net, CARTPOLE, range(seed, seed + 12), lockstep=chunk)
        assert list(zip(returns, lengths)) == expected, chunk
    result = evaluate(net, CARTPOLE, 12, seed)
    assert list(zip(result.returns, result.lengths)) == expected
    assert np.isclose(result.mean, np.mean([r for r, _ in expected]))


def test_evaluate_caps_episodes_and_calls_on_step_after_every_reset_and_step() -> None:
    net, seed = _net(3), 500
    full = evaluate(net, CARTPOLE, 3, seed)
    capped = evaluate(net, CARTPOLE, 3, seed, max_episode_steps=5)
    assert capped.lengths == [min(5, n) for n in full.lengths] == [5, 5, 5]  # CartPole pays 1 a step:
    assert capped.returns == [5.0, 5.0, 5.0]
    calls: list[int] = []
    result = evaluate(net, CARTPOLE, 3, seed, on_step=lambda episode, _env: calls.append(episode) is None)
    assert result.returns == full.returns
    assert sorted(calls) == sorted(k for k, n in enumerate(full.lengths) for _ in range(n + 1))
