"""Greedy episodes: the one loop behind evaluation and video.

Episode k is played on its own env, reset with seed `seeds[k]`, with greedy actions, so the same
weights and seeds give the same returns wherever this runs. Episodes are stepped in lockstep
chunks to batch the forward passes; chunking changes no result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from asyncql_cli.config.schema import EnvConfig
from asyncql_cli.envs.make import make_env

# episodes stepped together, one batched forward per step (benchmarks/RESULTS.md: evaluation)
EPISODES_IN_LOCKSTEP = 100
# called after each reset and step with (episode number, its env); False stops that episode
OnStep = Callable[[int, gym.Env], bool]


def play_greedy(q_net: nn.Module, env: EnvConfig, seeds: Sequence[int], max_episode_steps: Optional[int] = None,
                render_mode: Optional[str] = None, lockstep: int = EPISODES_IN_LOCKSTEP,
                on_step: Optional[OnStep] = None) -> tuple[list[float], list[int]]:
    """Returns and lengths of one greedy episode per seed (whole games on raw rewards for Atari:
    evaluation envs never get the training-only wrappers)."""
    returns: list[float] = []
    lengths: list[int] = []
    for first in range(0, len(seeds), lockstep):
        chunk = list(seeds[first:first + lockstep])
        envs = [make_env(env, render_mode=render_mode, max_episode_steps=max_episode_steps) for _ in chunk]
        try:
            chunk_returns, chunk_lengths = _play_chunk(q_net, envs, chunk, first, on_step)
        finally:
            for made in envs:
                made.close()
        returns += chunk_returns
        lengths += chunk_lengths
    return returns, lengths


def _play_chunk(q_net: nn.Module, envs: list[gym.Env], seeds: list[int], first: int,
                on_step: Optional[OnStep]) -> tuple[list[float], list[int]]:
    obs: list[Any] = [made.reset(seed=seed)[0] for made, seed in zip(envs, seeds)]
    ret = np.zeros(len(envs))
    length = np.zeros(len(envs), dtype=np.int64)
    active = [k for k, made in enumerate(envs) if on_step is None or on_step(first + k, made)]
    while active:
        with torch.no_grad():
            batch = torch.as_tensor(np.stack([obs[k] for k in active]), dtype=torch.float32)
            actions = q_net(batch).argmax(1).tolist()
        still = []
        for k, action in zip(active, actions):
            obs[k], reward, terminated, truncated, _ = envs[k].step(action)
            ret[k] += float(reward)
            length[k] += 1
            keep = on_step is None or on_step(first + k, envs[k])
            if keep and not (terminated or truncated):
                still.append(k)
        active = still
    return ret.tolist(), length.tolist()
