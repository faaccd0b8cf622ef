"""Best-policy selection: evaluate the published networks, confirm a promising one on fresh
episodes, keep the best confirmed one as best.pt.

Every evaluation plays `episodes` greedy episodes (seeds eval.seed + k) of each candidate network
(one per independent learner) and takes the best. The maximum of many such 10-episode means is
biased upward (the luckiest evaluation wins), so a mean is never a score by itself: one that
beats the best so far is re-run on `confirm_episodes` episodes of its own (seeds after the
periodic ones, a new range per env-step count: re-testing policy after policy on the same
episodes would select the one that suits them), and that confirmed mean is its score. A score
above the best confirmed one becomes best.pt, with the lower bound mean - confirm_margin standard
errors that decides train.stop_at_return. With `confirm_episodes=0` the periodic means are the
scores, and best.pt says it is unconfirmed (`eval_confirmed: false`); a confirmed score always
replaces an unconfirmed best.pt (one of an older run, on resume).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from torch import nn

from asyncql_cli.checkpoint import load_checkpoint, save_checkpoint
from asyncql_cli.config.schema import EnvConfig
from asyncql_cli.evaluation.episodes import OnStep
from asyncql_cli.evaluation.evaluate import EvalResult, evaluate


@dataclass(frozen=True)
class SelectionSettings:
    env: EnvConfig
    episodes: int  # eval.episodes
    confirm_episodes: int  # eval.confirm_episodes; 0 = the periodic evaluation is the score
    confirm_margin: float  # eval.confirm_margin, in standard errors
    seed: int  # eval.seed
    max_episode_steps: Optional[int]  # eval.max_episode_steps
    best_file: str  # checkpoints/best.pt
    checkpoint_meta: dict[str, Any]  # env, shapes, network and config, stored in best.pt


@dataclass
class Best:
    """The score of best.pt (None before any evaluation)."""

    mean: Optional[float] = None
    lower: Optional[float] = None
    env_steps: Optional[int] = None
    confirmed: bool = False  # its mean is over eval.confirm_episodes fresh episodes

    @classmethod
    def from_file(cls, path: Path) -> Best:
        if not path.is_file():
            return cls()
        state = load_checkpoint(path)
        return cls(state.get("eval_return"), state.get("eval_lower_bound"), state.get("env_steps"),
                   bool(state.get("eval_confirmed", False)))

    def beaten_by(self, mean: float, confirmed: bool) -> bool:
        """A confirmed score beats an unconfirmed best whatever their means."""
        if self.mean is None or (confirmed and not self.confirmed):
            return True
        return confirmed == self.confirmed and mean > self.mean


@dataclass
class EvalReport:
    """One evaluation, as the run's log, TensorBoard and stop decision need it."""

    env_steps: int
    updates: int
    learner_index: int
    mean: float  # the score: the confirmed mean when there was a confirmation
    episodes: int
    learner_means: dict[int, float] = field(default_factory=dict)  # periodic means, with several learners
    periodic_mean: float = 0.0  # the periodic evaluation's mean and episodes (before a confirmation)
    periodic_episodes: int = 0
    confirmed: Optional[tuple[float, float]] = None  # (mean, lower bound) of a confirmation
    scored: bool = False  # `mean` is a score: confirmed, or confirmations are off
    new_best: bool = False
    best: Best = field(default_factory=Best)


class PolicySelection:
    def __init__(self, settings: SelectionSettings, best: Best, on_step: Optional[OnStep] = None):
        self.settings = settings
        self.best = best
        self.on_step = on_step  # called after every env step of an evaluation (heartbeat, abort)

    def _greedy(self, net: nn.Module, episodes: int, seed: int) -> EvalResult:
        return evaluate(net, self.settings.env, episodes, seed, self.settings.max_episode_steps, self.on_step)

    def evaluate(self, candidates: list[tuple[int, nn.Module, int]], env_steps: int) -> Optional[EvalReport]:
        """`candidates`: (learner index, network, its update count) of every published network.
        Returns None when there is none yet."""
        if not candidates:
            return None
        report, net, result = self._periodic(candidates, env_steps)
        episodes, seed = self.settings.episodes, self.settings.seed
        confirming = self.settings.confirm_episodes > 0
        if confirming and self.best.beaten_by(report.mean, confirmed=True):
            episodes = self.settings.confirm_episodes
            seed = self.settings.seed + self.settings.episodes + env_steps * episodes
            result = self._greedy(net, episodes, seed)
            report.confirmed = (result.mean, result.lower_bound(self.settings.confirm_margin))
            report.mean, report.episodes = result.mean, episodes
        report.scored = report.confirmed is not None or not confirming
        if report.scored and self.best.beaten_by(report.mean, confirming):
            self.best = Best(report.mean, result.lower_bound(self.settings.confirm_margin), env_steps, confirming)
            report.new_best = True
            self._save_best(net, report, episodes, seed)
        report.best = self.best
        return report

    def _periodic(self, candidates: list[tuple[int, nn.Module, int]],
                  env_steps: int) -> tuple[EvalReport, nn.Module, EvalResult]:
        """The periodic evaluation of every candidate: the report of the best, its network and result."""
        scored = []
        for index, net, updates in candidates:
            result = self._greedy(net, self.settings.episodes, self.settings.seed)
            scored.append((result.mean, -index, updates, result, net))
        mean, negative_index, updates, result, net = max(scored, key=lambda score: score[:3])
        report = EvalReport(env_steps, updates, -negative_index, mean, self.settings.episodes, periodic_mean=mean,
                            periodic_episodes=self.settings.episodes)
        if len(candidates) > 1:
            report.learner_means = {-score[1]: score[0] for score in scored}
        return report, net, result

    def _save_best(self, net: nn.Module, report: EvalReport, episodes: int, seed: int) -> None:
        state = {**self.settings.checkpoint_meta,
                 "q_net": {k: v.detach().clone() for k, v in net.state_dict().items()},
                 "updates": report.updates, "env_steps": report.env_steps, "eval_return": report.mean,
                 "learner_index": report.learner_index, "eval_lower_bound": self.best.lower,
                 "eval_episodes": episodes, "eval_seed": seed, "eval_confirmed": self.best.confirmed}
        save_checkpoint(Path(self.settings.best_file), state)
