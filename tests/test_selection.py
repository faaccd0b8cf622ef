"""Honest selection: best.pt and best_eval_return come from confirmed scores only.

The greedy episodes are scripted (each call of `_greedy` returns the next planned result), so the
tests check the selection rules, not a policy's luck."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from asyncql_cli.algo.networks import build_network
from asyncql_cli.config.schema import EnvConfig, NetworkConfig
from asyncql_cli.evaluation.evaluate import EvalResult
from asyncql_cli.evaluation.selection import Best, EvalReport, PolicySelection, SelectionSettings
from asyncql_cli.runtime.record import RunRecord

PERIODIC, CONFIRM = 10, 100
META = {"env_id": "CartPole-v1", "obs_shape": [4], "num_actions": 2, "network": {"hidden": [4]}}


class ScriptedSelection(PolicySelection):
    """Every greedy evaluation returns the next planned mean (all its episodes alike but one,
    so the lower bound is defined)."""

    def __init__(self, settings: SelectionSettings, best: Best, planned: list[float]):
        super().__init__(settings, best)
        self.planned = list(planned)
        self.calls: list[int] = []

    def _greedy(self, net: Any, episodes: int, seed: int) -> EvalResult:
        self.calls.append(episodes)
        mean = self.planned.pop(0)
        returns = [mean - 1.0, mean + 1.0] + [mean] * (episodes - 2)
        return EvalResult(returns, [1] * episodes)


def _selection(tmp_path: Path, planned: list[float], confirm: int = CONFIRM,
               best: Best | None = None) -> ScriptedSelection:
    settings = SelectionSettings(env=EnvConfig(id="CartPole-v1"), episodes=PERIODIC, confirm_episodes=confirm,
                                 confirm_margin=2.0, seed=0, max_episode_steps=None,
                                 best_file=str(tmp_path / "best.pt"), checkpoint_meta=META)
    return ScriptedSelection(settings, best or Best(), planned)


def _net() -> torch.nn.Module:
    return build_network(NetworkConfig(hidden=[4]), (4,), 2)


def _saved(tmp_path: Path) -> dict[str, Any]:
    return torch.load(tmp_path / "best.pt", weights_only=True)


def test_a_high_evaluation_that_its_confirmation_does_not_hold_never_becomes_best_pt(tmp_path):
    selection = _selection(tmp_path, [100.0, 90.0, 300.0, 80.0, 85.0])
    first = selection.evaluate([(0, _net(), 1)], env_steps=1000)
    assert first.new_best and first.confirmed is not None and first.mean == pytest.approx(90.0)
    lucky = selection.evaluate([(0, _net(), 2)], env_steps=2000)  # 300 over 10 episodes, 80 over 100
    assert lucky.periodic_mean == 300.0 and lucky.confirmed[0] == pytest.approx(80.0)
    assert not lucky.new_best and lucky.best.mean == pytest.approx(90.0)
    below = selection.evaluate([(0, _net(), 3)], env_steps=3000)  # 85 cannot beat 90: not confirmed
    assert below.confirmed is None and not below.new_best and not below.scored
    assert selection.calls == [PERIODIC, CONFIRM, PERIODIC, CONFIRM, PERIODIC]
    saved = _saved(tmp_path)
    assert saved["eval_return"] == pytest.approx(90.0) and saved["env_steps"] == 1000
    assert saved["eval_confirmed"] is True and saved["eval_episodes"] == CONFIRM
    assert Best.from_file(tmp_path / "best.pt") == selection.best
    assert selection.best.confirmed


def test_every_evaluation_that_beats_the_best_is_confirmed_whatever_its_level(tmp_path):
    """No threshold: a 10-episode mean of 20 (far from any solved return) is confirmed too."""
    selection = _selection(tmp_path, [20.0, 15.0, 30.0, 25.0])
    selection.evaluate([(0, _net(), 1)], env_steps=1000)
    report = selection.evaluate([(0, _net(), 2)], env_steps=2000)
    assert report.new_best and report.mean == pytest.approx(25.0) and report.best.confirmed
    assert selection.calls == [PERIODIC, CONFIRM, PERIODIC, CONFIRM]


def test_without_confirmations_the_periodic_means_are_unconfirmed_scores(tmp_path):
    selection = _selection(tmp_path, [50.0, 40.0, 60.0], confirm=0)
    reports = [selection.evaluate([(0, _net(), i)], env_steps=1000 * i) for i in (1, 2, 3)]
    assert [r.new_best for r in reports] == [True, False, True]
    assert all(r.scored and r.confirmed is None for r in reports)
    assert selection.best.mean == 60.0 and not selection.best.confirmed
    assert _saved(tmp_path)["eval_confirmed"] is False


def test_a_confirmed_score_replaces_an_unconfirmed_best_pt(tmp_path):
    selection = _selection(tmp_path, [50.0, 40.0], best=Best(500.0, None, 10, confirmed=False))
    report = selection.evaluate([(0, _net(), 1)], env_steps=1000)
    assert report.new_best and selection.best.mean == pytest.approx(40.0) and selection.best.confirmed


def _report(periodic: float, best: Best, confirmed: float | None = None, new_best: bool = False) -> EvalReport:
    mean = periodic if confirmed is None else confirmed
    return EvalReport(env_steps=1000, updates=1, learner_index=0, mean=mean, episodes=PERIODIC,
                      periodic_mean=periodic, periodic_episodes=PERIODIC,
                      confirmed=None if confirmed is None else (confirmed, confirmed),
                      scored=confirmed is not None, new_best=new_best, best=best)


def test_the_summary_reports_the_confirmed_score_and_says_so(tmp_path):
    record = RunRecord("CartPole-v1", solved_return=475.0)
    best = Best(400.0, 390.0, 1000, confirmed=True)
    record.on_eval(_report(480.0, best, confirmed=400.0, new_best=True), wall=1.0)
    record.on_eval(_report(490.0, best), wall=2.0)  # a higher plain mean, never confirmed
    summary = record.summary(2000, 10, 2.0, 0, tmp_path)
    assert summary["best_eval_return"] == 400.0 and summary["best_eval_confirmed"] is True
    assert summary["solved_env_steps"] is None  # 480 and 490 were plain means: not a solve
    metrics = record.hparam_metrics(summary)
    assert metrics["hparams/best_eval_return"] == 400.0 and metrics["hparams/best_eval_confirmed"] == 1.0


def test_a_run_that_never_confirmed_reports_its_plain_best_as_unconfirmed(tmp_path):
    record = RunRecord("CartPole-v1", solved_return=475.0)
    record.on_eval(_report(30.0, Best()), wall=1.0)
    record.on_eval(_report(20.0, Best()), wall=2.0)
    summary = record.summary(2000, 10, 2.0, 0, tmp_path)
    assert summary["best_eval_return"] == 30.0 and summary["best_eval_confirmed"] is False
    assert record.hparam_metrics(summary)["hparams/best_eval_confirmed"] == 0.0
