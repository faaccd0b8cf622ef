"""n-step transitions from per-step experience, never crossing an episode end.

    R_t^(n) = sum_{k<n} gamma^k r_{t+k},   bootstrap discount gamma^n

At an episode end the pending steps are emitted with k < n: discount 0 if the episode
terminated (no bootstrap), gamma^k if it was truncated (bootstrap from the true last
observation, gymnasium 1.x semantics).
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch


class NStepAccumulator:
    """Turns per-step (s, a, r, s', terminated, truncated) of E envs into n-step transitions
    (s_t, a_t, R_t^(n), s_{t+k}, gamma^k)."""

    def __init__(self, num_envs: int, n_step: int, gamma: float):
        self.n_step = n_step
        self.gamma = gamma
        self.pending: list[deque] = [deque() for _ in range(num_envs)]

    def _emit(self, queue: deque, next_obs: np.ndarray, count: int, terminal: bool, out: list) -> None:
        for _ in range(count):
            ret, discount = 0.0, 1.0
            for _, _, reward in queue:
                ret += discount * reward
                discount *= self.gamma
            obs, action, _ = queue.popleft()
            out.append((obs, action, ret, next_obs, 0.0 if terminal else discount))

    def push(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
             terminated: np.ndarray, truncated: np.ndarray) -> list[tuple]:
        out: list[tuple] = []
        for e, queue in enumerate(self.pending):
            queue.append((obs[e], int(actions[e]), float(rewards[e])))
            if terminated[e] or truncated[e]:
                self._emit(queue, next_obs[e], len(queue), bool(terminated[e]), out)
            elif len(queue) == self.n_step:
                self._emit(queue, next_obs[e], 1, False, out)
        return out


def rows_from(transitions: list[tuple]) -> dict[str, torch.Tensor]:
    """The accumulator's transitions as replay columns."""
    obs, action, reward, next_obs, discount = zip(*transitions)
    return {
        "obs": torch.as_tensor(np.stack(obs), dtype=torch.float32),
        "action": torch.as_tensor(action, dtype=torch.int64),
        "reward": torch.as_tensor(reward, dtype=torch.float32),
        "next_obs": torch.as_tensor(np.stack(next_obs), dtype=torch.float32),
        "discount": torch.as_tensor(discount, dtype=torch.float32),
    }
