"""Greedy evaluation, shared by training-time evaluation and `asyncql eval`.

Episode k is played on its own env reset with seed `seed + k` and greedy actions, so the
same weights and seeds give the same returns wherever this runs. Episodes are stepped in
lockstep chunks to batch the forward passes; chunking does not change any result.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from asyncql_cli.envs import make_env

# episodes stepped together (one batched forward per step): a 100-episode confirmation in one
# lockstep took 0.42 s of CartPole instead of 0.58 s in chunks of 16
EPISODES_IN_LOCKSTEP = 100


@dataclass
class EvalResult:
    returns: list[float]
    lengths: list[int]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.returns)

    def lower_bound(self, standard_errors: float) -> float:
        """mean - k * s / sqrt(n): with k = 2, a policy whose true mean return were below this
        bound would score the observed mean on n episodes less than about 2% of the time."""
        r = self.returns
        spread = statistics.stdev(r) / len(r) ** 0.5 if len(r) > 1 else 0.0
        return self.mean - standard_errors * spread

    def summary(self) -> dict[str, Any]:
        r = self.returns
        return {
            "mean_return": self.mean,
            "std_return": statistics.pstdev(r) if len(r) > 1 else 0.0,
            "min_return": min(r),
            "max_return": max(r),
            "mean_length": statistics.fmean(self.lengths),
            "episodes": len(r),
        }


def evaluate(
    q_net: nn.Module,
    env_id: str,
    env_kwargs: Optional[dict[str, Any]],
    max_episode_steps: Optional[int],
    episodes: int,
    seed: int,
    chunk: int = EPISODES_IN_LOCKSTEP,
    atari: Optional[dict[str, Any]] = None,
) -> EvalResult:
    """Mean greedy return over `episodes` episodes; `atari` (the `env.atari` settings) plays
    whole Atari games on raw rewards (no episodic life, no clipping)."""
    returns: list[float] = []
    lengths: list[int] = []
    for first in range(0, episodes, chunk):
        count = min(chunk, episodes - first)
        envs = [make_env(env_id, env_kwargs, max_episode_steps, atari=atari) for _ in range(count)]
        obs = [env.reset(seed=seed + first + k)[0] for k, env in enumerate(envs)]
        ret = np.zeros(count)
        length = np.zeros(count, dtype=np.int64)
        active = list(range(count))
        while active:
            with torch.no_grad():
                batch = torch.as_tensor(np.stack([obs[k] for k in active]), dtype=torch.float32)
                actions = q_net(batch).argmax(1).tolist()
            still = []
            for k, action in zip(active, actions):
                obs[k], reward, terminated, truncated, _ = envs[k].step(action)
                ret[k] += float(reward)
                length[k] += 1
                if not (terminated or truncated):
                    still.append(k)
            active = still
        for env in envs:
            env.close()
        returns += ret.tolist()
        lengths += length.tolist()
    return EvalResult(returns, lengths)
