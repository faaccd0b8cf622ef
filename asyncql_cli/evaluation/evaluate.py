"""Greedy evaluation, shared by training-time evaluation, selection and `asyncql eval`."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from asyncql_cli.config.schema import EnvConfig
from asyncql_cli.evaluation.episodes import OnStep, play_greedy


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


def evaluate(q_net: nn.Module, env: EnvConfig, episodes: int, seed: int,
             max_episode_steps: Optional[int] = None, on_step: Optional[OnStep] = None) -> EvalResult:
    """Greedy returns of `episodes` episodes, episode k on seed `seed + k`. `on_step` (a
    heartbeat, an abort check) is called after every reset and step and must return True."""
    returns, lengths = play_greedy(q_net, env, range(seed, seed + episodes), max_episode_steps, on_step=on_step)
    return EvalResult(returns, lengths)
